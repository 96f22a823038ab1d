"""Five idle minutes on fake time cost no Secret write: the sync controller runs in this process
against the real kube-apiserver, on a client that counts every call, while the event loop's
clock jumps ahead (watch streams time out and reconnect, any timer fires)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from prometheus_client import CollectorRegistry

from csi_driver.kube import NODE_LABEL, SecretProviderClassPodStatus
from csi_driver.metrics import Metrics
from csi_driver.secret_sync import SecretSync

from .conftest import unique
from .test_sync import eventually, get_secret, make_pod, make_spc

NODE = "node-idle"
WRITES = ("create", "replace", "patch", "delete", "apply")


class CountingClient:
    """Passes every call to the real client and records (verb, resource) of each."""

    def __init__(self, inner: AsyncClient) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in (*WRITES, "get"):

            async def counted(*args: Any, **kw: Any) -> Any:
                res = args[0]
                kind = res.__name__ if isinstance(res, type) else type(res).__name__
                self.calls.append((name, kind))
                return await attr(*args, **kw)

            return counted
        if name == "watch":

            def watch(res: Any, **kw: Any) -> Any:
                self.calls.append(("watch", res.__name__))
                return attr(res, **kw)

            return watch
        return attr

    def secret_writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] in WRITES and c[1] == "Secret"]


async def _reads_since(client: CountingClient, index: int) -> bool:
    return ("get", "Secret") in client.calls[index:]


@pytest.fixture
async def fake_clock() -> AsyncIterator[Callable[[float], None]]:
    loop = asyncio.get_running_loop()
    real = loop.time
    offset = [0.0]
    loop.time = lambda: real() + offset[0]  # type: ignore[method-assign]

    def advance(seconds: float) -> None:
        offset[0] += seconds

    yield advance
    del loop.time  # back to the class's method


async def test_five_idle_minutes_zero_secret_writes(
    admin_client: AsyncClient,
    driver_kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    fake_clock: Callable[[float], None],
) -> None:
    name = unique("idle5")
    spc = await make_spc(
        admin_client,
        namespace,
        {},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "user", "key": "u"}]}],
    )
    pod = await make_pod(admin_client, namespace, spc, node=NODE)
    assert pod.metadata is not None and pod.metadata.uid is not None
    target = tmp_path / "pods" / pod.metadata.uid / "volumes/kubernetes.io~csi/secrets-store/mount"
    target.mkdir(parents=True)
    (target / "user").write_text("erin")
    await admin_client.create(
        SecretProviderClassPodStatus.from_dict(
            {
                "metadata": {
                    "name": f"{pod.metadata.name}-{namespace}-{spc}",
                    "namespace": namespace,
                    "labels": {NODE_LABEL: NODE},
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "name": pod.metadata.name,
                            "uid": pod.metadata.uid,
                        }
                    ],
                },
                "status": {
                    "podName": pod.metadata.name,
                    "secretProviderClassName": spc,
                    "targetPath": str(target),
                    "mounted": True,
                },
            }
        )
    )
    inner = AsyncClient(config=KubeConfig.from_file(driver_kubeconfig))
    client = CountingClient(inner)
    sync = SecretSync(client, NODE, Metrics(CollectorRegistry()))  # type: ignore[arg-type]
    sync.start()
    try:

        async def synced() -> bool:
            return await get_secret(admin_client, namespace, name) is not None

        await eventually(synced, what="the first sync")
        await asyncio.sleep(0.5)
        assert len(client.secret_writes()) == 1
        before = len(client.calls)
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(290, fired.set)  # proves the clock really moves
        for _ in range(60):  # 60 times 5 s = 5 minutes of the controller's clock
            fake_clock(5.0)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert fired.is_set()
        secret = await get_secret(admin_client, namespace, name)
        assert secret is not None
        assert client.secret_writes() == [("create", "Secret")]
        after = client.calls[before:]
        print(f"API calls in 5 idle minutes: {len(after)} {after}")
        assert not [c for c in after if c[0] in WRITES]
        # a driver restart replays every watched object: compared (reads), never rewritten
        await sync.stop()
        before = len(client.calls)
        sync = SecretSync(client, NODE, Metrics(CollectorRegistry()))  # type: ignore[arg-type]
        sync.start()
        await eventually(lambda: _reads_since(client, before), what="the replay's reads")
        await asyncio.sleep(0.5)
        after = client.calls[before:]
        print(f"API calls after a restart: {len(after)} {after}")
        assert ("get", "Secret") in after
        # the start-up RBAC self-review is a create that stores nothing; nothing else writes
        assert not [c for c in after if c[0] in WRITES and c[1] != "SelfSubjectAccessReview"]
    finally:
        await sync.stop()
        await inner.close()
