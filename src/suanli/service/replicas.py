"""What the services controller and the router share about each service's replicas:
where each listens, whether it answers (probed in a thread, never in the loop or a
request), its engine's load, and the router's own counts.

One process holds it (``suanli up`` runs the loop and the API together); a lock
guards it, since the loop thread, the prober thread and the API's event loop all
touch it. Nothing here is stored: a restart probes again within a second.
"""

from __future__ import annotations

import hmac
import random
import secrets
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from suanli.autoscale.mix import SizeBuckets
from suanli.autoscale.routing import draw, least_per_chip, serves, spill, weight
from suanli.autoscale.sizes import SizeHistory
from suanli.workloads.replica_auth import token_proof

BUCKETS = SizeBuckets()
PROBE_PERIOD_S = 0.5
PROBE_TIMEOUT_S = 1.0
ARRIVAL_WINDOW_S = 60.0
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
TPOT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass
class Replica:
    job_id: int
    service: str
    address: str  # host:port
    ready: bool = False
    stats: dict[str, Any] = field(default_factory=dict)  # the engine's /stats
    inflight: int = 0  # requests the router has sent and not had back
    chip: str = ""  # the chip it was asked on (a chip-mix service's kind)
    token: str = ""  # the bearer token it requires of the router
    proves: bool = False  # answers the prober's challenge (serve_lm): an impostor cannot
    #: a chip-mix service: its chip's SLO batch per size bucket, fixed when it is first
    #: seen (so a request's weight leaves the fill as it came), and the share of that
    #: batch its requests in flight take (`suanli.autoscale.routing`)
    batches: tuple[int, ...] = ()
    fill: float = 0.0

    def weight(self, size: tuple[int, int]) -> float:
        return weight(self.batches, BUCKETS.of(*size)) if self.batches else 0.0


def _load(r: Replica) -> tuple[int, int]:
    """The router's own count and the engine's queue, then the job id (a stable tie)."""
    return (r.inflight + int(r.stats.get("queue_length", 0)), r.job_id)


HISTORY = 720  # samples: an hour at one each 5 s
HISTORY_EVERY_S = 5.0


class ServiceTraffic:
    """The router's view of one service: arrivals, what waits, what it answered. Its
    Prometheus series are the service's own (``GET /v1/services/NAME/metrics``), never
    in the shared ``/metrics``, which must not name another tenant's service."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrivals: deque[float] = deque()
        self.buffered = 0
        self.met = 0
        self.judged = 0
        self.carried = False  # the counts from before a restart are in
        self.lock = threading.Lock()
        #: requests answered, by size: the optimizer's size distribution (read and
        #: written under ``lock``: the router adds, the controller reads)
        self._sizes = SizeHistory()
        #: a chip-mix service: per size bucket, the share of it each chip serves
        self.shares: list[dict[str, float]] | None = None
        #: (at, ready, desired, arrivals/s, in flight, waiting) every HISTORY_EVERY_S, for
        #: the console's chart of replicas and load; in memory: a restart starts it anew
        self.history: deque[tuple[float, int, int, float, float, float]] = deque(maxlen=HISTORY)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "suanli_service_requests", "Requests answered, by HTTP status.", ["code"], registry=r
        )
        self.retries = Counter(
            "suanli_service_retries", "Requests sent again after a replica failed.", registry=r
        )
        self.resumed = Counter(
            "suanli_service_resumed_streams",
            "Streams a dying replica cut, resumed on another.",
            registry=r,
        )
        self.queue = Gauge(
            "suanli_service_queue", "Requests waiting: at the router and on replicas.", registry=r
        )
        self.in_flight = Gauge("suanli_service_in_flight", "Requests at replicas.", registry=r)
        self.kv_use = Gauge(
            "suanli_service_kv_cache_usage_ratio",
            "Mean KV-cache use of ready replicas.",
            registry=r,
        )
        self.tokens = Gauge(
            "suanli_service_tokens_per_second", "Tokens/s over all replicas.", registry=r
        )
        self.replicas = Gauge(
            "suanli_service_replicas", "Replicas by state.", ["state"], registry=r
        )
        self.ttft = Histogram(
            "suanli_service_time_to_first_token_seconds",
            "Router-measured: arrival to the first byte of a stream, or to the whole answer.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            "suanli_service_time_per_output_token_seconds",
            "Router-measured: time between streamed chunks after the first.",
            buckets=TPOT_BUCKETS_S,
            registry=r,
        )

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)
        while self.arrivals and now - self.arrivals[0] > ARRIVAL_WINDOW_S:
            self.arrivals.popleft()

    def rate(self, now: float, window_s: float) -> float:
        return sum(1 for t in self.arrivals if now - t <= window_s) / window_s

    def judge(self, met: bool) -> None:
        with self.lock:
            self.judged += 1
            self.met += int(met)

    def sized(self, now: float, prompt: int, output: int) -> None:
        """A request answered: its prompt and output tokens."""
        with self.lock:
            self._sizes.add(now, prompt, output)

    def sizes(self) -> SizeHistory:
        """A copy of the size counts, for the controller to read while the router adds."""
        with self.lock:
            return self._sizes.copy()

    def carry(self, judged: int, met: int, sizes: Any = None, now: float = 0.0) -> None:
        """Counts from before this router (a restart): added once. ``sizes``: the size
        counts the store kept (`SizeHistory.to_json`)."""
        with self.lock:
            if not self.carried:
                self.judged, self.met, self.carried = self.judged + judged, self.met + met, True
                self._sizes.load(sizes, now)

    @property
    def attainment(self) -> float | None:
        return self.met / self.judged if self.judged else None


def record(
    traffic: ServiceTraffic,
    at: float,
    ready: int,
    desired: int,
    arrivals_per_s: float,
    running: float,
    waiting: float,
) -> None:
    """One sample of a service's history, at most one per ``HISTORY_EVERY_S``."""
    h = traffic.history
    if not h or at - h[-1][0] >= HISTORY_EVERY_S:
        h.append((at, ready, desired, arrivals_per_s, running, waiting))


