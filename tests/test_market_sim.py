"""The market simulator on a slice of the real inventory and traces.

Every check reads what the run did (per-job bills, per-provider takings, prices) and
holds it against a rule the market must keep, so a wrong simulator cannot pass by
producing plausible totals.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from suanli.cli.simulate_cmd import simulate_app
from suanli.market.engine import Ask, Bid, clear_spot
from suanli.sim.market import Comparison, MarketParams, MarketResult, compare
from suanli.sim.market_demand import SIA_TRAINING, load_inventory, read_sia_jobs
from suanli.sim.market_sources import (
    AZURE_SERVICES,
    build_demand,
    read_azure_windows,
    serving_plan,
)

# a twentieth of the nodes (every 20th: 214 nodes, ~520 devices, five types), six
# hours, demand above capacity so that spot is contested and leases are reclaimed
SLICE = MarketParams(horizon_h=6.0, load=1.4, node_share=0.05, seed=3)


@pytest.fixture(scope="module")
def run(shared_dir: Path) -> Comparison:
    return compare(shared_dir / "data", SLICE)


def both(c: Comparison) -> tuple[MarketResult, MarketResult]:
    return c.market, c.baseline


def test_the_slice_is_contested(run: Comparison) -> None:
    # the checks below mean something only if spot was sold, reclaimed and priced up
    m = run.market
    assert run.inventory.nodes == 214 and len(run.inventory.types) == 5  # no A800 node
    assert sum(j.spec.spot for j in m.jobs) > 100
    assert sum(j.interruptions for j in m.jobs) > 0
    floors = {t: p * SLICE.floor_share for t, p in run.inventory.list_price_micro.items()}
    assert any(v is not None and v > floors[t] for t, s in m.price_micro.items() for v in s)


def test_money_is_conserved_to_the_micro_dollar(run: Comparison) -> None:
    assert SLICE.sia and SLICE.serving  # with Sia's jobs and Azure's services in the book
    for r in both(run):
        paying = {j.spec.source for j in r.jobs if j.paid_micro > 0}
        assert {"sia-philly", "sia-saturn", "azure-conv", "azure-code"} <= paying
        paid = sum(j.paid_micro for j in r.jobs)
        assert paid == r.user_cost_micro > 0
        assert paid == sum(r.provider_revenue_micro.values()) + r.platform_fee_micro
        # the fee is the platform's share of each line, rounded once per line
        lines = sum(j.lines for j in r.jobs)
        assert abs(r.platform_fee_micro - paid * SLICE.fee_share) <= lines


NEW_SOURCES = ("sia-philly", "sia-saturn", "azure-conv", "azure-code")


def test_each_new_source_gives_jobs_with_gpus_and_durations(run: Comparison) -> None:
    sources = run.demand["sources"]
    for src in NEW_SOURCES:
        mine = [j.spec for j in run.market.jobs if j.spec.source == src]
        assert mine and sources[src]["jobs"] == len(mine), src
        assert all(s.units > 0 and s.work_s > 0 for s in mine), src
    assert sources["sia-philly"]["trace_jobs"] == sources["sia-saturn"]["trace_jobs"] == 160
    assert {"openb", "gavel-philly"} <= set(sources)
    assert run.demand["jobs"] + run.demand["serving_jobs"] == len(run.market.jobs)


def test_sia_durations_are_samples_over_v100_throughput(shared_dir: Path) -> None:
    jobs = read_sia_jobs(shared_dir / "data")
    assert len(jobs) == 320 and all(j.units > 0 and j.work_s > 0 for j in jobs)
    # the Philly workload's first job: cifar10 on 6 replicas; Sia's single-V100 peak is
    # 4,738.18 samples/s, and it trains 100 epochs of CIFAR-10's 50,000 samples
    epochs, size, _ = SIA_TRAINING["cifar10"]
    assert jobs[0].units == 6
    assert jobs[0].work_s == pytest.approx(epochs * size / (4738.18 * 6))


def test_azure_windows_keep_every_request(shared_dir: Path) -> None:
    path = shared_dir / "data" / AZURE_SERVICES["azure-conv"]
    hour = read_azure_windows(path, 3600)
    assert len(hour) == 1 and hour[0].requests == 19_366
    assert 5 < hour[0].rate < 6 and hour[0].input_len > hour[0].output_len > 0
    quarters = read_azure_windows(path, 900)
    assert len(quarters) == 4 and sum(w.requests for w in quarters) == 19_366
    assert sum(w.span_s for w in quarters) == pytest.approx(hour[0].span_s)


def test_serving_orders_are_on_demand_at_list_and_never_reclaimed(run: Comparison) -> None:
    price = run.inventory.list_price_micro
    for r in both(run):
        serving = [j for j in r.jobs if j.spec.source.startswith("azure-")]
        assert len(serving) == 2 * SLICE.horizon_h  # one order per service per hour window
        for j in serving:
            assert not j.spec.spot and j.interruptions == 0 and j.lost_device_s == 0
            assert j.spec.max_price_micro == price[j.spec.accelerator]
            assert j.spec.work_s == 3600 and j.spec.arrival_s % 3600 == 0
            if j.device_s:
                assert j.top_price_micro == price[j.spec.accelerator]
        assert sum(j.paid_micro for j in serving) > 0  # billed, so conservation covers them


def test_serving_devices_hold_the_windows_unrounded_rate(run: Comparison, shared_dir: Path) -> None:
    # the order's devices of its type serve the trace's own rate and lengths within the SLOs
    # (the plan was made on them rounded up), and no undisclosed chip is ever ordered
    for src, name in AZURE_SERVICES.items():
        (w,) = read_azure_windows(shared_dir / "data" / name, 3600)
        order = next(j.spec for j in run.market.jobs if j.spec.source == src)
        assert not order.accelerator.startswith("GPU-series")
        need = serving_plan(
            SLICE.serve_model,
            order.accelerator,
            order.units,
            w.rate,
            round(w.input_len),
            round(w.output_len),
            SLICE.serve_ttft_s,
            SLICE.serve_tpot_s,
        )
        assert need is not None and need[0] <= order.units


def test_sources_turn_off(shared_dir: Path) -> None:
    params = MarketParams(horizon_h=2.0, node_share=0.05, sia=False, serving=False)
    inv = load_inventory(shared_dir / "data", node_share=0.05)
    specs, info = build_demand(shared_dir / "data", inv, params)
    assert set(info["sources"]) == {"openb", "gavel-philly"} and info["serving_jobs"] == 0
    assert {s.source for s in specs} <= {"openb", "gavel-philly"}
    assert not any("Sia" in n or "serving" in n for n in info["notes"])


def test_no_spot_job_pays_above_its_max(run: Comparison) -> None:
    spot = [j for j in run.market.jobs if j.spec.spot and j.device_s > 0]
    assert spot
    for j in spot:
        assert j.top_price_micro <= j.spec.max_price_micro
        # and its bill: at most its maximum for every device-second, up to rounding per line
        ceiling = Fraction(j.spec.max_price_micro) * Fraction(j.device_s) / 3600
        assert j.paid_micro <= ceiling + Fraction(j.lines, 2)


def test_spot_prices_lie_between_floor_and_the_highest_bid(run: Comparison) -> None:
    inv = run.inventory
    hi = SLICE.willingness[1]
    for t, series in run.market.price_micro.items():
        sold = [v for v in series if v is not None]
        assert sold
        assert min(sold) >= round(inv.list_price_micro[t] * SLICE.floor_share)
        assert max(sold) <= inv.list_price_micro[t] * hi + 1


def test_utilisation_and_job_counts_are_possible(run: Comparison) -> None:
    for r in both(run):
        s = r.summary()
        assert 0 < s["utilisation"] <= 1
        assert all(0 <= u <= 1 for u in s["utilisation_by_type"].values())
        assert all(0 <= u <= 1 + 1e-12 for u in r.utilisation_series)
        assert s["jobs_finished"] <= s["jobs_started"] <= s["jobs_submitted"] == len(r.jobs)
        for j in r.jobs:
            assert j.device_s <= j.spec.units * SLICE.horizon_h * 3600
            if j.finished_s is not None:
                assert j.started_s is not None and j.finished_s <= SLICE.horizon_h * 3600
    assert run.market.summary()["jobs_submitted"] == run.baseline.summary()["jobs_submitted"]


def test_only_spot_jobs_are_interrupted_and_only_they_lose_work(run: Comparison) -> None:
    m = run.market
    assert all(j.spec.spot for j in m.jobs if j.interruptions)
    assert all(j.interruptions for j in m.jobs if j.lost_device_s > 0)
    # the checkpoint bounds the loss: at most one checkpoint period per interruption
    ckpt_s = SLICE.checkpoint_min * 60
    for j in m.jobs:
        assert j.lost_device_s <= j.interruptions * ckpt_s * j.spec.units + 1e-6
    assert sum(j.interruptions for j in run.baseline.jobs) == 0


def test_the_baseline_charges_list_price_for_every_device_hour(run: Comparison) -> None:
    price = run.inventory.list_price_micro
    billed = [j for j in run.baseline.jobs if j.device_s > 0]
    assert billed
    for j in billed:
        assert not j.spec.spot and j.top_price_micro == price[j.spec.accelerator]
        exact = Fraction(price[j.spec.accelerator]) * Fraction(j.device_s) / 3600
        # cost_micro rounds each line once, half up: within half a micro-dollar a line
        assert abs(j.paid_micro - exact) <= Fraction(j.lines, 2) + Fraction(1, 1000)
    total = sum(
        (Fraction(price[j.spec.accelerator]) * Fraction(j.device_s) / 3600 for j in billed),
        Fraction(0),
    )
    lines = sum(j.lines for j in billed)
    assert abs(run.baseline.user_cost_micro - total) <= Fraction(lines, 2) + 1


def test_one_auction_per_type_is_the_whole_book_auction() -> None:
    # the simulator clears each type on its own; the engine never lets a bid meet another
    # type's asks, so the union of per-type results must be the whole book's result
    rng = random.Random(7)
    types, regions = ("a", "b", "c"), ("r0", "r1")
    asks = [
        Ask(
            k,
            rng.choice(types),
            rng.choice(regions),
            "spot",
            rng.randint(1, 9) * 100,
            rng.randint(1, 6),
            0.0,
            1e9,
            float(k),
        )
        for k in range(12)
    ]
    bids = []
    for i in range(60):
        t = rng.choice(types)
        holds = {}
        mine = [a for a in asks if a.accelerator == t]
        if mine and rng.random() < 0.3:
            holds = {rng.choice(mine).id: 1}
        regions_ok = frozenset() if rng.random() < 0.5 else frozenset({rng.choice(regions)})
        bids.append(
            Bid(
                100 + i,
                t,
                frozenset() if holds else regions_ok,
                "spot",
                rng.randint(1, 12) * 100,
                1 if holds else rng.randint(1, 4),
                3600.0,
                float(i),
                holds,
            )
        )
    whole = clear_spot(asks, bids, 10.0)
    fills, prices, outbid = [], {}, []
    for t in types:
        part = clear_spot(
            [a for a in asks if a.accelerator == t], [b for b in bids if b.accelerator == t], 10.0
        )
        fills += part.fills
        prices.update(part.prices)
        outbid += part.outbid
    assert sorted(fills, key=repr) == sorted(whole.fills, key=repr)
    assert prices == whole.prices and sorted(outbid) == sorted(whole.outbid)


def test_cli_market_json_and_plot(shared_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "prices.png"
    args = ["market", "--node-share", "0.05", "--horizon-h", "2", "--json", "--plot", str(png)]
    out = CliRunner().invoke(simulate_app, args)
    assert out.exit_code == 0, out.output
    res = json.loads(out.stdout)
    assert res["inventory"]["nodes"] == 214 and res["demand"]["jobs"] > 0
    assert {"market", "baseline", "clearing_price_usd_per_device_h"} <= set(res)
    assert res["demand"]["sources"]["azure-conv"]["jobs"] == 2  # two hour windows
    m = res["market"]
    assert m["user_cost_usd"] and 0 < m["utilisation"] <= 1
    steps = 2 * 3600 // 300
    assert all(len(s) == steps for s in res["clearing_price_usd_per_device_h"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = CliRunner().invoke(simulate_app, ["market", "--node-share", "0.05", "--horizon-h", "1"])
    assert table.exit_code == 0 and "fixed price, first come" in table.stdout
    assert "demand by source" in table.stdout and "azure-code" in table.stdout
    off = ["market", "--node-share", "0.05", "--horizon-h", "1", "--json", "--no-sia"]
    res = json.loads(CliRunner().invoke(simulate_app, [*off, "--no-serving"]).stdout)
    assert set(res["demand"]["sources"]) == {"openb", "gavel-philly"}
    assert res["params"]["sia"] is False and res["params"]["serving"] is False


def test_cli_market_says_where_the_data_should_be(tmp_path: Path) -> None:
    out = CliRunner().invoke(simulate_app, ["market", "--data-dir", str(tmp_path), "--json"])
    assert out.exit_code == 2
    assert str(tmp_path) in out.stderr and "alibaba_v2026_spot_gpu_node_info.csv" in out.stderr
    assert "Traceback" not in out.output
    bad = CliRunner().invoke(simulate_app, ["market", "--spot-share", "2"])
    assert bad.exit_code == 2


def test_cli_simulate_still_asks_for_its_options() -> None:
    # the replay command became the simulate group's default; it still names what is missing
    out = CliRunner().invoke(simulate_app, [])
    assert out.exit_code == 2 and "--cluster" in out.output


def test_the_suanli_command_routes_simulate_market() -> None:
    import typer

    from suanli.cli import app

    group = typer.main.get_command(app)
    sim = getattr(group, "commands", {}).get("simulate")
    if not hasattr(sim, "commands"):
        pytest.skip(
            "suanli.cli mounts `simulate` as a plain command; mount the group with "
            "app.add_typer(simulate_app, name='simulate') to get `suanli simulate market`"
        )
    out = CliRunner().invoke(app, ["simulate", "market", "--help"])
    assert out.exit_code == 0 and "--spot-share" in out.output
