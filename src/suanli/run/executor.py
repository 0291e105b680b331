"""What the scheduling loop needs from an executor, whichever runs the jobs.

The loop decides *what* runs and on which node; an executor starts the
members, tells whether they still run and how they ended, and stops them. A
stop is two steps — ``terminate`` (SIGTERM or its equivalent, the job may
checkpoint) and, after the grace period, ``kill`` — so the loop never blocks
for a grace period and a restarted service can finish a stop it did not begin.
A ``Handle`` is plain data stored with the job, so a new service process can
re-attach to members the old one started.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from suanli.cluster.state import NO_REPLICAS_LABEL as NO_REPLICAS_LABEL
from suanli.cluster.state import SHARES_LABEL as SHARES_LABEL
from suanli.errors import SuanliError

#: every node carries its own name under this label (as Kubernetes' kubernetes.io/hostname),
#: so a job can be pinned to one node with a node selector
NODE_LABEL = "suanli.io/node"


class ExecutorUnavailable(SuanliError):
    """The executor could not be reached (its cluster restarting, a node gone): the job
    is not at fault, so the loop puts it back in the queue instead of failing it."""


@dataclass(frozen=True)
class Launch:
    job_id: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    visible_env: str | None = None  # e.g. CUDA_VISIBLE_DEVICES
    devices: tuple[int, ...] = ()
    share: float = 1.0  # of each device: < 1 for a fractional request (``resources.fraction``)
    rank: int = 0
    local_rank: int = 0  # among the gang's members on the same node
    world_size: int = 1
    master_port: int | None = None
    master_addr: str = "127.0.0.1"
    node: str = "local"
    cpu: float = 1.0  # cores (the Ray executor asks Ray for them)
    accelerator: str | None = None  # chip name, for executors that request it by name
    gang: int = 1  # members started together by one executor call (Ray placement group)
    member_nodes: tuple[str, ...] = ()  # with gang > 1: the node of each member
    grace_s: float = 10.0  # between SIGTERM and SIGKILL, for executors that stop themselves
    owner: str = ""  # whose job: the local executor runs it as that owner's OS account
    memory_mib: int = 4096  # what the job asked for, enforced where the kernel allows
    image: str | None = None  # the spec's container image, for executors that run containers


@dataclass(frozen=True)
class Handle:
    """What identifies one running member across service restarts."""

    job_id: str
    pid: int
    start_time: float  # psutil's create_time, to tell a recycled pid apart
    stdout: str
    stderr: str
    node: str = "local"
    rank: int = 0
    devices: tuple[int, ...] = ()
    ref: str = ""  # the executor's own id (Ray submission id); empty for local processes
    group: str = ""  # the local member's cgroup (empty where none was made)
    site: str = ""  # the site whose engine runs it (`suanli.run.sites`); empty: the only one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = list(self.devices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Handle:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["devices"] = tuple(int(x) for x in known.get("devices", ()))
        return cls(**known)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    accelerator: str
    memory_mib: int
    visible_env: str = ""  # how to pin a process to it (CUDA_VISIBLE_DEVICES, ...)
    healthy: bool = True
    threads: int = 0  # > 0: a CPU slice (suanli.run.devices.cpu_slices)


#: where a member's node is reachable from the service (the node's address): what a
#: service replica listens on, so the router reaches it wherever it was placed
NODE_ADDRESS_ENV = "SUANLI_NODE_ADDRESS"
#: the node's address among its labels, as stored (a label: read where rows are read)
ADDRESS_LABEL = "suanli.io/address"


#: what a node may report and still be scheduled on: an attached cluster's answers are a
#: stranger's, and 10^9 devices or 10^30 cores must not exhaust the service or overflow a
#: database column (the API's own bounds for a registered node)
MAX_DEVICES = 4096
MAX_CORES = 1_000_000
MAX_MEMORY_MIB = 2**31 - 1


def node_problem(n: NodeInfo) -> str | None:
    """Why the scheduler cannot take node ``n`` as reported (None: it can)."""
    if not DNS_LABEL.fullmatch(n.name):
        return f"its name {n.name[:80]!r} is not a DNS label"
    if not (0 <= n.cpu_cores <= MAX_CORES and 0 <= n.memory_mib <= MAX_MEMORY_MIB):
        return f"{n.cpu_cores} cores and {n.memory_mib} MiB are out of bounds"
    if len(n.devices) > MAX_DEVICES:
        return f"{len(n.devices)} devices are more than {MAX_DEVICES}"
    return None


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class NodeInfo:
    """A node an executor can run on, as the scheduler sees it."""

    name: str
    cpu_cores: int
    memory_mib: int
    devices: list[DeviceInfo] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    address: str = "127.0.0.1"  # where a gang's rank 0 listens (MASTER_ADDR)


class Executor(Protocol):
    name: str

    def nodes(self) -> list[NodeInfo]: ...
    def start(self, launch: Launch) -> Handle: ...
    def poll(self, h: Handle) -> int | None: ...
    def terminate(self, h: Handle) -> None: ...
    def kill(self, h: Handle) -> None: ...
    def is_alive(self, h: Handle) -> bool: ...
    def logs(self, h: Handle) -> str: ...
