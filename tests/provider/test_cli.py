"""The command line: version, bad flags, unsupported metrics backend, stale socket."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from testbed.provider import PROVIDER_COMMAND

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROVIDER_COMMAND, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def test_version_prints_json() -> None:
    out = run("--version")
    assert out.returncode == 0 and set(json.loads(out.stdout)) == {"version", "buildDate"}


def test_unknown_flag_exits_2_like_go() -> None:
    out = run("--no-such-flag")
    assert out.returncode == 2 and "flag provided but not defined: -no-such-flag" in out.stderr


def test_unsupported_metrics_backend_exits_1(tmp_path: Path) -> None:
    out = run(
        f"--endpoint=unix://{tmp_path}/a.sock",
        "--metrics-backend=otlp",
        "--healthz-port=0",
        "--prometheus-port=0",
    )
    assert out.returncode == 1 and "unsupported metrics backend" in out.stderr


def test_bad_endpoint_exits_1() -> None:
    out = run("--endpoint=/tmp/no-scheme.sock")
    assert out.returncode == 1 and "invalid endpoint" in out.stderr
