"""Domain errors: one type, a kind that the transport maps to one gRPC code.

Messages name the parameter or object and the rule, and never carry secret material.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    INVALID_ARGUMENT = "InvalidArgument"
    NOT_FOUND = "NotFound"
    PERMISSION_DENIED = "PermissionDenied"
    UNAUTHENTICATED = "Unauthenticated"
    UNAVAILABLE = "Unavailable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    FAILED_PRECONDITION = "FailedPrecondition"
    UNIMPLEMENTED = "Unimplemented"
    INTERNAL = "Internal"


class ProviderError(Exception):
    """Anything a mount can fail with; `kind` says which gRPC code it becomes."""

    def __init__(self, kind: Kind, message: str, *, request_error: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # Upstream returns request-decoding errors without the "failed to mount objects" prefix.
        self.request_error = request_error

    def __str__(self) -> str:
        return self.message


def invalid(message: str) -> ProviderError:
    return ProviderError(Kind.INVALID_ARGUMENT, message)


def object_context(object_type: str, object_name: str, object_version: str) -> str:
    """Upstream's wrap prefix, kept so that users' greps still match."""
    return (
        f"failed to get objectType:{object_type}, objectName:{object_name}, "
        f"objectVersion:{object_version}"
    )
