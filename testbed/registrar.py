"""A stand-in for node-driver-registrar: serves kubelet's plugin registration API
(pluginregistration v1: GetInfo, NotifyRegistrationStatus) on
`<kubelet root>/plugins_registry/<driver>-reg.sock`, pointing kubelet at the driver's socket.

The upstream registrar is not on the Go module proxy here; the API is two calls. Stubs are
generated from testbed/pluginregistration.proto at test time (grpc_tools), into a temp dir.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent


def _stubs(out: Path) -> tuple[ModuleType, ModuleType]:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "pluginregistration.proto",
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("pluginregistration_pb2")
        pb2_grpc = importlib.import_module("pluginregistration_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


class Registrar:
    def __init__(self, kubelet_root: Path, driver: str, csi_socket: Path, stub_dir: Path) -> None:
        self.socket = kubelet_root / "plugins_registry" / f"{driver}-reg.sock"
        self.driver = driver
        self.csi_socket = csi_socket
        self.stub_dir = stub_dir
        self.registered = threading.Event()
        self.errors: list[str] = []
        self.server: grpc.Server | None = None

    def start(self) -> None:
        pb2, pb2_grpc = _stubs(self.stub_dir)
        outer = self

        class Servicer(pb2_grpc.RegistrationServicer):  # type: ignore[misc,name-defined]
            def GetInfo(self, request: Any, context: Any) -> Any:
                return pb2.PluginInfo(
                    type="CSIPlugin",
                    name=outer.driver,
                    endpoint=str(outer.csi_socket),
                    supported_versions=["1.0.0"],
                )

            def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
                if request.plugin_registered:
                    outer.registered.set()
                else:
                    outer.errors.append(request.error)
                return pb2.RegistrationStatusResponse()

        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb2_grpc.add_RegistrationServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0).wait()
            self.server = None
        self.socket.unlink(missing_ok=True)
