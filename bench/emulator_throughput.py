"""GET throughput of the Key Vault emulator over keep-alive TLS, server pinned to one core.

    tests/netns-run .venv/bin/python bench/emulator_throughput.py [--seconds 5] [--connections 8]

Starts an emulator (port 443, IMDS off) pinned to CPU 0, seeds vault kv-bench with one secret,
mints a token, and drives `GET https://kv-bench.vault.azure.net/secrets/bench` from one aiohttp
client process pinned to CPU 1 (keep-alive, N connections). Prints requests/s, latency
percentiles and the server's CPU use (utime+stime / wall): near 100 % means the figure is the
server's single-core limit, lower means the client was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.emulator import Emulator

SP = "0e000001-0000-4000-8000-0000000000e1"
URL = "https://kv-bench.vault.azure.net/secrets/bench?api-version=7.6"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    token: str, ca: Path, seconds: float, connections: int, depth: int
) -> tuple[int, list[float]]:
    """A lean HTTP/1.1 client on asyncio streams (aiohttp's client costs more CPU than the
    server, and only two cores are here): `depth` requests in flight per connection
    (1: plain keep-alive; more: HTTP/1.1 pipelining, to find the server's own limit)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    host = "kv-bench.vault.azure.net"
    request = (
        f"GET /secrets/bench?api-version=7.6 HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    count = 0
    deadline = 0.0

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request * depth)
        for _ in range(depth):
            await read_response(reader)

    async def read_response(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)

    async def worker(record: bool) -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection(host, 443, ssl=ctx)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                await one(reader, writer)
                if record:
                    latencies.append(time.perf_counter() - t0)
                    count += depth
        finally:
            writer.close()

    deadline = time.monotonic() + 1.0  # warm-up: TLS handshakes, the token cache
    await asyncio.gather(*(worker(False) for _ in range(connections)))
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(True) for _ in range(connections)))
    return count, latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument("--pipeline", type=int, default=1, help="requests in flight per connection")
    args = p.parse_args()
    state = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    emu = Emulator.start(state, latency_ms=args.latency_ms, imds_port=0)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(emu.proc.pid, {cpus[0]})
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[1]})
        emu.seed(
            {
                "tenants": [{"id": "0e000000-0000-4000-8000-0000000000e0"}],
                "identities": [{"name": "bench-sp", "clientId": SP, "clientSecret": "b"}],
                "vaults": [
                    {
                        "name": "kv-bench",
                        "roleAssignments": [
                            {"identity": "bench-sp", "role": "Key Vault Secrets User"}
                        ],
                        "secrets": [{"name": "bench", "value": "x" * 64}],
                    }
                ],
            }
        )
        token = emu.token(SP)
        before, t0 = cpu_seconds(emu.proc.pid), time.monotonic()
        count, lat = asyncio.run(
            drive(token, emu.ca_path, args.seconds, args.connections, args.pipeline)
        )
        elapsed = time.monotonic() - t0  # warm-up included, on both sides of the ratio
        used = cpu_seconds(emu.proc.pid) - before
        server_cpu = used / elapsed
        # CPU per request, warm-up requests counted at the measured rate: robust to a busy
        # machine, unlike req/s
        per_request = used / (count * elapsed / args.seconds)
        lat.sort()
        q = statistics.quantiles(lat, n=100)
        print(
            f"GET /secrets/bench over keep-alive TLS, {args.connections} connections x "
            f"{args.pipeline} in flight, "
            f"{args.seconds:.0f} s, latency {args.latency_ms} ms, server on 1 CPU:\n"
            f"  {count / args.seconds:,.0f} req/s; per round trip p50 {q[49] * 1000:.2f} ms, "
            f"p99 {q[98] * 1000:.2f} ms; server CPU {server_cpu * 100:.0f} % of one core\n"
            f"  server CPU per request {per_request * 1e6:.0f} us "
            f"(one core's capacity ~{1 / per_request:,.0f} req/s)"
        )
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
