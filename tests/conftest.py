"""Suite-wide fixtures: one Key Vault emulator for the whole session.

Only one process can bind :443 and 169.254.169.254:80 in a namespace, so every test shares
this emulator; tests add their own vaults, identities and objects with `emulator.seed(...)`
under unique names. The suite must run inside tests/netns-run (private network + mount
namespace where the public-cloud names point at loopback).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault_emulator.tls import ensure_pki
from testbed.emulator import (
    DEFAULT_SEED,
    TOKEN_PROXY_APISERVER_SANS,
    TOKEN_PROXY_PORT,
    TOKEN_PROXY_SNI,
    Emulator,
)

NETNS_HINT = (
    "the Key Vault emulator tests must run inside the private namespace: "
    "tests/netns-run .venv/bin/python -m pytest ..."
)


def _inside_namespace() -> str | None:
    """None when inside tests/netns-run, else what is missing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("169.254.169.254", 0))
    except OSError:
        return "169.254.169.254 is not an address of this network namespace"
    try:
        addr = socket.gethostbyname("login.microsoftonline.com")
    except OSError:
        return "login.microsoftonline.com does not resolve"
    if addr != "127.0.0.1":
        return f"login.microsoftonline.com resolves to {addr}, not 127.0.0.1"
    return None


def _make_trust() -> tuple[Path, Path]:
    """The emulator's CA is made now, at import, and trusted through SSL_CERT_FILE before any
    test module imports aiohttp: aiohttp builds its default SSL context once, at import."""
    state = Path(tempfile.mkdtemp(prefix="keyvault-emulator-"))
    atexit.register(shutil.rmtree, state, True)
    pki = ensure_pki(state)
    bundle = state / "trust.pem"
    paths = ssl.get_default_verify_paths()
    parts = [pki.ca_path.read_text()]
    # keep trusting what was trusted: a bundle the caller chose, else the system's
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile or paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            parts.append(Path(candidate).read_text())
            break
    bundle.write_text("\n".join(parts))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    return state, bundle


STATE_DIR, TRUST_BUNDLE = _make_trust()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The session's emulator, seeded with tests/emulator/seed.yaml. SSL_CERT_FILE and
    REQUESTS_CA_BUNDLE name a bundle of its CA plus the system's."""
    problem = _inside_namespace()
    if problem is not None:
        pytest.fail(f"{problem}: {NETNS_HINT}", pytrace=False)
    emu = Emulator.start(
        STATE_DIR,
        seeds=[DEFAULT_SEED],
        extra_args=[
            f"--token-proxy-port={TOKEN_PROXY_PORT}",
            f"--token-proxy-sni={TOKEN_PROXY_SNI}",
            *(f"--token-proxy-apiserver-san={san}" for san in TOKEN_PROXY_APISERVER_SANS),
        ],
    )
    os.environ["SSL_CERT_FILE"] = str(TRUST_BUNDLE)
    os.environ["REQUESTS_CA_BUNDLE"] = str(TRUST_BUNDLE)
    try:
        yield emu
    finally:
        emu.stop()
