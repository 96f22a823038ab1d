"""The emulator's own files and limits (issue 18, row 6): private keys never readable by others,
not even for a moment; a private state dir; the admin API bound by Key Vault's limits."""

from __future__ import annotations

import io
import logging
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from keyvault_emulator.tls import ensure_pki
from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw

PRIVATE_KEYS = ("ca-key.pem", "server-key.pem", "entra-signing-key.pem")


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The loosest umask: whatever mode a file gets, its creator asked for it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def modes_at_creation(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The mode of each file in a state dir the moment it is opened for writing, before a
    byte is written or any chmod could run: through os.open and through io.open (which
    Path.write_bytes and open() use), the two ways Python code creates a file."""
    seen: dict[str, int] = {}
    real_os_open, real_io_open = os.open, io.open

    def note(path: Any) -> None:
        p = Path(os.fsdecode(path))
        if p.exists() and p.name.startswith(PRIVATE_KEYS):
            seen.setdefault(p.name.removesuffix(".tmp"), _mode(p))

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_os_open(path, flags, *args, **kw)
        if flags & os.O_CREAT:
            note(path)
        return fd

    def io_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = real_io_open(file, mode, *args, **kw)
        if isinstance(file, str | bytes | os.PathLike) and any(c in mode for c in "wax+"):
            note(file)
        return f

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    return seen


@pytest.mark.usefixtures("umask_000")
def test_private_keys_are_0600_from_creation(
    tmp_path: Path, modes_at_creation: dict[str, int]
) -> None:
    state = tmp_path / "state"
    ensure_pki(state)
    assert sorted(modes_at_creation) == sorted(PRIVATE_KEYS), "every key file was observed"
    for name, mode in modes_at_creation.items():
        assert mode == 0o600, f"{name} was created {oct(mode)}"
        assert _mode(state / name) == 0o600
    assert not list(state.glob("*.tmp"))


@pytest.mark.usefixtures("umask_000")
def test_a_stale_temp_key_file_is_not_reused(tmp_path: Path) -> None:
    """A leftover (or planted) world-readable temp file is replaced, not written into."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    stale = state / "entra-signing-key.pem.tmp"
    stale.write_text("stale")
    stale.chmod(0o666)
    ensure_pki(state)
    assert _mode(state / "entra-signing-key.pem") == 0o600
    assert not stale.exists()


@pytest.mark.usefixtures("umask_000")
def test_state_dir_is_created_0700(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    ensure_pki(state)
    assert _mode(state) == 0o700


def test_an_open_state_dir_is_tightened_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="keyvault_emulator.tls"):
        ensure_pki(state)
    assert _mode(state) == 0o700
    assert any("tightened to 0700" in r.getMessage() for r in caplog.records)


def test_a_shared_sticky_dir_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--state-dir /tmp must not turn /tmp into a private dir; the keys stay 0600."""
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o1777)
    with caplog.at_level(logging.WARNING, logger="keyvault_emulator.tls"):
        ensure_pki(state)
    assert _mode(state) == 0o1777
    assert any("left as it is" in r.getMessage() for r in caplog.records)
    for name in PRIVATE_KEYS:
        assert _mode(state / name) == 0o600


# --- the admin API keeps Key Vault's limits ---------------------------------------------------


def _admin_put(emulator: Emulator, name: str, body: dict[str, Any]) -> requests.Response:
    return requests.put(
        f"{emulator.admin_url}/vaults/kv-test/secrets/{name}", json=body, timeout=10
    )


LIMITS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("value over 25 KB", lambda: {"value": "x" * (25 * 1024 + 1)}),
    ("multi-byte value over 25 KB", lambda: {"value": "é" * (25 * 512 + 1)}),
    ("content type not a string", lambda: {"value": "v", "contentType": 7}),
    ("16 tags", lambda: {"value": "v", "tags": {f"t{i}": "x" for i in range(16)}}),
]


@pytest.mark.parametrize(("case", "body"), LIMITS, ids=[c for c, _ in LIMITS])
def test_admin_put_refuses_what_the_data_plane_refuses(
    emulator: Emulator, case: str, body: Callable[[], dict[str, Any]]
) -> None:
    name = f"limit-{uuid.uuid4().hex[:8]}"
    raw = Raw(emulator, t.SP_OFFICER_ID)
    data_plane = raw.call("PUT", f"/secrets/{name}", body())
    admin = _admin_put(emulator, name, body())
    assert data_plane.status_code == 400, data_plane.text
    assert data_plane.json()["error"]["code"] == "BadParameter"
    assert (admin.status_code, admin.json()) == (400, data_plane.json()), case
    raw.error("GET", f"/secrets/{name}", 404, "SecretNotFound")


def test_admin_put_takes_a_value_of_exactly_25_kb(emulator: Emulator) -> None:
    name = f"limit-{uuid.uuid4().hex[:8]}"
    value = "x" * (25 * 1024)
    resp = _admin_put(emulator, name, {"value": value})
    assert resp.status_code == 200, resp.text
    got = Raw(emulator, t.SP_OFFICER_ID).call("GET", f"/secrets/{name}")
    assert got.json()["value"] == value