class ReplicaBook:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replicas: dict[int, Replica] = {}
        self.traffic: dict[str, ServiceTraffic] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rng = random.Random(0)

    # --- the controller ---------------------------------------------------------------
    def sync(
        self,
        service: str,
        running: dict[int, str],
        chips: dict[int, str] | None = None,
        tokens: dict[int, str] | None = None,
        proves: bool = False,
        batches: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """The replicas of ``service`` that run now (job id -> address, chip, token);
        ``batches``: a chip-mix service's SLO batch per chip and size bucket."""
        with self.lock:
            for jid, r in list(self.replicas.items()):
                if r.service == service and jid not in running:
                    del self.replicas[jid]
            for jid, addr in running.items():
                if jid not in self.replicas:
                    chip, token = (chips or {}).get(jid, ""), (tokens or {}).get(jid, "")
                    self.replicas[jid] = Replica(
                        jid,
                        service,
                        addr,
                        chip=chip,
                        token=token,
                        proves=proves and bool(token),
                        batches=tuple((batches or {}).get(chip, ())),
                    )
            self.traffic.setdefault(service, ServiceTraffic(service))

    def forget(self, service: str) -> None:
        with self.lock:
            for jid in [j for j, r in self.replicas.items() if r.service == service]:
                del self.replicas[jid]
            self.traffic.pop(service, None)

    def of(self, service: str) -> list[Replica]:
        with self.lock:
            return [r for r in self.replicas.values() if r.service == service]

    def traffic_of(self, service: str) -> ServiceTraffic:
        with self.lock:
            return self.traffic.setdefault(service, ServiceTraffic(service))

    # --- the router -------------------------------------------------------------------
    def pick(
        self, service: str, avoid: set[int], size: tuple[int, int] | None = None
    ) -> Replica | None:
        """The ready replica with the fewest outstanding requests (the router's own count
        and the engine's queue), and take one of its slots. For a chip-mix service, the
        chip is drawn by the share of the request's size bucket the mix gives each
        (Mélange's routing), and its least filled replica takes it, unless it is full and
        another chip has room (`suanli.autoscale.routing`, as in the simulator); any
        ready replica when no chip of the mix has one ready."""
        with self.lock:
            ready = [
                r
                for r in self.replicas.values()
                if r.service == service and r.ready and r.job_id not in avoid
            ]
            if not ready:
                return None
            traffic = self.traffic.get(service)
            if traffic is None or traffic.shares is None or size is None:
                return self._take(min(ready, key=_load), size)
            b = BUCKETS.of(*size)
            least = least_per_chip(ready, lambda r: r.chip, lambda r: (r.fill, *_load(r)))
            chip = draw(traffic.shares[b], least, self.rng)
            if chip is None:
                return self._take(min(ready, key=_load), size)
            if least[chip].batches:
                after = {c: r.fill + weight(r.batches, b) for c, r in least.items()}
                chip = spill(chip, after, {c: serves(r.batches, b) for c, r in least.items()})
            return self._take(least[chip], size)

    @staticmethod
    def _take(r: Replica, size: tuple[int, int] | None) -> Replica:
        r.inflight += 1
        r.fill += r.weight(size) if size is not None else 0.0
        return r

    def release(self, replica: Replica, failed: bool, size: tuple[int, int] | None = None) -> None:
        """``size``: the request's, as given to `pick`: its weight, from the replica's
        own batches, leaves the fill as it came."""
        with self.lock:
            replica.inflight = max(0, replica.inflight - 1)
            replica.fill -= replica.weight(size) if size is not None else 0.0
            if replica.inflight == 0:
                replica.fill = 0.0  # nothing in flight: no rounding left over either
            if failed:  # not sent anything more until a probe sees it answer again
                replica.ready = False

    # --- the prober -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._probe_forever, name="replica-probe", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def probe_once(self, client: httpx.Client) -> None:
        with self.lock:
            targets = [
                (r.job_id, r.address, r.token if r.proves else "") for r in self.replicas.values()
            ]
        for jid, addr, token in targets:
            stats: dict[str, Any] | None
            challenge = secrets.token_hex(16)
            try:  # serve_lm's /stats has the load; vLLM and SGLang answer /health
                resp = client.get(
                    f"http://{addr}/stats", params={"challenge": challenge}, timeout=PROBE_TIMEOUT_S
                )
                # vLLM has no /stats (404); SGLang's key guards every path but /health
                # and /metrics (401)
                if resp.status_code in (401, 403, 404) and not token:
                    resp = client.get(f"http://{addr}/health", timeout=PROBE_TIMEOUT_S)
                    stats = {} if resp.status_code == 200 else None
                else:
                    stats = resp.json() if resp.status_code == 200 else None
                    if not isinstance(stats, dict):
                        stats = None
                    elif token and not hmac.compare_digest(
                        str(stats.get("proof", "")), token_proof(token, challenge)
                    ):
                        # whoever answers there is not the replica: its port was taken
                        stats = None
            except (httpx.HTTPError, ValueError):
                stats = None
            with self.lock:
                r = self.replicas.get(jid)
                if r is not None:
                    r.ready = stats is not None
                    r.stats = stats or {}

    def _probe_forever(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                self.probe_once(client)
                self._stop.wait(PROBE_PERIOD_S)
