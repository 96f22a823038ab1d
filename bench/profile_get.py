"""Where a Mount's CPU goes: a CPU-time profile of our provider, in process, against the emulator.

    tests/netns-run .venv/bin/python -m bench.profile_get [--objects 50] [--mounts 200] [--top 25]

Profiles `Provider.mount` of N secrets (service principal, no added latency) with
`cProfile.Profile(time.process_time)`: wall-time profiles here are distorted by the emulator
and other processes sharing the cores. Also prints CPU ms per Mount and per GET, measured
without the profiler.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.__main__ import SECRETS, VAULT, request, seed, trust
from testbed.emulator import Emulator

if TYPE_CHECKING:
    # imported by _profile, after trust(): aiohttp builds its default SSL context on import
    from provider_azure.provider import Provider


async def _mounts(provider: Provider, attrib: str, secrets: str, count: int) -> None:
    for _ in range(count):
        result = await provider.mount(attrib, secrets, "420")
        assert result.files


GROUPS = (
    ("provider_azure/", "provider_azure (ours)"),
    ("azure/keyvault/", "azure-keyvault-* (operations, models, challenge auth)"),
    ("azure/core/pipeline/transport", "azure-core aiohttp transport"),
    ("azure/core/rest", "azure-core requests and responses"),
    ("azure/core/", "azure-core pipeline and policies"),
    ("aiohttp/", "aiohttp"),
    ("urllib/", "urllib.parse"),
    ("asyncio/", "asyncio"),
    ("prometheus_client/", "prometheus-client"),
)


def grouped(stats: pstats.Stats, mounts: int) -> str:
    """Own CPU time by package, in ms per Mount (profiled, so inflated, but in proportion)."""
    totals: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tottime, _, _) in raw.items():
        name = next(
            (label for key, label in GROUPS if key in filename), "other (builtins, json, ...)"
        )
        totals[name] = totals.get(name, 0.0) + tottime
    whole = sum(totals.values())
    lines = ["| own CPU in | share | profiled ms per Mount |", "|---|---|---|"]
    for name, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {value / whole:.0%} | {value * 1000 / mounts:.1f} |")
    return "\n".join(lines)


async def _profile(objects: int, mounts: int, top: int, dump: str | None = None) -> str:
    from provider_azure import clouds
    from provider_azure.auth import ClientCache
    from provider_azure.fetch import ContentOptions
    from provider_azure.metrics import Metrics
    from provider_azure.provider import Provider
    from provider_azure.ratelimit import TokenBucket

    clients = ClientCache()
    # Key Vault's budget (a bucket of 2,000 GETs refilled at 200/s) would pace this loop after
    # its first 40 Mounts and put the lock-and-sleep path in the profile: not what one Mount
    # costs. An unbounded bucket for the bench's vault keeps every GET on the free path.
    unbounded = TokenBucket(capacity=1e12, rate=1e12)
    clients._limiters.put(f"https://{VAULT}.vault.azure.net/", unbounded)
    provider = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), clients)
    attrib, secrets = json.dumps(request(objects)), json.dumps(SECRETS)
    try:
        await _mounts(provider, attrib, secrets, 5)  # warm: token, connections, caches
        assert all(clients._limiters.get(url) is unbounded for url in clients._limiters), "key"
        start = time.process_time()
        await _mounts(provider, attrib, secrets, mounts)
        cpu_ms = (time.process_time() - start) * 1000 / mounts
        if top < 0:  # --top -1: the CPU figure only
            per_get = cpu_ms / objects
            return f"CPU per Mount of {objects} secrets: {cpu_ms:.2f} ms ({per_get:.3f} ms per GET)"
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        await _mounts(provider, attrib, secrets, mounts)
        profiler.disable()
    finally:
        await provider.close()
    if dump:
        profiler.dump_stats(dump)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(grouped(stats, mounts) + "\n\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return (
        f"CPU per Mount of {objects} secrets: {cpu_ms:.2f} ms ({cpu_ms / objects:.3f} ms per GET), "
        f"unprofiled, {mounts} Mounts\n" + out.getvalue()
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_get")
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--mounts", type=int, default=200)
    parser.add_argument("--top", type=int, default=25, help="-1: no profile, CPU figure only")
    parser.add_argument("--dump", help="also write the raw profile here (pstats format)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the provider")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    trust(state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    try:
        seed(emu)
        coro = _profile(args.objects, args.mounts, args.top, args.dump)
        if args.uvloop:
            import uvloop

            print(uvloop.run(coro))
        else:
            print(asyncio.run(coro))
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
