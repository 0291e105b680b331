"""A service in simulation: a trace's requests through a router to continuous-batching
replicas that an autoscaler starts and drains, and what it cost.

The router sends each request to the ready replica with the fewest outstanding
requests. With a mix, it draws the chip by the share of the request's size the
optimizer gives each, and takes that chip's least filled replica, spilling over to
another chip when it is full (`suanli.autoscale.routing`). With no ready replica it
buffers up to a bound while one starts (scale from zero); past the bound a request is
refused (the live router's 429), and counts as missing its SLO. Replicas cost from the
moment they are asked for (a cold start is paid for) until drained empty. The control
loop samples every ``tick_s`` and asks the scaler at its own period.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanli.autoscale.kinds import Kind, batch_table
from suanli.autoscale.mix import SizeBuckets
from suanli.autoscale.routing import Fills, draw, least_per_chip, spill
from suanli.autoscale.scalers import Optimizer, Scaler, Static, Window, measures_rate
from suanli.autoscale.signals import Observation
from suanli.perf.batching import TOKEN_BUDGET, slo_token_budget
from suanli.sim.serving.replica import Replica, Seq
from suanli.sim.serving.spot import SpotTerms
from suanli.sim.serving.trace import TraceRequest


@dataclass
class ServeResult:
    autoscaler: str
    requests: int
    slo_attainment: float  # the share of requests within both SLOs
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    refused: int
    preemptions: int
    device_hours: float
    cost_usd: float
    max_replicas: int
    wall_s: float
    reclaims: int = 0  # spot replicas taken back
    spot_device_hours: float = 0.0
    #: (t_s, arrivals/s, replicas by kind asked for, ready replicas, requests in system)
    timeline: list[tuple[float, float, dict[str, int], int, float]] = field(default_factory=list)

    def to_dict(self, with_timeline: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        if with_timeline:
            d["timeline"] = [
                {"t_s": t, "arrivals_per_s": a, "replicas": r, "ready": n, "in_system": c}
                for t, a, r, n, c in self.timeline
            ]
        return d


class Fleet:
    """The replicas of one service and the router in front of them."""

    def __init__(
        self,
        kinds: dict[str, Kind],
        buffer_max: int,
        seed: int = 0,
        spot: SpotTerms | None = None,
        tpot_slo_s: float | None = None,
        ttft_slo_s: float | None = None,
        spill_over: bool = True,
    ) -> None:
        """``spill_over``: a chip-mix service's router sends a request past a full chip
        to one with room (`suanli.autoscale.routing`); off, by the mix's draw alone."""
        self.kinds, self.buffer_max, self.spot = kinds, buffer_max, spot
        #: each kind's token budget: sized to the TPOT SLO, as an operator sets vLLM's
        #: ``--max-num-batched-tokens`` (`slo_token_budget`); vLLM's default without one
        self.budgets = {
            k: TOKEN_BUDGET if tpot_slo_s is None else slo_token_budget(v.steps, tpot_slo_s)
            for k, v in kinds.items()
        }
        self.spot_rng = random.Random(spot.seed if spot is not None else 0)
        self.spot_gone_until: dict[str, float] = {}
        self.reclaims = 0
        self.replicas: list[Replica] = []
        self.retired: list[Replica] = []
        self.buffer: deque[Seq] = deque()
        self.refused = 0
        self.rng = random.Random(seed)
        #: bucket -> [(kind, share)] from the optimizer; None routes by load alone
        self.route_shares: list[list[tuple[str, float]]] | None = None
        self.buckets = SizeBuckets()
        #: per kind and size bucket, its SLO batch: what a replica's fill is counted in
        self.fills = Fills({})
        if tpot_slo_s is not None and ttft_slo_s is not None:
            self.fills = Fills(batch_table(kinds, self.buckets, tpot_slo_s, ttft_slo_s))
        self.spill_over = spill_over and bool(self.fills.batches)

    def live(self, kind: str) -> list[Replica]:
        return [r for r in self.replicas if r.kind == kind and not r.draining]

    def ready(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if r.ready_s <= now and not r.draining]

    def counts(self) -> dict[str, int]:
        return {k: len(self.live(k)) for k in self.kinds}

    def route(self, seq: Seq, now: float) -> None:
        ready = [r for r in self.ready(now) if r.fits(seq.prompt, seq.output)]
        if not ready:
            coming = not self.replicas or any(r.fits(seq.prompt, seq.output) for r in self.replicas)
            if coming and len(self.buffer) < self.buffer_max:
                self.buffer.append(seq)
            else:
                self.refused += 1
            return
        if self.route_shares is None:
            min(ready, key=lambda r: r.outstanding).submit(seq)
            return
        # by chip: an on-demand replica standing in for a reclaimed spot one takes the
        # spot kind's share
        b = self.buckets.of(seq.prompt, seq.asked)
        f = self.fills
        shares: dict[str, float] = {}
        for k, s in self.route_shares[b]:
            shares[self.chip(k)] = shares.get(self.chip(k), 0.0) + s
        # per chip, the replica it would take: the least filled with spill-over, the
        # least loaded without (the router before spill-over)
        key = (lambda r: (r.fill, r.outstanding)) if self.spill_over else (lambda r: r.outstanding)
        least = least_per_chip(ready, lambda r: self.chip(r.kind), key)
        pick = draw(shares, least, self.rng)
        if pick is None:
            r = min(ready, key=lambda r: r.outstanding)
        else:
            if self.spill_over:
                after = {c: r.fill + f.weight(r.kind, b) for c, r in least.items()}
                pick = spill(pick, after, {c: f.serves(r.kind, b) for c, r in least.items()})
            r = least[pick]
        r.submit(seq, f.weight(r.kind, b) if f.batches else 0.0)

    def follow(self, scaler: Scaler) -> None:
        """Route by the scaler's chip mix, where it has one (the optimizer's latest, or
        static-mix's fixed one)."""
        if isinstance(scaler, Optimizer | Static) and scaler.mix is not None:
            mix = scaler.mix
            self.route_shares = [
                [(k, mix.shares[k][b]) for k in self.kinds if k in mix.shares]
                for b in range(self.buckets.count)
            ]

    def flush(self, now: float) -> None:
        """Requests buffered while no replica was ready go out once one is."""
        n = len(self.buffer)
        for _ in range(n):
            if not self.ready(now):
                return
            self.route(self.buffer.popleft(), now)

    def chip(self, kind: str) -> str:
        """The on-demand kind a kind stands for (a spot kind's twin; itself otherwise)."""
        return self.kinds[kind].on_demand or kind

    def _start(self, name: str, now: float, ready_s: float | None = None) -> Replica:
        kind = self.kinds[name]
        ready = now + kind.cold_start_s if ready_s is None else ready_s
        r = Replica(name, kind.steps, start_s=now, ready_s=ready, budget=self.budgets[name])
        r.clock = r.ready_s
        self.replicas.append(r)
        return r

    def _fall_back(self, want: dict[str, int], now: float) -> dict[str, int]:
        """What the autoscaler wants on a chip whose spot capacity is gone runs on demand."""
        want = dict(want)
        for name, kind in self.kinds.items():
            if kind.on_demand is not None and self.spot_gone_until.get(name, -1.0) > now:
                have = len(self.live(name))
                extra = max(0, want.get(name, 0) - have)
                want[name] = min(want.get(name, 0), have)
                want[kind.on_demand] = want.get(kind.on_demand, 0) + extra
        return want

    def scale_to(self, want: dict[str, int], now: float) -> None:
        """Start and drain replicas toward ``want``, making before breaking: surplus
        replicas still starting go at once, but ready ones are drained only while the
        ready count stays at what is wanted (a mix that swaps kinds, or an on-demand
        replica standing in for a reclaimed spot one, keeps serving until the replicas
        replacing it are ready; a later decision drains it)."""
        want = self._fall_back(want, now)
        ready_now = len(self.ready(now))
        surplus_ready: list[Replica] = []
        for name in self.kinds:
            n = max(0, want.get(name, 0))
            live = self.live(name)
            warm = [r for r in self.replicas if r.kind == name and r.draining]
            for r in [r for r in warm if r.reclaim_end_s is None]:
                if len(live) >= n:
                    break
                r.draining = False  # cheaper to keep one that is still warm
                live.append(r)
            while len(live) < n:
                live.append(self._start(name, now))
            surplus = len(live) - n
            # the ones not yet ready go first (nothing to drain), then the least loaded
            for r in sorted(live, key=lambda r: (r.ready_s <= now, r.outstanding))[:surplus]:
                if r.ready_s > now:
                    r.draining = True
                else:
                    surplus_ready.append(r)
        budget = max(0, ready_now - sum(max(0, n) for n in want.values()))
        for r in sorted(surplus_ready, key=lambda r: r.outstanding)[:budget]:
            r.draining = True
        self.reap(now)

    def reclaim(self, now: float, dt_s: float) -> None:
        """Spot replicas taken back over the last ``dt_s``: each stops taking requests,
        is gone when the notice runs out, and an on-demand replica of its chip starts now."""
        terms = self.spot
        if terms is None or terms.reclaims_per_hour <= 0:
            return
        p = 1.0 - math.exp(-terms.reclaims_per_hour * dt_s / 3600.0)
        for r in list(self.replicas):
            twin = self.kinds[r.kind].on_demand
            if twin is None or r.draining or self.spot_rng.random() >= p:
                continue
            r.draining, r.reclaim_end_s = True, now + terms.notice_s
            self.reclaims += 1
            self.spot_gone_until[r.kind] = now + terms.unavailable_s
            self._start(twin, now)

    def reap(self, now: float) -> None:
        gone = [
            r
            for r in self.replicas
            if r.draining
            and (
                r.ready_s > now
                or not r.outstanding
                or (r.reclaim_end_s is not None and now >= r.reclaim_end_s)
            )
        ]
        for r in gone:
            moved = r.evacuate() if r.ready_s <= now else []
            r.stop_s = now
            self.replicas.remove(r)
            self.retired.append(r)
            for seq in moved:  # the notice ran out before they finished: sent elsewhere
                self.route(seq, now)


