"""A mount and a rotation, end to end, on one machine.

The Key Vault emulator plays Key Vault and Entra ID, `python -m provider_azure` is the provider,
and the driver's own pieces (tmpfs mounter, provider client, atomic writer) do what a
NodePublishVolume and a rotation tick do. Run it through `make demo`, which puts it in a private
network namespace where `kv-demo.vault.azure.net` and `login.microsoftonline.com` are local.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from csi_driver import atomic_writer, mounter
from csi_driver.node import go_json
from csi_driver.provider_client import MountResult, ProviderClients
from keyvault_emulator.testing import Emulator

HERE = Path(__file__).resolve().parent
TENANT = "11111111-2222-4333-8444-555555555555"
CLIENT_ID, CLIENT_SECRET = "0d000001-0000-4000-8000-000000000001", "demo-client-secret"
INTERVAL = 2.0  # the demo's rotation poll interval, in seconds

# The SecretProviderClass parameters, written as the AKS docs write them.
OBJECTS = """array:
  - |
    objectName: username
    objectType: secret
    objectAlias: foo1
  - |
    objectName: signing-key
    objectType: key
  - |
    objectName: web-cert
    objectType: cert
  - |
    objectName: web-cert
    objectType: secret
    objectAlias: web-cert.pem
"""
PARAMETERS = {
    "usePodIdentity": "false",
    "keyvaultName": "kv-demo",
    "tenantId": TENANT,
    "objects": OBJECTS,
    # What the driver adds from the pod (podInfoOnMount).
    "csi.storage.k8s.io/pod.name": "demo-pod",
    "csi.storage.k8s.io/pod.namespace": "default",
    "csi.storage.k8s.io/pod.uid": "3f0c5a52-6d1e-4b8a-9d57-2f3c1e0b9a11",
    "csi.storage.k8s.io/serviceAccount.name": "default",
}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show_files(target: Path) -> None:
    for entry in sorted(target.iterdir()):
        if entry.name.startswith(".."):
            continue
        st = entry.stat()
        first = entry.read_bytes().splitlines()[0].decode(errors="replace") if st.st_size else ""
        print(f"    {stat.filemode(st.st_mode)} {st.st_size:5d}  {entry.name:14s} {first[:48]}")


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"provider did not start (exit {proc.poll()})")
        time.sleep(0.05)


async def mount(
    clients: ProviderClients, target: Path, current: dict[str, str] | None
) -> MountResult:
    secrets = go_json({"clientid": CLIENT_ID, "clientsecret": CLIENT_SECRET})
    return await clients.mount(
        "azure", go_json(PARAMETERS), secrets, str(target), go_json(0o644), current
    )


async def mount_and_rotate(work: Path, emu: Emulator) -> None:
    target = work / "pods" / "demo-pod" / "volumes" / "kubernetes.io~csi" / "store" / "mount"
    target.mkdir(parents=True)
    clients = ProviderClients((str(work / "providers"),), 4 * 1024 * 1024, 30)
    try:
        step(f"NodePublishVolume: tmpfs at {target}, provider Mount, atomic write")
        mounter.mount_tmpfs(str(target), 8 * 1024 * 1024)
        result = await mount(clients, target, None)
        atomic_writer.write(str(target), result.files)
        show_files(target)
        print("    object versions:", json.dumps(result.object_versions, indent=None))
        print(f"    foo1 = {(target / 'foo1').read_text()!r}")

        step("changing secret 'username' in the emulator (a new version)")
        changed_at = time.monotonic()
        emu.set_secret("kv-demo", "username", "admin-v2")

        step(f"rotation: re-mounting every {INTERVAL:.0f}s with the current versions")
        current = dict(result.object_versions)
        for tick in range(1, 11):
            await asyncio.sleep(INTERVAL)
            result = await mount(clients, target, current)
            rotated = result.object_versions != current
            wrote = atomic_writer.write(str(target), result.files)
            print(f"    tick {tick}: versions changed={rotated} files rewritten={wrote}")
            current = dict(result.object_versions)
            if rotated:
                value = (target / "foo1").read_text()
                took = time.monotonic() - changed_at
                print(f"    foo1 = {value!r}  ({took:.1f}s after the change;")
                print("    written to a new timestamped dir, swapped in through the ..data link)")
                break
        else:
            raise SystemExit("the change did not arrive within 10 intervals")
    finally:
        await clients.close()
        with contextlib.suppress(OSError):
            mounter.unmount(str(target))


def show_metrics(emu: Emulator) -> None:
    step("provider metrics (http://127.0.0.1:8898/metrics)")
    body = urllib.request.urlopen("http://127.0.0.1:8898/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(("keyvault_request_count", "grpc_request_count")):
            print("    " + line)
    calls = [r for r in emu.requests() if r.get("service") == "kv"]
    print(f"    Key Vault requests seen by the emulator: {len(calls)}")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the demo mounts a tmpfs: run it as root (make demo)")
    work = Path(tempfile.mkdtemp(prefix="sscsi-demo-"))
    step("starting the Key Vault emulator (Key Vault + Entra ID) with vault kv-demo")
    emu = Emulator.start(work / "emulator", seeds=[HERE / "seed.yaml"])
    os.environ["SSL_CERT_FILE"] = str(emu.ca_path)
    providers = work / "providers"
    providers.mkdir()
    step(f"starting the Azure provider on unix://{providers}/azure.sock")
    with open(work / "provider.log", "wb") as provider_log:
        provider = subprocess.Popen(
            [sys.executable, "-m", "provider_azure", f"--endpoint=unix://{providers}/azure.sock"],
            stderr=provider_log,
        )
    try:
        wait_for_socket(providers / "azure.sock", provider)
        asyncio.run(mount_and_rotate(work, emu))
        show_metrics(emu)
    finally:
        step("cleaning up: unmounted; stopping the provider and the emulator")
        provider.terminate()
        provider.wait(10)
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)
    step("done")


if __name__ == "__main__":
    main()
