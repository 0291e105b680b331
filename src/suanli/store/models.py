"""Tables. Times are UNIX seconds (float) so SQLite and PostgreSQL agree."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "preempted")
#: the owner of what the service itself creates (executor nodes, calibration jobs); the
#: colon keeps it apart from every token's owner (see ``OWNER`` in the API)
SYSTEM_OWNER = "system:executor"


class Base(DeclarativeBase):
    pass


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # admin / provider / user
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, object]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    devices: Mapped[str | None] = mapped_column(String(64), nullable=True)  # "node:0,1 ..."
    # where each gang member runs (executor handles, see suanli.run.executor.Handle):
    # re-attached after a restart by pid + start time (local) or Ray submission id
    members: Mapped[list[dict[str, object]] | None] = mapped_column(JSON, nullable=True)
    # a stop in progress (SIGTERM sent): why ("cancel", "timeout", "preempt:<job>",
    # "member-failed") and when SIGKILL follows
    stop_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stop_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)  # a retry's backoff
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # a preemption another controller asked for (a spot lease reclaimed, a lease ended):
    # the jobs controller begins it, with this grace, as it does the scheduler's own
    preempt_reason: Mapped[str | None] = mapped_column(String(128), nullable=True)
    preempt_grace_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the service this job is a replica of (set by the services controller only)
    service: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)


def held_devices(members: Iterable[list[dict[str, object]] | None]) -> set[tuple[str, int]]:
    """(node, device index) pairs the given jobs' members hold (``JobRow.members`` of
    each job), for what is busy now: the market's free units, the metrics' allocation."""
    return {
        (str(m.get("node")), int(d))
        for ms in members
        for m in ms or []
        for d in m.get("devices") or []  # type: ignore[attr-defined]
    }


class ServiceRow(Base):
    """An endpoint with replicas: its spec (``suanli.autoscale.spec.ServiceSpec``), the
    count a person pinned (``suanli scale``) or the autoscaler wants, and what it saw."""

    __tablename__ = "services"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, object]] = mapped_column(JSON)
    pinned: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    desired: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    observed: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True, default=None)
    #: [t_s, arrivals/s, period_s] per decision period, the last hour: the forecasts' past
    rates: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True, default=None)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)  # replicas' time so far
    device_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class JobEventRow(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class QueueRow(Base):
    """A share of the cluster: weight, quota (GPU-milli per device type, "*" for all)."""

    __tablename__ = "queues"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)
    quota_milli: Mapped[dict[str, int]] = mapped_column(JSON)
    reclaimable: Mapped[bool] = mapped_column()


class SiteRow(Base):
    """A place with power: what energy costs there and how clean it is."""

    __tablename__ = "sites"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    region: Mapped[str] = mapped_column(String(63))
    pue: Mapped[float] = mapped_column(Float)
    carbon_g_per_kwh: Mapped[float] = mapped_column(Float)
    power_price_per_kwh: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: the engine suanli runs jobs with there (``ray``); None: a place only, whose nodes an
    #: admin places in it or a provider registers
    engine: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)
    address: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    python: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    #: how long it may be unreachable before its running jobs are requeued elsewhere
    grace_s: Mapped[float] = mapped_column(Float, default=300.0)
    #: how much warning the site gives before it takes capacity back (a spot pool's, a
    #: provider's reclaim): a stop there gives a job at most this grace; None: no limit
    preemption_notice_s: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    seen_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    away_since: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    status: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    #: the engine's token, sealed by the service's vault (`suanli.store.vault`), or the
    #: name of the service's environment variable holding it; never shown
    credential: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    credential_env: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    #: a Kubernetes site's: the namespace its Volcano Jobs go to, the image they run in
    #: unless a job names its own, and the API server's CA certificate (PEM; public)
    namespace: Mapped[str | None] = mapped_column(String(63), nullable=True, default=None)
    image: Mapped[str | None] = mapped_column(String(255), nullable=True, default=None)
    ca_cert: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)


class NodeRow(Base):
    """A machine: its devices (index, accelerator, memory, health), CPU, memory, labels.

    ``executor`` says who runs jobs there: ``local`` (this machine), ``ray`` (a node
    of the connected Ray cluster) or ``agent`` (registered by a provider through
    the API; its heartbeat says it is alive).
    """

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    site: Mapped[str | None] = mapped_column(ForeignKey("sites.name"), nullable=True)
    executor: Mapped[str] = mapped_column(String(16))
    cpu_cores: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    heartbeat_at: Mapped[float] = mapped_column(Float)


def member_chips(s: Session, members: list[dict[str, object]] | None) -> list[str | None]:
    """The chip of each device a job's members hold, member by member and in order (None
    where the node or device is no longer registered): what its time is priced by."""
    out: list[str | None] = []
    for m in members or []:
        node = s.get(NodeRow, str(m.get("node")))
        chips = {int(str(d["index"])): str(d["accelerator"]) for d in node.devices} if node else {}
        out += [chips.get(int(d)) for d in m.get("devices") or []]  # type: ignore[attr-defined]
    return out


class PerfRecordRow(Base):
    """A finished job's measured step time beside what the perf model predicted for it."""

    __tablename__ = "perf_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    family: Mapped[str] = mapped_column(String(63))  # the model family (catalog `family`)
    chip: Mapped[str] = mapped_column(String(127))  # accelerator, or NAME@measured
    measured_s: Mapped[float] = mapped_column(Float)
    predicted_s: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)


