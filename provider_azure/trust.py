"""Which CA bundle the provider reads: none while the image's own trust directory is in use, the
operator's when they mounted one.

The provider image sets `SSL_CERT_FILE=/dev/null` and `SSL_CERT_DIR=/etc/ssl/certs`: OpenSSL
then finds each CA through the directory's hash links instead of parsing a whole bundle for
every default SSL context (~1 s of start under a 50m CPU limit; docs/benchmarks.md). Upstream's
custom-cloud recipe mounts the node's `/etc/ssl/certs` into the provider pod (or a bundle over
`ca-certificates.crt`), and a node's directory need not carry hash links (Azure Linux keeps
`ca-bundle.crt` only), nor does a bundle mounted alone show up in them. So when a directory of
`SSL_CERT_DIR` is a mount of its own, its bundle is read, as OpenSSL does without the setting.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

NO_BUNDLE = "/dev/null"
# Bundle names in a node's /etc/ssl/certs: Debian/Ubuntu, then Fedora-like (Azure Linux, Mariner).
BUNDLE_NAMES = ("ca-certificates.crt", "ca-bundle.crt", "ca-bundle.pem")


def _own_mount(path: Path) -> bool:
    """`path` lives on another filesystem than its parent: a volume mounted there (or over it)."""
    try:
        return path.stat().st_dev != path.parent.stat().st_dev
    except OSError:
        return False


def mounted_bundle(cert_dirs: str) -> Path | None:
    """The first bundle found in a directory of `cert_dirs` (SSL_CERT_DIR's value) that is a
    mount, or whose bundle file is."""
    for entry in filter(None, cert_dirs.split(os.pathsep)):
        directory = Path(entry)
        for name in BUNDLE_NAMES:
            bundle = directory / name
            if bundle.is_file() and (_own_mount(directory) or _own_mount(bundle)):
                return bundle
    return None


def settle(environ: MutableMapping[str, str]) -> Path | None:
    """Points SSL_CERT_FILE at a mounted bundle when the image's no-bundle setting is on; the
    bundle chosen, or None when nothing changed. Call before any SSL context is made."""
    if environ.get("SSL_CERT_FILE") != NO_BUNDLE:
        return None
    bundle = mounted_bundle(environ.get("SSL_CERT_DIR", ""))
    if bundle is not None:
        environ["SSL_CERT_FILE"] = str(bundle)
    return bundle
