"""`make demo` stays true: the demo runs to the end and shows the rotated value.

It runs in a namespace of its own (the session's emulator already holds :443 in this one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_mounts_and_rotates() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NETNS_RUN_INSIDE", "SSL_CERT_FILE")}
    proc = subprocess.run(
        [str(ROOT / "tests" / "netns-run"), sys.executable, "-m", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "foo1 = 'admin-v1'" in out
    assert "versions changed=True" in out
    assert "foo1 = 'admin-v2'" in out
    assert "keyvault_request_count" in out
    assert "demo-client-secret" not in out
