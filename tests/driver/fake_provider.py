"""A provider speaking v1alpha1.CSIDriverProvider whose answers the test chooses.

The SecretProviderClass parameter `fake.mode` picks the behaviour; in the default `echo` mode
it returns the files in `fake.files` (JSON {path: text}) plus `attributes.json`,
`secrets.json` and `permission` holding exactly what the driver sent, so a test reads back
from the mounted volume what the provider was given.

Run: python -m tests.driver.fake_provider unix:///path/to/fake.sock
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

import grpc
from grpc import aio

from secrets_store_api import provider_pb2, provider_pb2_grpc


class FakeProvider(provider_pb2_grpc.CSIDriverProviderServicer):
    async def Version(self, request, context):  # type: ignore[no-untyped-def]
        return provider_pb2.VersionResponse(
            version="v1alpha1", runtime_name="fake", runtime_version="0.0.1"
        )

    async def Mount(self, request, context):  # type: ignore[no-untyped-def]
        attrs = json.loads(request.attributes)
        mode = attrs.get("fake.mode", "echo")
        versions = [provider_pb2.ObjectVersion(id="secret/s1", version="v1")]
        file_mode = int(attrs.get("fake.fileMode", "420"))
        if mode == "slow" or mode == "hang":
            await asyncio.sleep(float(attrs.get("fake.delay", "60")))
        if mode == "error-code":
            return provider_pb2.MountResponse(error=provider_pb2.Error(code="AuthFailed"))
        if mode == "grpc-error":
            await context.abort(grpc.StatusCode.UNKNOWN, "failed to mount objects, error: boom")
        if mode == "no-versions":
            return provider_pb2.MountResponse(
                files=[provider_pb2.File(path="a", mode=420, contents=b"x")]
            )
        if mode == "abs-path":
            return provider_pb2.MountResponse(
                object_version=versions,
                files=[provider_pb2.File(path="/tmp/evil", mode=420, contents=b"x")],
            )
        if mode == "dotdot":
            return provider_pb2.MountResponse(
                object_version=versions,
                files=[provider_pb2.File(path="../evil", mode=420, contents=b"x")],
            )
        if mode == "oversize":
            size = int(attrs.get("fake.size", str(5 * 1024 * 1024)))
            return provider_pb2.MountResponse(
                object_version=versions,
                files=[provider_pb2.File(path="big", mode=420, contents=b"x" * size)],
            )
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
                provider_pb2.File(path=p, mode=file_mode, contents=c.encode())
                for p, c in files.items()
            ],
        )


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