# --- the market ---------------------------------------------------------------------
#: money columns are integer micro-dollars (see suanli.market.money); never floats
MARKET_STATES = ("open", "filled", "cancelled", "expired", "withdrawn")


class AccountRow(Base):
    """A ledger account's terms. Its balance is never stored: it is the sum of its entries."""

    __tablename__ = "accounts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    credit_limit_micro: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)


class OfferRow(Base):
    """Devices (or CPU cores) a provider sells: one type, one region, a window, a price."""

    __tablename__ = "market_offers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    accelerator: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(63))
    site: Mapped[str | None] = mapped_column(String(63), nullable=True)
    mode: Mapped[str] = mapped_column(String(16))  # on-demand / reserved / spot
    price_micro: Mapped[int] = mapped_column(BigInteger)  # per unit-hour; the floor for spot
    #: the units for sale: [{"node": name, "index": device index or CPU core slot}]
    units: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    starts_at: Mapped[float] = mapped_column(Float)
    ends_at: Mapped[float] = mapped_column(Float)
    min_term_s: Mapped[float] = mapped_column(Float, default=0.0)  # reserved: the commitment
    notice_s: Mapped[float] = mapped_column(Float, default=0.0)  # spot: warning before reclaim
    state: Mapped[str] = mapped_column(String(16), index=True, default="open")
    auto: Mapped[bool] = mapped_column(default=False)  # offered by the idle-capacity policy
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class OrderRow(Base):
    """A buyer's wish: a type and count, regions, how long, at most what price, which mode."""

    __tablename__ = "market_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    buyer: Mapped[str] = mapped_column(String(64), index=True)
    accelerator: Mapped[str] = mapped_column(String(63))
    count: Mapped[int] = mapped_column(Integer)
    regions: Mapped[list[str]] = mapped_column(JSON)
    duration_s: Mapped[float] = mapped_column(Float)
    #: spot: what is left of the duration after leases that were reclaimed
    remaining_s: Mapped[float] = mapped_column(Float)
    max_price_micro: Mapped[int] = mapped_column(BigInteger)  # per unit-hour
    mode: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True, default="open")
    expires_at: Mapped[float] = mapped_column(Float)  # an order not filled by then lapses
    workload: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """Units of one offer held by one order for a window: capacity the scheduler honours."""

    __tablename__ = "market_leases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("market_orders.id"), index=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("market_offers.id"), index=True)
    buyer: Mapped[str] = mapped_column(String(64), index=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    accelerator: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(63))
    mode: Mapped[str] = mapped_column(String(16))
    price_micro: Mapped[int] = mapped_column(BigInteger)  # per unit-hour now (spot: clearing)
    units: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    starts_at: Mapped[float] = mapped_column(Float)
    ends_at: Mapped[float] = mapped_column(Float)
    #: active -> reclaiming (spot: outbid or taken back; ends at ends_at) -> ended
    state: Mapped[str] = mapped_column(String(16), index=True, default="active")
    end_reason: Mapped[str | None] = mapped_column(String(128), nullable=True)
    billed_until: Mapped[float] = mapped_column(Float)
    #: the most this lease may ever cost the buyer (held against its credit at the match)
    hold_micro: Mapped[int] = mapped_column(BigInteger)
    used_unit_s: Mapped[float] = mapped_column(Float, default=0.0)  # metered from real jobs
    metered_at: Mapped[float] = mapped_column(Float)


class LedgerEntryRow(Base):
    """One leg of a transfer. Append-only; a transfer's two legs share ``txn`` and sum to 0.

    ``txn`` is the transfer's idempotency key (``lease:7:bill:1700000000``): the unique
    (txn, leg) makes booking the same transfer twice impossible, even after a crash.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (UniqueConstraint("txn", "leg", name="uq_ledger_txn_leg"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    txn: Mapped[str] = mapped_column(String(160), index=True)
    leg: Mapped[int] = mapped_column(Integer)  # 0: debit, 1: credit
    account: Mapped[str] = mapped_column(String(64), index=True)
    amount_micro: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # charge / fee / deposit / refund
    ref: Mapped[str] = mapped_column(String(64))  # what it is for: "lease:7", "order:3"
    memo: Mapped[str] = mapped_column(String(256), default="")
    at: Mapped[float] = mapped_column(Float, index=True)


class PriceRow(Base):
    """A spot clearing: the price per unit-hour in one (type, region), and units sold."""

    __tablename__ = "market_prices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accelerator: Mapped[str] = mapped_column(String(63), index=True)
    region: Mapped[str] = mapped_column(String(63))
    price_micro: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: no sale
    volume: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float, index=True)


class IdlePolicyRow(Base):
    """A provider's rule: offer devices idle longer than ``idle_s`` as spot at ``floor``."""

    __tablename__ = "market_idle_policies"
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    idle_s: Mapped[float] = mapped_column(Float)
    floor_micro: Mapped[int] = mapped_column(BigInteger)
    notice_s: Mapped[float] = mapped_column(Float)
    hours: Mapped[float] = mapped_column(Float)  # how long each auto offer stands
