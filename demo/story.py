"""How the cluster demos tell their story (`make demo-cluster`, `make demo-sync`): timed step
headers, indented lines, Go peers from `make peers`, and waits that fail the demo by name."""

from __future__ import annotations

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
