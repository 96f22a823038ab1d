"""The provider's security context, tried with the real provider: as daemonset/provider-azure.yaml
runs it (uid 0, every capability gone, no new privileges), it creates its socket in a
root-owned 0755 directory, as kubelet makes a DirectoryOrCreate hostPath, and answers its
health check; a non-root user (the image's default, 65532) cannot create anything there,
which is why the manifest sets runAsUser 0 instead of dropping root."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from testbed.ports import free_port
from testbed.provider import PROVIDER_COMMAND

from .render import container, find, plain

SETPRIV = shutil.which("setpriv")


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A root-owned 0755 directory with 0755 parents, as kubelet creates the hostPath."""
    top = Path(tempfile.mkdtemp(prefix="providers-", dir="/tmp"))
    top.chmod(0o755)
    providers = top / "secrets-store-csi-providers"
    providers.mkdir(mode=0o755)
    providers.chmod(0o755)
    try:
        yield providers
    finally:
        shutil.rmtree(top, ignore_errors=True)


def manifest_args(endpoint: str, healthz: int, metrics: int) -> list[str]:
    """The provider container's args from the plain manifest, with this test's socket and ports."""
    c = container(find(plain("provider-azure.yaml"), "DaemonSet"), "provider-azure-installer")
    replaced = {
        "--endpoint": f"--endpoint={endpoint}",
        "--healthz-port": f"--healthz-port={healthz}",
        "--prometheus-port": f"--prometheus-port={metrics}",
    }
    args = [replaced.get(a.split("=", 1)[0], a) for a in c["args"]]
    assert sum(a != b for a, b in zip(args, c["args"], strict=True)) == 3, c["args"]
    return args


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_root_without_capabilities_serves_the_socket(host_dir: Path, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "run the suite as root, inside tests/netns-run"
    assert SETPRIV, "setpriv (util-linux) is missing"
    sock = host_dir / "azure.sock"
    healthz, metrics = free_port(), free_port()
    log = tmp_path / "provider.log"
    argv = [
        SETPRIV,
        "--reuid=0",
        "--regid=0",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        *PROVIDER_COMMAND,
        *manifest_args(f"unix://{sock}", healthz, metrics),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{healthz}/healthz", timeout=2)
                if answer.status_code == 200 and sock.exists():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert proc.poll() is None, f"the provider exited:\n{log.read_text()}"
        assert answer is not None and answer.status_code == 200, log.read_text()
        st = sock.stat()
        # root's own socket: the driver (root) connects, nobody else may
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0, oct(st.st_mode)
        fields = status_fields(proc.pid)
        assert fields["Uid"].split()[:2] == ["0", "0"]
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"
        assert fields["NoNewPrivs"] == "1"
        scrape = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5)
        assert scrape.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not sock.exists(), "the provider leaves no socket behind on SIGTERM"


def test_non_root_cannot_create_the_socket(host_dir: Path) -> None:
    """The image's own user could not: the reason for runAsUser 0."""
    assert SETPRIV, "setpriv (util-linux) is missing"
    proc = subprocess.run(
        [
            SETPRIV,
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            f": > {host_dir}/azure.sock",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Permission denied" in proc.stderr
    assert not (host_dir / "azure.sock").exists()
