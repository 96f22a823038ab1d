"""SVG plots of one `python -m bench` run (matplotlib: the `bench` extra, never a runtime need).

Each function takes the series the run measured and writes one file; `write_all` writes them
all and names them for the markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

COLOURS = {"ours": "#1f77b4", "Go": "#d62728"}
LatencyRow = tuple[int, int, float, float, float, float]  # latency, objects, a50, a99, b50, b99


class Storm(Protocol):
    wall_seconds: float
    done_at: list[float]


def latency_by_objects(path: Path, rows: Sequence[LatencyRow]) -> None:
    latencies = sorted({r[0] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(latencies), figsize=(5 * len(latencies), 3.8), squeeze=False)
    for ax, latency in zip(axes[0], latencies, strict=True):
        mine = [r for r in rows if r[0] == latency]
        objects = [r[1] for r in mine]
        for name, p50, p99 in (("ours", 2, 3), ("Go", 4, 5)):
            colour = COLOURS[name]
            ax.plot(objects, [r[p50] for r in mine], "o-", color=colour, label=f"{name} p50")
            ax.plot(objects, [r[p99] for r in mine], "x--", color=colour, label=f"{name} p99")
        ax.set_title(f"Mount latency, emulator +{latency} ms")
        ax.set_xlabel("secrets per Mount")
        ax.set_ylabel("ms")
        ax.set_xticks(objects)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def storm_completion(path: Path, storms: Mapping[str, Sequence[Storm]], limits: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, results in storms.items():
        for i, result in enumerate(results):
            xs = [0.0, *result.done_at]
            ys = list(range(len(xs)))
            label = f"{name} (storm {i + 1}: {result.wall_seconds:.1f} s)"
            style = "-" if i == 0 else ":"
            colour = COLOURS.get(name, "#7f7f7f")
            ax.step(xs, ys, style, where="post", color=colour, label=label)
    ax.set_title(f"Mount storm under {limits}: Mounts done over time")
    ax.set_xlabel("seconds from the first Mount")
    ax.set_ylabel("pods mounted")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def rss_over_mounts(path: Path, rss: Mapping[str, Sequence[tuple[int, float]]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, series in rss.items():
        ax.plot(
            [m for m, _ in series], [r for _, r in series], "o-", color=COLOURS[name], label=name
        )
    ax.set_title("Provider RSS over Mounts of 10 secrets")
    ax.set_xlabel("Mounts")
    ax.set_ylabel("RSS MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def write_all(
    directory: Path,
    latency: Sequence[LatencyRow],
    storms: Mapping[str, Sequence[Storm]],
    rss: Mapping[str, Sequence[tuple[int, float]]],
    limits: str = "cpu 50m / memory 100Mi",
) -> list[tuple[str, str]]:
    """(file name, title) of each plot written into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [("bench-latency.svg", "Mount latency by object count, ours and Go")]
    latency_by_objects(directory / written[0][0], latency)
    if storms:
        written.append(("bench-storm.svg", "Mount storm completion over time, ours and Go"))
        storm_completion(directory / written[-1][0], storms, limits)
    written.append(("bench-rss.svg", "RSS over Mounts, ours and Go"))
    rss_over_mounts(directory / written[-1][0], rss)
    return written
