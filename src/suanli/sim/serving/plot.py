"""Plots of serving runs: load against the replicas (by kind) that met it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from suanli.sim.serving.fleet import ServeResult


def plot_runs(results: Sequence[ServeResult], path: str | Path, title: str = "") -> None:
    """One panel per run: arrivals/s (line, left axis) and replicas asked for, stacked by
    kind (right axis), over the trace's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.3 * n + 0.6), sharex=True, squeeze=False)
    kinds = sorted({k for r in results for _, _, c, _, _ in r.timeline for k in c})
    cmap = plt.get_cmap("tab10")
    colours = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    for ax, r in zip(axes[:, 0], results, strict=True):
        t = [p[0] / 60 for p in r.timeline]
        ax.plot(t, [p[1] for p in r.timeline], color="0.55", lw=0.6, label="arrivals/s")
        ax.set_ylabel("arrivals/s")
        ax2 = ax.twinx()
        bottom = [0.0] * len(t)
        for k in kinds:
            ys = [float(p[2].get(k, 0)) for p in r.timeline]
            if any(ys):
                top = [b + y for b, y in zip(bottom, ys, strict=True)]
                ax2.fill_between(t, bottom, top, step="post", alpha=0.45, color=colours[k], label=k)
                bottom = top
        ax2.set_ylabel("replicas")
        ax2.set_ylim(bottom=0)
        ax.set_title(
            f"{r.autoscaler}: SLO {r.slo_attainment:.2%}, {r.device_hours:.2f} device-h, "
            f"${r.cost_usd:.2f}, max {r.max_replicas} replicas",
            fontsize=9,
        )
        ax2.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("minutes")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
