"""How the cluster demos tell their story (`make demo-cluster`, `make demo-sync`): timed step
headers, indented lines, Go peers from `make peers`, and waits that fail the demo by name."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from testbed.peers import is_built, peer_path

BEGUN = time.monotonic()


class DemoFailed(Exception):
    pass


def step(text: str) -> None:
    print(f"\n[{time.monotonic() - BEGUN:6.1f}s] ==> {text}", flush=True)


def say(text: str) -> None:
    print("    " + text.rstrip("\n").replace("\n", "\n    "), flush=True)


def peer(binary: str) -> Path:
    path = peer_path(binary)
    if not is_built(path):
        raise DemoFailed(f"peer {binary} missing at {path}: run `make peers` first")
    return path


def wait_for(what: str, cond: Callable[[], bool], timeout: float, every: float = 0.1) -> float:
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise DemoFailed(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - started


def kubectl(
    binary: Path, kubeconfig: Path, cache_dir: Path, *args: str, show: bool = True, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """kubectl as the reader would type it, its output shown (stdout, then stderr, where
    kubectl says e.g. "No resources found"); DemoFailed when it fails."""
    if show:
        say("$ kubectl " + " ".join(a if " " not in a else repr(a) for a in args))
    r = subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", f"--cache-dir={cache_dir}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = (r.stdout + r.stderr).rstrip() if r.returncode == 0 else r.stdout.rstrip()
    if show and out:
        say("  " + out.replace("\n", "\n  "))
    if r.returncode != 0:
        raise DemoFailed(f"kubectl {' '.join(args[:3])} failed: {r.stderr.strip()[-500:]}")
    return r
