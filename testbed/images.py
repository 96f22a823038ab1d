"""Container images without a registry or a daemon: one-layer `docker save` tarballs written
here from Debian's busybox-static, imported with `ctr -n k8s.io image import`.

- the sandbox image, tagged registry.k8s.io/pause:3.10 (containerd's sandbox_image): busybox
  sleeping forever (containerd stops sandboxes with SIGKILL);
- busybox:e2e for the test pods (every applet linked under /bin).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE = "registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE = "docker.io/library/busybox:e2e"


def _layer(busybox: Path) -> bytes:
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "mnt"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for name in sorted(set(applets) - {"busybox"}):
            info = tarfile.TarInfo(f"bin/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def docker_save(path: Path, tag: str, layer: bytes, entrypoint: list[str]) -> Path:
    """A `docker save` tarball of one image with one layer."""
    layer_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created_by": "testbed/images.py"}],
    }
    config_raw = json.dumps(config).encode()
    config_name = hashlib.sha256(config_raw).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]
    with tarfile.open(path, "w") as tar:
        for name, raw in (
            (f"{layer_id}/layer.tar", layer),
            (config_name, config_raw),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def build(out: Path, busybox: Path = BUSYBOX) -> list[Path]:
    layer = _layer(busybox)
    return [
        docker_save(out / "pause.tar", PAUSE, layer, ["/bin/sleep", "2147483647"]),
        docker_save(out / "busybox.tar", BUSYBOX_IMAGE, layer, ["/bin/sh"]),
    ]
