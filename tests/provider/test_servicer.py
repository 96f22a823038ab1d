"""The gRPC boundary over a real unix socket: codes, upstream's message prefix, Version, health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from provider_azure import clouds
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, File, MountResult, ObjectVersion
from provider_azure.metrics import Metrics
from provider_azure.provider import Provider
from provider_azure.server import ProviderServicer, check_health, health_handler
from secrets_store_api import provider_pb2, provider_pb2_grpc
from testbed.mount_attributes import SP_SECRETS, attributes


class ScriptedProvider(Provider):
    """Parameters parsed for real; the fetch answers what the test scripted."""

    def __init__(self) -> None:
        super().__init__(ContentOptions(), clouds.PUBLIC, Metrics())
        self.answer: MountResult | ProviderError | Exception = MountResult((), ())

    async def mount(
        self, attributes: str, secrets: str, permission: str, log_fields: object = None
    ) -> MountResult:
        from provider_azure.parameters import parse_mount

        parse_mount(attributes, secrets, permission)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[provider_pb2_grpc.CSIDriverProviderStub, ScriptedProvider, str]]:
    provider = ScriptedProvider()
    server = grpc.aio.server()
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(
        ProviderServicer(provider, Metrics()), server
    )
    server.add_generic_rpc_handlers((health_handler(),))
    sock = str(tmp_path / "azure.sock")
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        yield provider_pb2_grpc.CSIDriverProviderStub(channel), provider, sock
    await server.stop(None)


def request(
    attrib: dict[str, str] | str, secrets: str = json.dumps(SP_SECRETS)
) -> provider_pb2.MountRequest:
    return provider_pb2.MountRequest(
        attributes=attrib if isinstance(attrib, str) else json.dumps(attrib),
        secrets=secrets,
        target_path="/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount",
        permission="420",
    )


async def test_version_and_health(served) -> None:  # type: ignore[no-untyped-def]
    stub, _, sock = served
    v = await stub.Version(provider_pb2.VersionRequest(version="v1alpha1"))
    assert (v.version, v.runtime_name) == ("v1alpha1", "secrets-store-csi-driver-provider-azure")
    await check_health(sock, 2.0)


async def test_success_maps_files_and_versions(served) -> None:  # type: ignore[no-untyped-def]
    stub, provider, _ = served
    provider.answer = MountResult((File("a", 0o600, b"x"),), (ObjectVersion("secret/a", "v1"),))
    resp = await stub.Mount(request(attributes()))
    assert [(f.path, f.mode, f.contents) for f in resp.files] == [("a", 0o600, b"x")]
    assert [(o.id, o.version) for o in resp.object_version] == [("secret/a", "v1")]


async def test_bad_parameter_is_invalid_argument_with_upstream_prefix(served) -> None:  # type: ignore[no-untyped-def]
    stub, _, _ = served
    attrib = attributes()
    del attrib["keyvaultName"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Mount(request(attrib))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "failed to mount objects, error: keyvaultName is not provided"


async def test_unmarshal_errors_keep_upstream_text(served) -> None:  # type: ignore[no-untyped-def]
    stub, _, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Mount(request("{nope"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("failed to unmarshal attributes")


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (Kind.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (Kind.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (Kind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (Kind.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED),
        (Kind.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_domain_kinds_map_to_codes(served, kind: Kind, code: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    stub, provider, _ = served
    provider.answer = ProviderError(kind, "boom")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Mount(request(attributes()))
    assert (
        info.value.code() is code and info.value.details() == "failed to mount objects, error: boom"
    )


async def test_unexpected_error_is_internal_without_details(served) -> None:  # type: ignore[no-untyped-def]
    stub, provider, _ = served
    provider.answer = RuntimeError("secret-ish detail")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Mount(request(attributes()))
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "secret-ish" not in info.value.details()


async def test_version_answers_while_mount_waits_for_the_backend(tmp_path: Path) -> None:
    """The daemon serves its socket before the SDKs load: Version and health answer at once,
    a Mount waits for the provider and then succeeds."""
    import asyncio

    loading: asyncio.Future[tuple[Provider, Metrics]] = asyncio.get_running_loop().create_future()
    server = grpc.aio.server()
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(
        ProviderServicer(loading=loading), server
    )
    server.add_generic_rpc_handlers((health_handler(),))
    sock = str(tmp_path / "azure.sock")
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = provider_pb2_grpc.CSIDriverProviderStub(channel)
            await stub.Version(provider_pb2.VersionRequest(version="v1alpha1"), timeout=2)
            await check_health(sock, 2.0)
            mount = asyncio.ensure_future(stub.Mount(request(attributes()), timeout=10))
            await asyncio.sleep(0.3)
            assert not mount.done(), "Mount answered before the provider was loaded"
            provider = ScriptedProvider()
            provider.answer = MountResult((File("a", 0o644, b"x"),), ())
            loading.set_result((provider, Metrics()))
            resp = await mount
            assert [f.path for f in resp.files] == ["a"]
    finally:
        await server.stop(None)
