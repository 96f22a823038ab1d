"""Decode a secret's text into the bytes to write (`objectEncoding`), as upstream does."""

from __future__ import annotations

import base64
import binascii

from .certificates import ConversionError
from .objects import ObjectEncoding, ObjectType


def content_bytes(content: str, object_type: ObjectType, encoding: ObjectEncoding) -> bytes:
    """utf-8 (default) writes the text; base64 and hex decode it. Only secrets are decoded."""
    if object_type is not ObjectType.SECRET or encoding in (
        ObjectEncoding.DEFAULT,
        ObjectEncoding.UTF8,
    ):
        return content.encode()
    if encoding is ObjectEncoding.BASE64:
        try:
            # Go's StdEncoding skips \r and \n, and wants padding.
            return base64.b64decode(content.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            raise ConversionError("objectEncoding base64: the value is not valid base64") from None
    try:
        return binascii.unhexlify(content)
    except (binascii.Error, ValueError):
        raise ConversionError("objectEncoding hex: the value is not valid hex") from None
