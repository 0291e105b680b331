"""A discrete-time compute market, cleared by the live engine (`suanli.market.engine`).

Why discrete time: the service clears its spot market once per interval, so the
simulator steps the same way and calls the same functions; only the clock and the
jobs are simulated. Each interval, in order:

1. Orders that arrived since the last round join the book.
2. On-demand orders are matched at posted list prices (`match_posted`: oldest first,
   all or nothing). An on-demand ask offers every device on-demand does not already
   hold, spot-leased ones included: spot is what a provider sells while nobody pays
   list for it, so on-demand demand reclaims spot leases.
3. Per accelerator type, one spot call auction (`clear_spot`) on the devices on-demand
   left, over every waiting spot order and every running spot job (bidding its maximum
   again, with its ``holds``). A running job outbid is reclaimed: the work since its last
   checkpoint (one every ``checkpoint_min`` of running) is lost, and it bids again next
   round. One the engine moves to other units is reclaimed too, as the live controller
   does (with one pool per market, as here, the engine never moves one).
4. Running jobs run for the interval or until done. Each lease line is billed with
   `cost_micro` at its price (on-demand: the offer's; spot: this round's clearing
   price); the platform takes ``fee_share`` of it by the controller's own rule
   (`fee_of`), the provider keeps the rest: each micro-dollar lands in one account.

The baseline is this loop with every order on-demand at list price: first come (oldest
order first; one that does not fit waits while a later one that fits may start), fixed
price, the same demand and the same clock — so the two differ only by the spot market.
Devices freed inside an interval are sold again at the next round, in both.

Not modelled, unlike the live service: buyers' credit (every buyer can pay), a reclaim
notice (the units change hands at the round), billing granules (exact seconds are
billed; the service's default granule is 1 s). And in the live book a unit sits in one
offer at a time, where these providers post their free devices on-demand and spot at
every round: the service would express it as withdrawing spot offers when on-demand
orders wait (its idle policy withdraws them only for the owner's own jobs).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suanli.errors import SuanliError
from suanli.market.engine import Ask, Bid, clear_spot, match_posted
from suanli.market.money import MICRO, cost_micro, fee_of, usd
from suanli.sim.market_demand import Inventory, JobSpec, Pool, load_inventory
from suanli.sim.market_sources import build_demand

#: a lease line costs the same for every full interval at one price: compute it once
_line_micro = functools.lru_cache(maxsize=1 << 16)(cost_micro)


class MarketSimError(SuanliError, ValueError):
    """A market-simulation parameter out of range (names the parameter)."""


@dataclass(frozen=True)
class MarketParams:
    horizon_h: float = 24.0
    interval_s: float = 300.0
    load: float = 1.0  # arrival rate x mean device-seconds / devices (market_demand)
    spot_share: float = 0.5  # of jobs that tolerate reclaim and bid spot
    floor_share: float = 0.3  # a spot ask's floor, as a share of list
    willingness: tuple[float, float] = (0.5, 1.0)  # a spot bid's max, as a share of list
    fee_share: float = 0.05  # of each payment, to the platform (the service's default)
    checkpoint_min: float = 30.0
    regions: int = 3
    node_share: float = 1.0  # of the inventory's nodes (every k-th); 1 = all 4,278
    max_jobs: int | None = None
    any_region: bool = True  # a job takes devices in any region, else in its home region
    seed: int = 0
    sia: bool = True  # Sia's workloads join the trace-job pool (market_demand)
    serving: bool = True  # Azure's LLM services order on-demand devices (market_sources)
    serve_model: str = "llama-3.1-70b"
    serve_window_min: float = 60.0
    serve_scale: float = 1.0  # times the trace's request rate
    serve_ttft_s: float = 2.0  # p99
    serve_tpot_s: float = 0.1  # p99

    def check(self) -> None:
        """Reject values the model has no meaning for, naming the parameter."""
        lo, hi = self.willingness
        rules = [
            ("horizon_h", self.horizon_h > 0, "> 0"),
            ("interval_s", 0 < self.interval_s <= self.horizon_h * 3600, "> 0, <= the horizon"),
            ("load", self.load > 0, "> 0"),
            ("spot_share", 0 <= self.spot_share <= 1, "in [0, 1]"),
            ("floor_share", self.floor_share >= 0, ">= 0"),
            ("willingness", 0 < lo <= hi, "(min, max) with 0 < min <= max"),
            ("fee_share", 0 <= self.fee_share < 1, "in [0, 1)"),
            ("checkpoint_min", self.checkpoint_min > 0, "> 0"),
            ("regions", self.regions >= 1, ">= 1"),
            ("node_share", 0 < self.node_share <= 1, "in (0, 1]"),
            ("max_jobs", self.max_jobs is None or self.max_jobs >= 1, ">= 1"),
            ("serve_window_min", self.serve_window_min >= 1, ">= 1"),
            ("serve_scale", self.serve_scale > 0, "> 0"),
            ("serve_ttft_s", self.serve_ttft_s > 0, "> 0"),
            ("serve_tpot_s", self.serve_tpot_s > 0, "> 0"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise MarketSimError(f"{name} = {getattr(self, name)!r}: it must be {rule}")


@dataclass(slots=True)
class JobState:
    """A job's order and how it fared; its work is seconds of running on its devices."""

    spec: JobSpec
    done_s: float = 0.0  # work done, including what an interruption would lose
    resumed_s: float = 0.0  # done_s at the last (re)start: checkpoints count from here
    holds: dict[int, int] = field(default_factory=dict)  # ask id -> devices leased
    price_micro: int = 0  # per device-hour, this interval
    started_s: float | None = None
    finished_s: float | None = None
    paid_micro: int = 0
    lines: int = 0  # lease lines billed (each rounded once)
    device_s: float = 0.0
    top_price_micro: int = 0  # the dearest price per device-hour it was billed at
    interruptions: int = 0
    lost_device_s: float = 0.0


