"""Mount latency, ours vs the upstream Go provider v1.8.2, interleaved on one emulator.

    tests/netns-run .venv/bin/python -m bench [--rounds N] [--write docs/benchmarks.md]

For 1, 10 and 50 secrets per mount, with the emulator adding 20 ms to every answer (an
in-region Key Vault round trip) and with no added latency (CPU cost): p50/p99 of Mount for
each provider (one Mount of ours, then one of theirs, alternating), the ratios, and our RSS
after 1,000 mounts. Service-principal identity, as the upstream quick-start uses.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

from keyvault_emulator.tls import ensure_pki
from testbed.emulator import TENANT_ID, Emulator
from testbed.mount_attributes import attributes, objects_yaml
from testbed.peers import peer_path
from testbed.provider import ProviderProcess, ours, upstream

VAULT = "kv-bench"
SP_ID, SP_SECRET = "0d000001-0000-4000-8000-0000000000b1", "bench-secret"
SIZES = (1, 10, 50)
SECRETS = {"clientid": SP_ID, "clientsecret": SP_SECRET}


def trust(state: Path) -> None:
    pki = ensure_pki(state)
    bundle = state / "trust.pem"
    system = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    parts = [pki.ca_path.read_text()]
    if system and Path(system).is_file():
        parts.append(Path(system).read_text())
    bundle.write_text("\n".join(parts))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)


def seed(emu: Emulator) -> None:
    emu.seed(
        {
            "identities": [
                {
                    "name": "bench-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_ID,
                    "clientSecret": SP_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [{"identity": "bench-sp", "role": "Key Vault Secrets User"}],
                    "secrets": [
                        {"name": f"bench-{i:02d}", "value": f"value-{i:02d}-" + "x" * 40}
                        for i in range(max(SIZES))
                    ],
                }
            ],
        }
    )


def request(n: int) -> dict[str, str]:
    objs = [{"objectName": f"bench-{i:02d}", "objectType": "secret"} for i in range(n)]
    return attributes(vault=VAULT, tenant=TENANT_ID, objects=objects_yaml(*objs))


def timed(proc: ProviderProcess, attrib: dict[str, str]) -> float:
    start = time.perf_counter()
    response = proc.mount(attrib, SECRETS)
    elapsed = time.perf_counter() - start
    assert response.files, "empty mount"
    return elapsed * 1000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(rounds: int, rss_mounts: int, latencies: tuple[int, ...] = (20, 0)) -> str:
    go_binary = peer_path("azure-provider")
    if not go_binary.is_file():
        sys.exit(f"upstream provider missing at {go_binary}: run `make peers`")
    state = Path(tempfile.mkdtemp(prefix="bench-"))
    trust(state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    rows: list[str] = []
    try:
        seed(emu)
        mine = ours(str(state / "ours.sock"), healthz_port=18989, prometheus_port=18898)
        mine.start()
        theirs = upstream(go_binary, str(state / "go.sock"))
        theirs.start()
        try:
            for latency in latencies:
                emu.set_latency(latency)
                for n in SIZES:
                    attrib = request(n)
                    for _ in range(2):  # warm-up: connections, and our token cache
                        timed(mine, attrib)
                        timed(theirs, attrib)
                    a: list[float] = []
                    b: list[float] = []
                    for _ in range(rounds):
                        a.append(timed(mine, attrib))
                        b.append(timed(theirs, attrib))
                    a50, a99, b50, b99 = pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99)
                    rows.append(
                        f"| {latency} ms | {n} | {a50:.1f} | {a99:.1f} | {b50:.1f} | {b99:.1f} "
                        f"| {a50 / b50:.2f}x | {a99 / b99:.2f}x |"
                    )
                    print(rows[-1], flush=True)
            emu.set_latency(0)
            attrib = request(10)
            rss_before = mine.rss_kib()
            for _ in range(rss_mounts):
                mine.mount(attrib, SECRETS)
            rss_after = mine.rss_kib()
            go_rss = theirs.rss_kib()
        finally:
            mine.stop()
            theirs.stop()
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)
    header = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}, {rounds} interleaved "
        "rounds per row, service principal, secrets of ~50 bytes; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other work on the machine skews the no-latency rows).",
        "",
        "| emulator latency | objects | ours p50 ms | ours p99 ms | Go p50 ms | Go p99 ms "
        "| p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"RSS of our provider: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB "
        f"after {rss_mounts} mounts of 10 objects (Go provider at the end of the run: "
        f"{go_rss / 1024:.1f} MiB).",
    ]
    return "\n".join(header)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rss-mounts", type=int, default=1000)
    parser.add_argument("--latency", type=int, action="append", help="emulator ms (repeatable)")
    parser.add_argument("--write", help="replace the results section of this markdown file")
    args = parser.parse_args()
    result = run(args.rounds, args.rss_mounts, tuple(args.latency or (20, 0)))
    print(result)
    if args.write:
        path = Path(args.write)
        text = path.read_text() if path.exists() else ""
        marker = "<!-- results -->"
        head, _, rest = text.partition(marker)
        # keep the sections after ours (each starts with its own `<!-- name -->` marker)
        tail = rest[rest.index("<!-- ") :] if "<!-- " in rest else ""
        path.write_text(head.rstrip() + f"\n\n{marker}\n{result}\n\n{tail}".rstrip() + "\n")


if __name__ == "__main__":
    main()
