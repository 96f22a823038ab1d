"""A node-restart mount storm, sent as Mount calls straight to one provider (no driver).

`pods` pods, each with the same SecretProviderClass (the same `objects`, vault and identity),
`inflight` Mounts at a time, as kubelet's publishes arrive after a node restart. What it
measures is the provider alone: the driver-side sharing of concurrent publishes is not in the
path.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from testbed.provider import ProviderProcess


@dataclass
class StormResult:
    wall_seconds: float
    failures: int
    done_at: list[float] = field(default_factory=list)  # seconds from start, each success
    first_error: str = ""


def storm(
    proc: ProviderProcess,
    attributes_of: Callable[[str, str], dict[str, str]],
    secrets: dict[str, str],
    *,
    pods: int,
    inflight: int,
    timeout: float = 120.0,
) -> StormResult:
    """`attributes_of(pod_name, pod_uid)`: the Mount attributes of one pod."""
    stub = proc.stub  # one channel, shared by the worker threads (grpc channels are)
    result = StormResult(0.0, 0)
    start = time.monotonic()

    def one(i: int) -> None:
        name, uid = f"storm-{i:04d}", str(uuid.UUID(int=i + 1))
        try:
            response = proc.mount(
                attributes_of(name, uid),
                secrets,
                target=f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/secrets/mount",
                timeout=timeout,
            )
            assert response.files, "empty mount"
            result.done_at.append(time.monotonic() - start)
        except (grpc.RpcError, AssertionError) as exc:
            result.failures += 1
            result.first_error = result.first_error or str(exc)[:300]

    del stub
    with ThreadPoolExecutor(max_workers=inflight) as pool:
        list(pool.map(one, range(pods)))
    result.wall_seconds = time.monotonic() - start
    result.done_at.sort()
    return result
