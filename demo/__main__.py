"""A mount and a rotation, end to end, on one machine, with the driver in standalone mode.

The Key Vault emulator plays Key Vault and Entra ID, `python -m provider_azure` is the provider,
and `python -m csi_driver.standalone` is the driver: it reads a SecretProviderClass manifest,
mounts a tmpfs, calls the provider over its socket, writes the files atomically and keeps them
rotated, through the same code as a CSI NodePublishVolume and the rotation reconciler. Run it
through `make demo`, which puts it in a private network + mount namespace where
`kv-demo.vault.azure.net` and `login.microsoftonline.com` are local.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from csi_driver import mounter
from demo import CLIENT_ID, CLIENT_SECRET, SPC_PARAMETERS
from testbed.emulator import Emulator
from testbed.provider import PROVIDER_COMMAND

HERE = Path(__file__).resolve().parent
INTERVAL = "2s"  # the demo's --rotation-poll-interval
WAIT_ROTATION = 10.0  # seconds: five intervals
PROVIDER_METRICS, DRIVER_METRICS = "127.0.0.1:8898", "127.0.0.1:8095"

# The SecretProviderClass, written as the AKS docs write it: an objectAlias, a key, a cert and
# the cert's secret (the PEM with its private key).
SPC = f"""apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kv-demo
  namespace: default
spec:
  provider: azure
{SPC_PARAMETERS}
"""
# nodePublishSecretRef's data, as `kubectl create secret generic --from-literal` would hold it.
SECRET = f"clientid: {CLIENT_ID}\nclientsecret: {CLIENT_SECRET}\n"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show_files(target: Path) -> None:
    for entry in sorted(target.iterdir()):
        if entry.name.startswith(".."):
            continue
        st = entry.stat()
        first = entry.read_bytes().splitlines()[0].decode(errors="replace") if st.st_size else ""
        print(f"    {stat.filemode(st.st_mode)} {st.st_size:5d}  {entry.name:14s} {first[:48]}")


def wait_for(what: str, cond: object, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.02)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class LogTail:
    """Prints the driver's new log lines (its own `standalone:` and `rotation` lines)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def show(self) -> None:
        data = self.path.read_text(errors="replace")
        new, self.offset = data[self.offset :], len(data)
        for line in new.splitlines():
            if "standalone:" in line or "rotation" in line:
                print("    driver| " + line.split("] ", 1)[-1])


def metrics(addr: str, prefixes: tuple[str, ...]) -> None:
    body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(prefixes):
            print("    " + line)


def run(work: Path, emu: Emulator) -> None:
    providers = work / "providers"
    providers.mkdir()
    step(f"starting the Azure provider on unix://{providers}/azure.sock (metrics on :8898)")
    with open(work / "provider.log", "wb") as out:
        provider = subprocess.Popen(
            [*PROVIDER_COMMAND, f"--endpoint=unix://{providers}/azure.sock"],
            stderr=out,
        )
    target = work / "mnt" / "secrets-store"
    tail = LogTail(work / "driver.log")
    driver: subprocess.Popen[bytes] | None = None
    try:
        wait_for("provider socket", (providers / "azure.sock").exists, provider, 30)
        write_inputs(work, target)
        driver = start_driver(work, target, providers, tail)
        rotate(emu, target, driver, tail)
        show_metrics(emu)
    finally:
        step("cleaning up: SIGTERM to the driver (it unmounts), then the provider")
        if driver is not None:
            stop_driver(driver, target, tail)
        provider.terminate()
        provider.wait(10)


def write_inputs(work: Path, target: Path) -> None:
    (work / "spc.yaml").write_text(SPC)
    (work / "secret.yaml").write_text(SECRET)
    os.chmod(work / "secret.yaml", 0o600)
    target.mkdir(parents=True)
    step(f"the SecretProviderClass ({work}/spc.yaml)")
    print("    " + SPC.strip().replace("\n", "\n    "))


def start_driver(
    work: Path, target: Path, providers: Path, tail: LogTail
) -> subprocess.Popen[bytes]:
    """The driver in standalone mode, until its first mount is in place; the files shown."""
    argv = [
        "python",
        "-m",
        "csi_driver.standalone",
        f"--spc={work}/spc.yaml",
        f"--node-publish-secret-file={work}/secret.yaml",
        f"--target-path={target}",
        f"--provider-volume={providers}",
        f"--rotation-poll-interval={INTERVAL}",
        f"--metrics-addr={DRIVER_METRICS}",
    ]
    shown = " ".join(argv[:3]) + "".join(f" \\\n        {a}" for a in argv[3:])
    step("starting the driver in standalone mode:\n    " + shown)
    started = time.monotonic()
    with open(work / "driver.log", "wb") as out:
        driver = subprocess.Popen([sys.executable, *argv[1:]], stderr=out)
    wait_for("the mount", lambda: (target / "foo1").exists(), driver, 30)
    print(f"    mounted in {time.monotonic() - started:.1f}s")
    tail.show()
    fstype = mounter.mount_points().get(str(target), "(not a mount)")
    step(f"files at {target} ({fstype}; each a symlink into ..data, swapped atomically)")
    show_files(target)
    print(f"    foo1 = {read(target / 'foo1')!r}")
    return driver


def rotate(emu: Emulator, target: Path, driver: subprocess.Popen[bytes], tail: LogTail) -> None:
    step("changing secret 'username' in the emulator (a new version)")
    emu.set_secret("kv-demo", "username", "admin-v2")
    changed = time.monotonic()
    step(f"waiting for the rotation (--rotation-poll-interval={INTERVAL})")
    wait_for(
        "the rotated value",
        lambda: read(target / "foo1") == "admin-v2",
        driver,
        WAIT_ROTATION,
    )
    took = time.monotonic() - changed
    print(f"    foo1 = {read(target / 'foo1')!r}  ({took:.1f}s after the change)")
    tail.show()


def show_metrics(emu: Emulator) -> None:
    step(f"driver metrics (http://{DRIVER_METRICS}/metrics)")
    metrics(DRIVER_METRICS, ("node_publish_total", "rotation_reconcile_total"))
    step(f"provider metrics (http://{PROVIDER_METRICS}/metrics)")
    metrics(PROVIDER_METRICS, ("keyvault_request_count", "grpc_request_count"))
    calls = [r for r in emu.requests() if r.get("service") == "kv"]
    print(f"    Key Vault requests seen by the emulator: {len(calls)}")


def stop_driver(driver: subprocess.Popen[bytes], target: Path, tail: LogTail) -> None:
    driver.send_signal(signal.SIGTERM)
    rc = driver.wait(15)
    tail.show()
    left = str(target) in mounter.mount_points()
    print(f"    driver exited {rc}; {target} mounted: {left}")
    if rc != 0 or left:
        raise SystemExit("the driver did not clean up")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the demo mounts a tmpfs: run it as root (make demo)")
    work = Path(tempfile.mkdtemp(prefix="sscsi-demo-"))
    begun = time.monotonic()
    step("starting the Key Vault emulator (Key Vault + Entra ID) with vault kv-demo")
    emu = Emulator.start(work / "emulator", seeds=[HERE / "seed.yaml"])
    os.environ["SSL_CERT_FILE"] = str(emu.ca_path)
    try:
        run(work, emu)
    finally:
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)
    step(f"done in {time.monotonic() - begun:.1f}s")


if __name__ == "__main__":
    main()
