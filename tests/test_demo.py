"""`make demo` stays true: the demo runs to the end and tells the whole story.

It runs in a namespace of its own (the session's emulator already holds :443 in this one). The
demo exits non-zero when the rotated value does not arrive within five intervals or the driver
leaves its mount behind, so a missing rotation fails this test.
"""

from __future__ import annotations

import os
import re
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
    # the driver ran in standalone mode on the SPC file, on a tmpfs
    assert "python -m csi_driver.standalone" in out
    assert "kind: SecretProviderClass" in out and "objectAlias: foo1" in out
    assert "standalone: running as root: mounting a tmpfs" in out
    assert re.search(r"files at \S+ \(tmpfs;", out)
    for name in ("foo1", "signing-key", "web-cert", "web-cert.pem"):
        assert re.search(rf"-rw-r--r-- +\d+  {re.escape(name)} ", out), name
    # the change arrived through the driver's rotation, and the metrics say so
    before, _, after = out.partition("changing secret 'username'")
    assert "foo1 = 'admin-v1'" in before
    assert "foo1 = 'admin-v2'" in after
    assert "rotation: default/" in after and "versions changed, files rewritten" in after
    assert re.search(r'rotation_reconcile_total\{[^}]*rotated="true"\} [1-9]', after)
    assert 'node_publish_total{os_type="linux",provider="azure"} 1.0' in out
    assert re.search(r"keyvault_request_count\{[^}]*object_name=\"username\"", out)
    # clean exit: unmounted
    assert "nothing left mounted" in out
    assert "mounted: False" in out
    assert "demo-client-secret" not in out