@dataclass
class MarketResult:
    label: str
    interval_s: float
    horizon_s: float
    devices_by_type: dict[str, int]
    jobs: list[JobState]
    busy_device_s: dict[str, float]
    user_cost_micro: int
    provider_revenue_micro: dict[str, int]  # by provider pool, "type@region"
    platform_fee_micro: int
    moves: int
    #: per type, each interval: spot clearing price (volume-weighted over regions), None: no sale
    price_micro: dict[str, list[float | None]]
    utilisation_series: list[float]
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What the comparison reports; money as exact dollar strings (`money.usd`)."""
        devices = sum(self.devices_by_type.values())
        wait_s = [j.started_s - j.spec.arrival_s for j in self.jobs if j.started_s is not None]
        jct_s = [j.finished_s - j.spec.arrival_s for j in self.jobs if j.finished_s is not None]
        busy = sum(self.busy_device_s.values())
        return {
            "utilisation": busy / (devices * self.horizon_s),
            "utilisation_by_type": {
                t: self.busy_device_s.get(t, 0.0) / (n * self.horizon_s)
                for t, n in sorted(self.devices_by_type.items())
            },
            "user_cost_usd": usd(self.user_cost_micro),
            "provider_revenue_usd": usd(sum(self.provider_revenue_micro.values())),
            "platform_fee_usd": usd(self.platform_fee_micro),
            "mean_price_usd_per_device_h": self.user_cost_micro / MICRO / (busy / 3600)
            if busy
            else None,
            "spot_interruptions": sum(j.interruptions for j in self.jobs),
            "spot_moves": self.moves,
            "lost_device_h": sum(j.lost_device_s for j in self.jobs) / 3600,
            "jobs_submitted": len(self.jobs),
            "jobs_started": len(wait_s),
            "jobs_finished": len(jct_s),
            "mean_jct_h": _mean(jct_s) / 3600,
            "mean_wait_h": _mean(wait_s) / 3600,
            "wall_s": self.wall_s,
        }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def run_market(
    inventory: Inventory,
    specs: list[JobSpec],
    params: MarketParams,
    *,
    label: str = "market",
    on_step: Callable[[], None] | None = None,
) -> MarketResult:
    """Step the market over the horizon (module docstring, steps 1-4)."""
    t0 = time.perf_counter()
    pools = inventory.pools
    n = len(pools)  # on-demand ask k and spot ask n + k sell pool k
    cap = [p.devices for p in pools]
    od_held = [0] * n
    list_micro = inventory.list_price_micro
    floor = {t: round(p * params.floor_share) for t, p in list_micro.items()}
    fee_ppm = round(params.fee_share * 1_000_000)
    ckpt_s = params.checkpoint_min * 60
    horizon_s = params.horizon_h * 3600
    types = inventory.types
    pools_of = {t: [k for k, p in enumerate(pools) if p.accelerator == t] for t in types}
    jobs = [JobState(s) for s in sorted(specs, key=lambda s: (s.arrival_s, s.id))]
    by_id = {j.spec.id: j for j in jobs}
    waiting_od: list[JobState] = []
    running_od: list[JobState] = []
    waiting_spot: dict[str, list[JobState]] = defaultdict(list)
    running_spot: dict[str, list[JobState]] = defaultdict(list)
    provider = [0] * n
    user = platform = moves = 0
    busy: dict[str, float] = defaultdict(float)
    prices: dict[str, list[float | None]] = {t: [] for t in types}
    util: list[float] = []
    nxt = 0
    for step in range(math.ceil(horizon_s / params.interval_s)):
        now = step * params.interval_s
        span = min(params.interval_s, horizon_s - now)
        while nxt < len(jobs) and jobs[nxt].spec.arrival_s <= now:
            j = jobs[nxt]
            (waiting_spot[j.spec.accelerator] if j.spec.spot else waiting_od).append(j)
            nxt += 1
        if waiting_od:  # 2. posted prices
            asks = [
                _ask(k, p, "on-demand", list_micro[p.accelerator], cap[k] - od_held[k])
                for k, p in enumerate(pools)
            ]
            for f in match_posted(asks, [_bid(j, "on-demand") for j in waiting_od], now):
                j = by_id[f.bid]
                j.holds[f.ask] = j.holds.get(f.ask, 0) + f.units
                j.price_micro = f.price_micro
                od_held[f.ask] += f.units
            for j in waiting_od:
                if j.holds:
                    _start(j, now)
                    running_od.append(j)
            waiting_od = [j for j in waiting_od if not j.holds]
        # 3. spot: one auction per type is the whole-book auction (a bid only ever meets
        # asks of its own type), and the engine scans every bid once per market
        for t in types:
            if not running_spot[t] and not waiting_spot[t]:
                prices[t].append(None)
                continue
            asks = [
                _ask(n + k, pools[k], "spot", floor[t], cap[k] - od_held[k]) for k in pools_of[t]
            ]
            bids = [_bid(j, "spot") for j in running_spot[t] + waiting_spot[t]]
            res = clear_spot(asks, bids, now)
            got: dict[int, dict[int, int]] = defaultdict(dict)
            paid: dict[int, int] = {}
            for f in res.fills:
                got[f.bid][f.ask] = got[f.bid].get(f.ask, 0) + f.units
                paid[f.bid] = f.price_micro
            moved = set(res.moved)
            queue = [j for j in waiting_spot[t] if j.spec.id not in got]
            running: list[JobState] = []
            for j in running_spot[t]:
                if j.spec.id in got and j.spec.id not in moved:
                    running.append(j)
                    continue
                _interrupt(j, ckpt_s)  # reclaimed: it bids again next round
                queue.append(j)
                moves += j.spec.id in moved
            for j in waiting_spot[t]:
                if j.spec.id in got:
                    _start(j, now)
                    running.append(j)
            for j in running:
                j.holds, j.price_micro = got[j.spec.id], paid[j.spec.id]
            running_spot[t], waiting_spot[t] = running, queue
            sold = sum(res.volume.values())
            value = sum((res.prices[m] or 0) * v for m, v in res.volume.items())
            prices[t].append(value / sold if sold else None)
        # 4. run and bill
        used = 0.0
        for group in (running_od, *running_spot.values()):
            still: list[JobState] = []
            for j in group:
                left_s = j.spec.work_s - j.done_s
                run_s = min(span, left_s)
                for ask, units in j.holds.items():
                    line = _line_micro(j.price_micro, units, run_s)
                    fee = fee_of(line, fee_ppm)
                    provider[ask % n] += line - fee
                    platform += fee
                    user += line
                    j.paid_micro += line
                    j.lines += 1
                dev_s = j.spec.units * run_s
                j.device_s += dev_s
                j.top_price_micro = max(j.top_price_micro, j.price_micro)
                busy[j.spec.accelerator] += dev_s
                used += dev_s
                if run_s < left_s:
                    j.done_s += run_s
                    still.append(j)
                    continue
                j.done_s = j.spec.work_s
                j.finished_s = now + run_s
                if not j.spec.spot:
                    for ask, units in j.holds.items():
                        od_held[ask] -= units
                j.holds = {}
            group[:] = still
        util.append(used / (inventory.devices * span))
        if on_step is not None:
            on_step()
    return MarketResult(
        label,
        params.interval_s,
        horizon_s,
        {t: inventory.devices_of(t) for t in types},
        jobs,
        dict(busy),
        user,
        {f"{p.accelerator}@{p.region}": provider[k] for k, p in enumerate(pools)},
        platform,
        moves,
        prices,
        util,
        time.perf_counter() - t0,
    )


def _ask(ask_id: int, pool: Pool, mode: str, price_micro: int, units: int) -> Ask:
    # the simulated offers are all posted at time 0 and open for the whole run
    return Ask(ask_id, pool.accelerator, pool.region, mode, price_micro, units, 0.0, math.inf, 0.0)


def _bid(j: JobState, mode: str) -> Bid:
    s = j.spec
    remaining_s = s.work_s - j.done_s
    return Bid(
        s.id,
        s.accelerator,
        s.regions,
        mode,
        s.max_price_micro,
        s.units,
        remaining_s,
        s.arrival_s,
        dict(j.holds),
    )


def _start(j: JobState, now: float) -> None:
    if j.started_s is None:
        j.started_s = now
    j.resumed_s = j.done_s


def _interrupt(j: JobState, checkpoint_s: float) -> None:
    """Back to the last checkpoint: what ran since it is lost, device-seconds counted."""
    kept_s = j.resumed_s + (j.done_s - j.resumed_s) // checkpoint_s * checkpoint_s
    j.lost_device_s += (j.done_s - kept_s) * j.spec.units
    j.done_s = j.resumed_s = kept_s
    j.interruptions += 1
    j.holds = {}


def as_baseline(specs: list[JobSpec], inventory: Inventory) -> list[JobSpec]:
    """The same orders, all on-demand at list price: the fixed-price, first-come world."""
    return [
        dataclasses.replace(
            s, spot=False, max_price_micro=inventory.list_price_micro[s.accelerator]
        )
        for s in specs
    ]


@dataclass
class Comparison:
    params: MarketParams
    inventory: Inventory
    demand: dict[str, Any]
    market: MarketResult
    baseline: MarketResult


def compare(
    data_dir: Path, params: MarketParams, on_step: Callable[[], None] | None = None
) -> Comparison:
    """The market and the fixed-price baseline on one draw of demand."""
    params.check()
    inventory = load_inventory(data_dir, regions=params.regions, node_share=params.node_share)
    specs, info = build_demand(data_dir, inventory, params)  # every source, and what it gave
    market = run_market(inventory, specs, params, label="market", on_step=on_step)
    base = run_market(
        inventory, as_baseline(specs, inventory), params, label="baseline", on_step=on_step
    )
    return Comparison(params, inventory, info, market, base)


def steps_of(params: MarketParams) -> int:
    """Intervals in one run (a progress bar's length is twice this: market and baseline)."""
    return math.ceil(params.horizon_h * 3600 / params.interval_s)
