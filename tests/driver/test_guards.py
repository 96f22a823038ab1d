"""Guards (issue 19) on behaviours whose failure looks like success: each test here fails on a
plausible one-line regression of the optimisation it names. Fast, no peers; the real-peer
halves live beside the tests of their feature (test_standalone's file modes)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from csi_driver import atomic_writer
from csi_driver.atomic_writer import FileProjection
from csi_driver.config import parse_args as parse_driver_args
from csi_driver.kube import SecretProviderClassSpec
from csi_driver.metrics import Metrics
from csi_driver.node import NodeService
from csi_driver.provider_client import MountResult, check_response
from csi_driver.spcps import NoStatus, PodStatusRecord
from csi_driver.standalone import parse_args as parse_standalone_args
from csi_driver.volumes import SA_TOKENS, PublishRequest, build_mount_request
from secrets_store_api import provider_pb2

from .test_rotation_units import _read, reconciler

MODES = {"r": 0o400, "rg": 0o440, "rw": 0o600, "default": 0o644, "x": 0o755}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- every file's own mode ----------------------------------------------------------------


def test_each_file_keeps_its_own_mode(tmp_path: Path) -> None:
    """From the provider's answer to the file on disk, each file's mode is its own."""
    resp = provider_pb2.MountResponse(
        object_version=[provider_pb2.ObjectVersion(id="secret/s", version="v1")],
        files=[provider_pb2.File(path=p, mode=m, contents=p.encode()) for p, m in MODES.items()],
    )
    files = check_response(resp).files
    assert atomic_writer.replace(str(tmp_path), files)
    assert {p: _mode(tmp_path / p) for p in MODES} == MODES


def test_a_mode_change_alone_is_written(tmp_path: Path) -> None:
    atomic_writer.write(str(tmp_path), {"s": FileProjection(b"same", 0o644)})
    assert atomic_writer.write(str(tmp_path), {"s": FileProjection(b"same", 0o400)})
    assert _mode(tmp_path / "s") == 0o400


# ---- new content that is a prefix of the old ----------------------------------------------


def test_content_that_is_a_prefix_of_the_old_is_written(tmp_path: Path) -> None:
    atomic_writer.write(str(tmp_path), {"s": FileProjection(b"password-2", 0o644)})
    assert atomic_writer.write(str(tmp_path), {"s": FileProjection(b"password", 0o644)})
    assert (tmp_path / "s").read_bytes() == b"password"
    assert not atomic_writer.write(str(tmp_path), {"s": FileProjection(b"password", 0o644)})


class _Provider:
    """Answers each Mount with the next content, always at version v1."""

    def __init__(self, *contents: bytes) -> None:
        self.contents = list(contents)
        self.calls = 0

    async def mount(self, *args: Any, **kw: Any) -> MountResult:
        self.calls += 1
        data = self.contents.pop(0)
        return MountResult({"secret/s": "v1"}, {"s": FileProjection(data, 0o644)})


def _mounted(tmp_path: Path, content: bytes) -> tuple[str, PodStatusRecord]:
    target = str(tmp_path / "pods" / "u1" / "volumes" / "kubernetes.io~csi" / "v" / "mount")
    os.makedirs(target)
    atomic_writer.write(target, {"s": FileProjection(content, 0o644)})
    return target, PodStatusRecord("p", "ns", "u1", "spc", target, "n", True, {"secret/s": "v1"})


async def test_a_refresh_to_a_prefix_rewrites_and_resyncs(tmp_path: Path) -> None:
    """Same version, shorter content (a value edited in place): the files and the synced
    Secrets follow; a refresh with nothing new does neither."""
    target, record = _mounted(tmp_path, b"password-2")
    rotated: list[PodStatusRecord] = []

    async def on_rotated(r: PodStatusRecord) -> None:
        rotated.append(r)

    now = [0.0]
    r = reconciler(
        interval=60,
        providers=_Provider(b"password", b"password"),
        on_rotated=on_rotated,
        clock=lambda: now[0],
        rng=lambda: 0.5,
    )
    r.mounts.add(record)
    req = PublishRequest("vol", target, True, True, {}, {})
    await r.republish(req)  # first sight starts the clock
    now[0] = 60
    await r.republish(req)
    assert _read(target) == "password"
    assert len(rotated) == 1
    now[0] = 120
    await r.republish(req)
    assert len(rotated) == 1  # unchanged: no resync


# ---- the republish throttle's second half -------------------------------------------------


async def test_no_provider_call_within_the_interval_after_a_refresh(tmp_path: Path) -> None:
    target, record = _mounted(tmp_path, b"v0")
    provider = _Provider(b"v1", b"v2")
    now = [0.0]
    r = reconciler(interval=60, providers=provider, clock=lambda: now[0], rng=lambda: 0.5)
    r.mounts.add(record)
    req = PublishRequest("vol", target, True, True, {}, {})
    await r.republish(req)  # first sight: starts the clock
    now[0] = 60
    await r.republish(req)
    assert provider.calls == 1
    for t in (61, 90, 119.9):  # kubelet republishes every few seconds
        now[0] = t
        await r.republish(req)
    assert provider.calls == 1
    now[0] = 120
    await r.republish(req)
    assert provider.calls == 2


# ---- tokens in both places ----------------------------------------------------------------


def _tokens(audience: str, token: str) -> str:
    return json.dumps({audience: {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})


def test_kubelet_secrets_tokens_win_over_the_volume_context() -> None:
    in_secrets, in_context = _tokens("api://a", "from-secrets"), _tokens("api://a", "from-context")
    attributes, secrets = build_mount_request(
        {"keyvaultName": "kv"}, {SA_TOKENS: in_context}, {SA_TOKENS: in_secrets}
    )
    assert json.loads(attributes)[SA_TOKENS] == in_secrets
    assert json.loads(secrets)[SA_TOKENS] == in_secrets


class _SpcSource:
    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec:
        return SecretProviderClassSpec(namespace, name, "azure", {"keyvaultName": "kv"})


class _Recorder:
    def __init__(self) -> None:
        self.attributes = ""

    async def mount(self, provider: str, attributes: str, *args: Any) -> MountResult:
        self.attributes = attributes
        return MountResult({"secret/s": "v1"}, {"s": FileProjection(b"x", 0o644)})


async def test_a_publish_sends_the_secrets_tokens(tmp_path: Path) -> None:
    """Through NodeService.publish: the provider sees kubelet's secrets' tokens."""
    provider = _Recorder()
    node = NodeService(
        node_id="n",
        providers=provider,  # type: ignore[arg-type]
        spcs=_SpcSource(),
        client=None,
        metrics=Metrics(CollectorRegistry()),
        tmpfs_size=1 << 20,
        status=NoStatus(),
        use_tmpfs=False,
    )
    tokens = _tokens("api://a", "from-secrets")
    context = {
        "secretProviderClass": "spc",
        "csi.storage.k8s.io/pod.namespace": "ns",
        SA_TOKENS: _tokens("api://a", "from-context"),
    }
    target = str(tmp_path / "mount")
    await node.publish(PublishRequest("vol", target, True, True, context, {SA_TOKENS: tokens}))
    assert json.loads(provider.attributes)[SA_TOKENS] == tokens


# ---- issue 18 row 5: standalone sizes its tmpfs as the CSI path does ----------------------


def test_standalone_tmpfs_follows_the_receive_limit() -> None:
    """A 9 MiB payload under a 20 MB receive limit: old and new must fit during a swap."""
    for flags in (["--max-call-recv-msg-size=20000000"], [], ["--tmpfs-size=64Mi"]):
        standalone = parse_standalone_args(["--spc=a", "--target-path=/x", *flags])
        assert standalone is not None
        assert standalone.tmpfs_size == parse_driver_args(flags).tmpfs_size, flags
    big = parse_standalone_args(
        ["--spc=a", "--target-path=/x", "--max-call-recv-msg-size=20000000"]
    )
    assert big is not None and big.tmpfs_size >= 2 * 9 * (1 << 20)
