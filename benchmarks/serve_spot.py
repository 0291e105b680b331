"""Spot replicas with on-demand fallback, in simulation (issue 15): what the chip-mix
optimizer saves by also running each chip on spot, and what reclaims cost in SLO
attainment, on the Azure LLM inference traces.

Setting as in ``serve_autoscale.py``: Llama-3.1-8B on the catalog's A10, A100-40GB,
A100-80GB and H100-SXM at their on-demand catalog prices, TTFT 2 s, TPOT 100 ms,
the traces' rates x ``--rate-scale``. The spot terms are a scenario, swept, not
measured (no interruption trace is among the shared data): the spot price at 40% of
on demand (Google quotes Spot VM discounts of 60-91%, so 0.4 is the least of them),
reclaims per spot replica-hour from rare to frequent, AWS's two-minute notice (and
GCP's 30 s in one row), and, in some rows, the chip's spot capacity gone for 15
minutes after each reclaim. On a reclaim the fleet starts an on-demand replica of the
chip at once, within the notice (`suanli.sim.serving.spot`).

Printed per trace: the on-demand optimizer, then each spot scenario: SLO attainment,
cost, the saving against the on-demand optimizer, reclaims, and the share of
device-hours on spot; beside SkyServe's published 43% average saving against
on-demand replicas (Mao et al., EuroSys 2025). Plot: saving and attainment against the
reclaim rate.

    python benchmarks/serve_spot.py [--rate-scale 8] [--out benchmarks/out]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from serve_autoscale import CHIPS, MODEL, TPOT_S, TTFT_S, setting  # the same setting
from suanli.sim.serving.fleet import ServeResult
from suanli.sim.serving.setup import run_policy
from suanli.sim.serving.spot import SpotTerms

PRICE_RATIO = 0.4
SKYSERVE_SAVING = 0.43
#: (reclaims per replica-hour, notice s, spot capacity gone after a reclaim s)
SCENARIOS = [
    (0.1, 120.0, 0.0),
    (0.5, 120.0, 0.0),
    (2.0, 120.0, 0.0),
    (0.5, 30.0, 0.0),
    (0.5, 120.0, 900.0),
    (2.0, 120.0, 900.0),
]
console = Console(width=150)


def main(argv: list[str] | None = None) -> int:
    got = setting(argv, __doc__ or "")
    if got is None:
        return 0
    args, kinds, traces = got
    terms: list[SpotTerms | None] = [None]
    terms += [SpotTerms(PRICE_RATIO, r, notice_s=n, unavailable_s=u) for r, n, u in SCENARIOS]
    results: dict[tuple[str, int], ServeResult] = {}
    with Progress(console=console) as bar:
        task = bar.add_task("simulating", total=len(traces) * len(terms))
        for name, trace in traces.items():
            for i, spot in enumerate(terms):
                _, results[(name, i)] = run_policy(
                    "optimizer", kinds, trace, ttft_slo_s=TTFT_S, tpot_slo_s=TPOT_S, spot=spot
                )
                bar.advance(task)
    report: dict = {"model": MODEL, "chips": CHIPS, "rate_scale": args.rate_scale}  # type: ignore[type-arg]
    for name in traces:
        base = results[(name, 0)]
        t = Table(
            title=f"{name}: the optimizer on demand only and with spot at {PRICE_RATIO:.0%} of "
            f"the on-demand price; SkyServe's average saving {SKYSERVE_SAVING:.0%}"
        )
        for col in (
            "spot",
            "reclaims/h",
            "notice s",
            "gone s",
            "SLO met",
            "TTFT p99 s",
            "cost $",
            "saving",
            "reclaims",
            "spot share",
        ):
            t.add_column(col, justify="right")
        rows = []
        for i, spot in enumerate(terms):
            r = results[(name, i)]
            saving = 1 - r.cost_usd / base.cost_usd
            share = r.spot_device_hours / r.device_hours if r.device_hours else 0.0
            t.add_row(
                "no" if spot is None else "yes",
                "-" if spot is None else f"{spot.reclaims_per_hour:g}",
                "-" if spot is None else f"{spot.notice_s:g}",
                "-" if spot is None else f"{spot.unavailable_s:g}",
                f"{r.slo_attainment:.2%}",
                f"{r.ttft_p99_s:.2f}",
                f"{r.cost_usd:.2f}",
                f"{saving:.0%}",
                str(r.reclaims),
                f"{share:.0%}",
            )
            rows.append(
                {"terms": None if spot is None else spot.__repr__(), "saving": saving} | r.to_dict()
            )
        console.print(t)
        report[name] = rows
    png = args.out / "serve_spot.png"
    _plot(results, terms, list(traces), png)
    console.print(f"plot: {png}")
    (args.out / "serve_spot.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


def _plot(
    results: dict[tuple[str, int], ServeResult],
    terms: list[SpotTerms | None],
    names: list[str],
    png: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        base = results[(name, 0)]
        for gone, style in ((0.0, "-o"), (900.0, "--s")):
            pts = [
                (s.reclaims_per_hour, results[(name, i)])
                for i, s in enumerate(terms)
                if s is not None and s.unavailable_s == gone and s.notice_s == 120.0
            ]
            x = [p for p, _ in pts]
            label = f"{name}, spot gone {gone:g} s after a reclaim"
            a.plot(x, [1 - r.cost_usd / base.cost_usd for _, r in pts], style, label=label)
            b.plot(x, [r.slo_attainment for _, r in pts], style, label=label)
        b.axhline(base.slo_attainment, color="grey", lw=0.8)
    a.axhline(SKYSERVE_SAVING, color="black", lw=0.8, ls=":", label="SkyServe, average")
    a.set(xscale="log", xlabel="reclaims per spot replica-hour", ylabel="saving vs on demand")
    b.set(xscale="log", xlabel="reclaims per spot replica-hour", ylabel="SLO attainment")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.suptitle(f"{MODEL}: the optimizer with spot at {PRICE_RATIO:.0%} of on demand")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
