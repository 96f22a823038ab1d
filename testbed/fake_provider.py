"""A provider speaking v1alpha1.CSIDriverProvider whose answers the test chooses.

The SecretProviderClass parameter `fake.mode` picks the behaviour; in the default `echo` mode
it returns the files in `fake.files` (JSON {path: text}) plus `attributes.json`,
`secrets.json` and `permission` holding exactly what the driver sent, so a test reads back
from the mounted volume what the provider was given.

Run: python -m testbed.fake_provider unix:///path/to/fake.sock
(ProviderProcess.fake in testbed/provider.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

import grpc
from grpc import aio

from secrets_store_api import provider_pb2, provider_pb2_grpc


def _file(path: str, contents: bytes) -> provider_pb2.File:
    return provider_pb2.File(path=path, mode=420, contents=contents)


def _canned(
    mode: str, attrs: dict[str, str], versions: list[provider_pb2.ObjectVersion]
) -> provider_pb2.MountResponse | None:
    """The answer of a mode that does not echo, None for `echo`."""
    if mode == "error-code":
        return provider_pb2.MountResponse(error=provider_pb2.Error(code="AuthFailed"))
    if mode == "no-versions":
        return provider_pb2.MountResponse(files=[_file("a", b"x")])
    if mode == "abs-path":
        return provider_pb2.MountResponse(object_version=versions, files=[_file("/tmp/evil", b"x")])
    if mode == "dotdot":
        return provider_pb2.MountResponse(object_version=versions, files=[_file("../evil", b"x")])
    if mode == "oversize":
        size = int(attrs.get("fake.size", str(5 * 1024 * 1024)))
        return provider_pb2.MountResponse(
            object_version=versions, files=[_file("big", b"x" * size)]
        )
    return None


def _echo(
    request: provider_pb2.MountRequest,
    attrs: dict[str, str],
    versions: list[provider_pb2.ObjectVersion],
) -> provider_pb2.MountResponse:
    file_mode = int(attrs.get("fake.fileMode", "420"))
    files = {
        "attributes.json": request.attributes,
        "secrets.json": request.secrets,
        "permission": request.permission,
    }
    files.update(json.loads(attrs.get("fake.files", "{}")))
    if "fake.versions" in attrs:
        versions = [
            provider_pb2.ObjectVersion(id=k, version=v)
            for k, v in json.loads(attrs["fake.versions"]).items()
        ]
    return provider_pb2.MountResponse(
        object_version=versions,
        files=[
            provider_pb2.File(path=p, mode=file_mode, contents=c.encode()) for p, c in files.items()
        ],
    )


class FakeProvider(provider_pb2_grpc.CSIDriverProviderServicer):  # type: ignore[misc]
    async def Version(
        self, request: provider_pb2.VersionRequest, context: Any
    ) -> provider_pb2.VersionResponse:
        return provider_pb2.VersionResponse(
            version="v1alpha1", runtime_name="fake", runtime_version="0.0.1"
        )

    async def Mount(
        self, request: provider_pb2.MountRequest, context: Any
    ) -> provider_pb2.MountResponse:
        attrs: dict[str, str] = json.loads(request.attributes)
        mode = attrs.get("fake.mode", "echo")
        versions = [provider_pb2.ObjectVersion(id="secret/s1", version="v1")]
        if mode == "slow" or mode == "hang":
            await asyncio.sleep(float(attrs.get("fake.delay", "60")))
        canned = _canned(mode, attrs, versions)
        if canned is not None:
            return canned
        if mode == "grpc-error":
            await context.abort(grpc.StatusCode.UNKNOWN, "failed to mount objects, error: boom")
        return _echo(request, attrs, versions)


async def serve(endpoint: str) -> None:
    path = endpoint.removeprefix("unix://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = aio.server()
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(FakeProvider(), server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)
    os.unlink(path)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
