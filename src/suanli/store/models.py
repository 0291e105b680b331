"""Tables. Times are UNIX seconds (float) so SQLite and PostgreSQL agree."""

from __future__ import annotations

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
