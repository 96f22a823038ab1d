"""`make demo-sync` stays true: a Secret from Key Vault with no pod, through the SecretSync
controller on a real control plane, run as the target runs it (tests/netns-run). The demo exits
non-zero when the Secret does not appear with the vault's value, does not follow a change
within the poll, or is not collected after its SecretSync goes; this test also reads the story."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.peers import peer

pytestmark = pytest.mark.peers
ROOT = Path(__file__).resolve().parent.parent


def test_demo_sync_secret_without_a_pod() -> None:
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        peer(name)
    env = {k: v for k, v in os.environ.items() if k not in ("NETNS_RUN_INSIDE", "SSL_CERT_FILE")}
    proc = subprocess.run(
        [str(ROOT / "tests" / "netns-run"), sys.executable, "-m", "demo.sync"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "kind: SecretSync" in out and "No resources found" in out  # no pod anywhere
    assert "SecretSync/demo-sync" in out and "decoded: username = 'admin-v1'" in out
    assert "SecretCreated=True (CreateSuccessful)" in out
    assert re.search(r"username = 'admin-v2' [\d.]+s later", out)
    assert re.search(r"Secret demo-sync gone [\d.]+s after the delete", out)
    assert "FAILED" not in out
