"""PNG plots (matplotlib Agg): WER vs latency, WER vs parameters (Pareto front marked), and
parameters per component for each distinct model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better for both),
    sorted by x: the entries worth shipping for some latency or size budget."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _scatter(path: Path, names: list[str], xs: list[float], ys: list[float], xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    for i, (name, x, y) in enumerate(zip(names, xs, ys, strict=True)):
        # staggered offsets: entries with near-equal figures would print their names on top of each other
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 + 10 * (i % 3)), fontsize=7)
    if len(ys) > 1 and max(ys) > 5 * max(sorted(ys)[len(ys) // 2], 1):
        ax.set_yscale("symlog", linthresh=10)  # one broken entry (e.g. WER 600 %) must not flatten the rest
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="tab:red", zorder=2, label="Pareto front")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=90, facecolors="none", edgecolors="tab:red", zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER % (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _components(path: Path, models: dict[str, dict[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    comps = sorted({c for by in models.values() for c in by})
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(comps) * max(1, len(models) / 2) + 1.5), dpi=120)
    height = 0.8 / len(models)
    y = np.arange(len(comps))
    for k, (name, by) in enumerate(models.items()):
        ax.barh(y + k * height, [by.get(c, 0) / 1e6 for c in comps], height, label=name)
    ax.set_yticks(y + height * (len(models) - 1) / 2, comps)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.set_title("Parameters per component")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(folder: Path, report: dict[str, Any]) -> list[str]:
    """Write the plots that have data; returns their file names."""
    ok = [e for e in report["entries"] if e["status"] == "ok"]
    written = []
    scored = [e for e in ok if "wer" in e["accuracy"]]
    timed = [e for e in scored if e["timing"].get("seconds_per_clip")]
    if timed:
        _scatter(folder / "wer_vs_latency.png", [e["id"] for e in timed],
                 [e["timing"]["seconds_per_clip"]["median"] for e in timed], [100 * e["accuracy"]["wer"] for e in timed],
                 "seconds per clip (median, end to end)", f"WER vs latency ({report['dataset']['name']})")
        written.append("wer_vs_latency.png")
    if scored:
        _scatter(folder / "wer_vs_params.png", [e["id"] for e in scored],
                 [(e["static"].get("nonzero") or e["static"]["params"]) / 1e6 for e in scored],
                 [100 * e["accuracy"]["wer"] for e in scored], "non-zero parameters (millions)",
                 f"WER vs parameters ({report['dataset']['name']})")
        written.append("wer_vs_params.png")
    models: dict[str, dict[str, int]] = {}
    for e in report["entries"]:
        by = e["static"].get("params_by_component")
        if by and by not in models.values():
            models[e["label"]] = by
    if models:
        _components(folder / "params_by_component.png", models)
        written.append("params_by_component.png")
    return written
