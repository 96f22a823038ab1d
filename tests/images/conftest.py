"""The container images `make images` builds (daemonset/images/build.sh), read and run with
buildah: `buildah from` + `buildah run --isolation chroot`, which shares the test namespace's
network, so a daemon inside an image reaches the emulator as the host processes do.

Under CI=true a missing image (or buildah) fails the test; elsewhere it skips, as
testbed/peers.py does for the Go peers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.peers import missing

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = ROOT / "daemonset" / "images"
PREFIX = os.environ.get("IMAGE_PREFIX", "secrets-store-csi-python")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENV = {
    **os.environ,
    "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs"),
    "BUILDAH_ISOLATION": "chroot",
}
# image name -> (console script of its ENTRYPOINT, its package)
IMAGES = {
    "driver": ("secrets-store-csi-driver", "csi_driver"),
    "provider-azure": ("secrets-store-provider-azure", "provider_azure"),
}


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: exit {done.returncode}: {done.stderr}")
    return done.stdout


@dataclass
class Image:
    name: str
    ref: str
    inspect: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.inspect["OCIv1"]["config"]
        return config

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    @contextmanager
    def container(self) -> Iterator[Container]:
        ctr = buildah(
            "from", "--quiet", "--pull=never", "--name", f"images-test-{uuid.uuid4().hex[:8]}",
            self.ref,
        ).strip()  # fmt: skip
        try:
            yield Container(ctr)
        finally:
            subprocess.run(["buildah", "rm", ctr], env=ENV, capture_output=True, timeout=60)


@dataclass
class Container:
    id: str

    def argv(
        self,
        command: list[str],
        volumes: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        user: str | None = None,
        caps: tuple[str, ...] = (),
    ) -> list[str]:
        """`buildah run` of command as the image's USER (or user), with bind mounts
        (host:ctr[:ro])."""
        args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        if user is not None:
            args += ["--user", user]
        for cap in caps:
            args += ["--cap-add", cap]
        for volume in volumes:
            args += ["--volume", volume]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.id, "--", *command]

    def run(self, command: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, **kw), env=ENV, capture_output=True, text=True, timeout=60
        )

    @contextmanager
    def rootfs(self) -> Iterator[Path]:
        path = Path(buildah("mount", self.id).strip())
        try:
            yield path
        finally:
            subprocess.run(["buildah", "umount", self.id], env=ENV, capture_output=True)


def find_image(name: str) -> Image:
    if shutil.which("buildah") is None:
        missing("buildah is not installed: run `make deb` then `make images`")
    ref = f"localhost/{PREFIX}/{name}:{VERSION}"
    done = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        missing(f"image {ref} is not built: run `make images` ({done.stderr.strip()})")
    return Image(name, ref, json.loads(done.stdout))


@pytest.fixture(scope="session", params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> Image:
    return find_image(request.param)


@pytest.fixture(scope="session")
def driver_image() -> Image:
    return find_image("driver")


@pytest.fixture(scope="session")
def provider_image() -> Image:
    return find_image("provider-azure")