def simulate_serving(
    trace: Sequence[TraceRequest],
    kinds: dict[str, Kind],
    scaler: Scaler,
    *,
    ttft_slo_s: float,
    tpot_slo_s: float,
    initial: dict[str, int] | None = None,
    spot: SpotTerms | None = None,
    tick_s: float = 2.0,
    buffer_max: int = 1000,
    drain_limit_s: float = 3600.0,
    progress: Callable[[float], None] | None = None,
    past_rates: Sequence[float] = (),
    past_sizes: Sequence[TraceRequest] = (),
    spill_over: bool = True,
) -> ServeResult:
    """Replay ``trace`` through a fleet that ``scaler`` controls; ``initial`` replicas are
    ready at time 0 (a service already running when the trace starts), and
    ``past_rates`` are the arrival rates per decision period it saw before (what a
    forecasting policy reads from its metrics store after a restart); ``past_sizes``
    the requests it saw before, at times before 0 (the optimizer's size distribution).
    ``spill_over``: see `Fleet`."""
    wall0 = time.perf_counter()
    mixed = isinstance(scaler, Optimizer) or (isinstance(scaler, Static) and scaler.mix is not None)
    fleet = Fleet(
        kinds,
        buffer_max,
        spot=spot,
        tpot_slo_s=tpot_slo_s,
        ttft_slo_s=ttft_slo_s if mixed else None,  # only a mix routes by fill
        spill_over=spill_over,
    )
    for name, n in (initial or {}).items():
        for _ in range(n):
            fleet._start(name, 0.0, ready_s=0.0)
    seqs = [Seq(i, r.arrival_s, r.prompt, r.output, asked=r.output) for i, r in enumerate(trace)]
    end = trace[-1].arrival_s if trace else 0.0
    window = Window(Observation(0.0, 0), rates=list(past_rates))
    for past in past_sizes:
        window.sizes.add(past.arrival_s, past.prompt, past.output)
    next_tick, next_decision, i = 0.0, 0.0, 0
    arrivals_since, period_arrivals = 0, 0
    last_period_t = 0.0
    tokens_before = 0
    timeline: list[tuple[float, float, dict[str, int], int, float]] = []
    max_replicas = sum((initial or {}).values())
    done = 0
    while True:
        t_arr = seqs[i].arrival_s if i < len(seqs) else math.inf
        if t_arr < next_tick:
            for r in fleet.replicas:
                r.run_until(t_arr)
            fleet.route(seqs[i], t_arr)
            window.sizes.add(t_arr, seqs[i].prompt, seqs[i].asked)
            i += 1
            arrivals_since += 1
            period_arrivals += 1
            continue
        now = next_tick
        next_tick += tick_s
        for r in fleet.replicas:
            r.run_until(now)
        fleet.reclaim(now, tick_s)
        fleet.flush(now)
        fleet.reap(now)
        ready = fleet.ready(now)
        tokens = sum(r.tokens_out for r in fleet.replicas + fleet.retired)
        obs = Observation(
            t_s=now,
            ready=len(ready),
            starting=sum(1 for r in fleet.replicas if r.ready_s > now and not r.draining),
            waiting=len(fleet.buffer) + sum(len(r.waiting) for r in fleet.replicas),
            running=sum(len(r.running) for r in fleet.replicas),
            kv_use=float(np.mean([r.kv_use() for r in ready])) if ready else 0.0,
            tokens_per_s=(tokens - tokens_before) / tick_s,
            arrivals_per_s=arrivals_since / tick_s,
        )
        tokens_before, arrivals_since = tokens, 0
        window.obs = obs
        window.concurrency.append((now, obs.concurrency))
        window.concurrency = window.concurrency[-64:]  # Knative's windows need 60 s
        if now >= next_decision:
            # the live controller's rule (`measures_rate`): a zero measured at the first
            # decision read as an idle service, and the optimizer dropped its fleet
            span = now - last_period_t
            if measures_rate(span, scaler.period_s):
                window.rates.append(period_arrivals / span)
                period_arrivals, last_period_t = 0, now
            want = scaler.decide(window, fleet.counts())
            fleet.scale_to(want, now)
            next_decision = now + scaler.period_s if math.isfinite(scaler.period_s) else math.inf
            fleet.follow(scaler)
        counts = fleet.counts()
        max_replicas = max(max_replicas, sum(counts.values()))
        timeline.append((now, obs.arrivals_per_s, counts, obs.ready, obs.concurrency))
        done = sum(len(r.finished) for r in fleet.replicas + fleet.retired)
        if progress is not None:
            progress(min(now, end))
        if i >= len(seqs) and done + fleet.refused >= len(seqs):
            break
        if now > end + drain_limit_s:
            break
    return _result(
        scaler.name,
        seqs,
        fleet,
        kinds,
        now,
        ttft_slo_s,
        tpot_slo_s,
        max_replicas,
        timeline,
        time.perf_counter() - wall0,
    )


