"""NodeService's share rule for first publishes, with fakes (pure logic: the real-pieces tests
are in test_publish_sharing.py)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from csi_driver.atomic_writer import FileProjection
from csi_driver.metrics import Metrics
from csi_driver.node import NodeService
from csi_driver.provider_client import MountResult
from csi_driver.spcps import NoStatus


def _node(share: bool = True) -> NodeService:
    return NodeService(
        node_id="n",
        providers=None,  # type: ignore[arg-type]
        spcs=None,  # type: ignore[arg-type]
        client=None,
        metrics=Metrics(CollectorRegistry()),
        tmpfs_size=1 << 20,
        status=NoStatus(),
        use_tmpfs=False,
        share=share,
    )


class _Provider:
    def __init__(self, files: bool) -> None:
        self.calls = 0
        self.files = files

    async def __call__(self) -> MountResult:
        self.calls += 1
        await asyncio.sleep(0)
        files = {"s": FileProjection(b"x", 0o644)} if self.files else {}
        return MountResult({"secret/s": "v1"}, files)


async def _five(node: NodeService, key: tuple[str, ...] | None, call: _Provider) -> None:
    await asyncio.gather(*(node._shared("azure", key, call) for _ in range(5)))


async def test_equal_keys_share_and_the_saving_is_counted() -> None:
    node, call = _node(), _Provider(files=True)
    await _five(node, ("k",), call)
    assert call.calls == 1
    assert node.metrics.publish_calls_saved.labels("azure", "linux")._value.get() == 4


async def test_no_key_or_sharing_off_calls_alone() -> None:
    for node, key in ((_node(), None), (_node(share=False), ("k",))):
        call = _Provider(files=True)
        await _five(node, key, call)
        assert call.calls == 5


async def test_an_answer_without_files_is_not_shared() -> None:
    """A provider that writes into the target itself wrote only the first target."""
    node, call = _node(), _Provider(files=False)
    await _five(node, ("k",), call)
    assert call.calls == 5
