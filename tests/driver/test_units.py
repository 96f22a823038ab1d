"""Plain-Python parts: Go flag syntax, the atomic writer, Go JSON, response checks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from csi_driver import atomic_writer
from csi_driver.atomic_writer import FileProjection, PayloadError
from csi_driver.config import parse_args
from csi_driver.provider_client import check_response
from csi_driver.server import parse_endpoint
from csi_driver.volumes import go_json
from secrets_store_api import provider_pb2
from secrets_store_api.goflags import FlagError, parse_duration


def test_upstream_manifest_flags_parse() -> None:
    c = parse_args(
        [
            "--endpoint=unix:///csi/csi.sock",
            "--nodeid=node-a",
            "--provider-volume=/var/run/secrets-store-csi-providers",
            "--additional-provider-volume-paths=/etc/kubernetes/secrets-store-csi-providers",
            "--metrics-addr=:8095",
            "--enable-secret-rotation=false",
            "--rotation-poll-interval=2m",
            "--provider-health-check=false",
            "--provider-health-check-interval=2m",
            "-v=2",
        ]
    )
    assert c.endpoint == "unix:///csi/csi.sock"
    assert c.node_id == "node-a"
    assert c.provider_paths == (
        "/var/run/secrets-store-csi-providers",
        "/etc/kubernetes/secrets-store-csi-providers",
    )
    assert c.enable_secret_rotation is False
    assert c.rotation_poll_interval == 120.0
    assert c.verbosity == 2
    assert c.max_call_recv_msg_size == 4 * 1024 * 1024
    assert c.tmpfs_size == 16 << 20


def test_tmpfs_size() -> None:
    assert parse_args(["--tmpfs-size=1Mi"]).tmpfs_size == 1 << 20
    assert parse_args(["--max-call-recv-msg-size=33554432"]).tmpfs_size == 65 << 20
    with pytest.raises(FlagError):
        parse_args(["--tmpfs-size=lots"])


def test_go_flag_syntax_variants() -> None:
    c = parse_args(
        ["-nodeid", "n", "--enable-secret-rotation", "--v", "5", "-max-call-recv-msg-size=10"]
    )
    assert (c.node_id, c.enable_secret_rotation, c.verbosity, c.max_call_recv_msg_size) == (
        "n",
        True,
        5,
        10,
    )
    assert parse_args(["--enable-secret-rotation=true"]).enable_secret_rotation is True
    assert parse_args(["--logtostderr", "--log-format-json"]).log_format_json is True
    for bad in (["--no-such-flag"], ["--nodeid"], ["--enable-secret-rotation=maybe"], ["---x"]):
        with pytest.raises(FlagError):
            parse_args(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2m", 120),
        ("30s", 30),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("0", 0),
        ("1.5h", 5400),
        ("-1s", -1),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "2x", "m", "1h-2m"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(FlagError):
        parse_duration(text)


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from csi_driver.__main__ import main

    assert main(["--bogus"]) == 2
    assert main(["--version"]) == 0
    assert '"version"' in capsys.readouterr().out


def test_endpoints() -> None:
    assert parse_endpoint("unix:///csi/csi.sock") == ("unix", "/csi/csi.sock")
    assert parse_endpoint("unix://tmp/csi.sock") == ("unix", "/tmp/csi.sock")
    assert parse_endpoint("tcp://127.0.0.1:10000") == ("tcp", "127.0.0.1:10000")
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_endpoint("http://x")


def test_go_json() -> None:
    assert go_json(None) == "null"
    assert go_json(420) == "420"
    assert go_json({"b": "<&>", "a": "é"}) == '{"a":"é","b":"\\u003c\\u0026\\u003e"}'


def _files(**kw: str) -> dict[str, FileProjection]:
    return {k.replace("__", "/"): FileProjection(v.encode(), 0o644) for k, v in kw.items()}


def test_atomic_writer_swap(tmp_path: Path) -> None:
    assert atomic_writer.write(str(tmp_path), _files(a="1", d__b="2"))
    first = os.readlink(tmp_path / "..data")
    assert (tmp_path / "a").read_text() == "1" and (tmp_path / "d" / "b").read_text() == "2"
    assert not atomic_writer.write(str(tmp_path), _files(a="1", d__b="2"))  # unchanged: no-op
    assert atomic_writer.write(str(tmp_path), _files(a="3", c="4"))
    second = os.readlink(tmp_path / "..data")
    assert second != first and not (tmp_path / first).exists()
    assert (tmp_path / "a").read_text() == "3" and (tmp_path / "c").read_text() == "4"
    assert not (tmp_path / "d").exists() and not (tmp_path / "d").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["..data", second, "a", "c"])


def test_atomic_writer_readers_never_see_a_mix(tmp_path: Path) -> None:
    atomic_writer.write(str(tmp_path), _files(x="0", y="0"))
    stop = threading.Event()
    mixed: list[tuple[str, str]] = []
    missing: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:  # what a pod reads: the file through its symlink is never missing
                Path(tmp_path, "x").read_text()
            except FileNotFoundError:
                missing.append("x")
            data = os.path.join(str(tmp_path), "..data")
            try:
                real = os.path.realpath(data)
                x = Path(real, "x").read_text()
                y = Path(real, "y").read_text()
            except FileNotFoundError:
                continue  # the old dir went away between resolve and open: read again
            if x != y:
                mixed.append((x, y))

    t = threading.Thread(target=read)
    t.start()
    for i in range(1, 200):
        atomic_writer.write(str(tmp_path), _files(x=str(i), y=str(i)))
    stop.set()
    t.join()
    assert mixed == []
    assert missing == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/abs", "must be relative path"),
        ("../x", "must not contain '..'"),
        ("a/../b", "must not contain '..'"),
        ("..x", "must not start with '..'"),
        ("", "must not be empty"),
        ("a//b", "invalid filepath"),
        ("a/./b", "invalid filepath"),
        ("a/", "invalid filepath"),
        ("x" * 256, "filenames must be less than or equal to 255"),
    ],
)
def test_atomic_writer_rejects(tmp_path: Path, path: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        atomic_writer.write(str(tmp_path), {path: FileProjection(b"x", 0o644)})
    assert list(tmp_path.iterdir()) == []


def test_check_response_rows() -> None:
    ok = provider_pb2.MountResponse(
        object_version=[provider_pb2.ObjectVersion(id="secret/a", version="1")],
        files=[provider_pb2.File(path="a", mode=0o4755, contents=b"x")],
    )
    result = check_response(ok)
    assert result.object_versions == {"secret/a": "1"}
    assert result.files["a"].mode == 0o755  # no setuid from a provider
    from csi_driver.errors import ProviderError

    with pytest.raises(ProviderError, match="missing object versions"):
        check_response(provider_pb2.MountResponse())
    with pytest.raises(ProviderError, match="provider error code X"):
        check_response(provider_pb2.MountResponse(error=provider_pb2.Error(code="X")))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a", b"1"), ("a", b"2")], "duplicate file path in provider response: a"),
        ([("../evil", b"x")], "invalid path: must not contain '..': ../evil"),
        ([("/etc/evil", b"x")], "invalid path: must be relative path: /etc/evil"),
    ],
)
def test_check_response_refuses_bad_files(files: list[tuple[str, bytes]], message: str) -> None:
    from csi_driver.errors import ProviderError

    bad = provider_pb2.MountResponse(
        object_version=[provider_pb2.ObjectVersion(id="secret/a", version="1")],
        files=[provider_pb2.File(path=p, mode=0o644, contents=c) for p, c in files],
    )
    with pytest.raises(ProviderError) as info:
        check_response(bad)
    assert info.value.message == message
    assert info.value.error_type == "FileWriteError"


def test_atomic_writer_refuses_a_file_that_is_also_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="a is both a file and a directory"):
        atomic_writer.write(str(tmp_path), _files(a="1", a__b="2"))
    assert list(tmp_path.iterdir()) == []