def _result(
    name: str,
    seqs: list[Seq],
    fleet: Fleet,
    kinds: dict[str, Kind],
    now: float,
    ttft_slo_s: float,
    tpot_slo_s: float,
    max_replicas: int,
    timeline: list[tuple[float, float, dict[str, int], int, float]],
    wall_s: float,
) -> ServeResult:
    finished = [s for s in seqs if s.done_s >= 0]
    ttft = np.array([s.first_s - s.arrival_s for s in finished])
    tpot = np.array([(s.done_s - s.first_s) / max(1, s.asked - 1) for s in finished])
    met = int(np.sum((ttft <= ttft_slo_s) & (tpot <= tpot_slo_s))) if finished else 0
    device_s = cost = spot_s = 0.0
    for r in fleet.replicas + fleet.retired:
        up = (r.stop_s if r.stop_s is not None else now) - r.start_s
        device_s += up * kinds[r.kind].tp
        spot_s += up * kinds[r.kind].tp if kinds[r.kind].spot else 0.0
        cost += up / 3600 * kinds[r.kind].usd_per_hour

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else math.nan

    return ServeResult(
        autoscaler=name,
        requests=len(seqs),
        slo_attainment=met / len(seqs) if seqs else 1.0,
        ttft_p50_s=pct(ttft, 50),
        ttft_p99_s=pct(ttft, 99),
        tpot_p50_s=pct(tpot, 50),
        tpot_p99_s=pct(tpot, 99),
        refused=fleet.refused,
        preemptions=sum(s.preemptions for s in seqs),
        device_hours=device_s / 3600,
        cost_usd=cost,
        max_replicas=max_replicas,
        wall_s=wall_s,
        reclaims=fleet.reclaims,
        spot_device_hours=spot_s / 3600,
        timeline=timeline,
    )
