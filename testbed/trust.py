"""The provider image's CA trust, for a provider run as a process outside the image.

The image (daemonset/images/provider-azure.Containerfile) sets `SSL_CERT_FILE=/dev/null` and
`SSL_CERT_DIR=/etc/ssl/certs`: OpenSSL then reads the one CA a handshake needs from the hashed
directory instead of parsing the whole bundle for each default SSL context (aiohttp makes two
at import: ~40 ms of CPU, ~1 s under a 50m quota). Here the emulator's CA goes into a hashed
directory of its own, searched before the system's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SYSTEM_CERT_DIR = "/etc/ssl/certs"


def image_trust_env(ca_file: Path, directory: Path) -> dict[str, str]:
    """Environment that trusts `ca_file` (and the system's CAs) the way the image does."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_file, directory / "test-ca.pem")
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    return {"SSL_CERT_FILE": "/dev/null", "SSL_CERT_DIR": f"{directory}:{SYSTEM_CERT_DIR}"}
