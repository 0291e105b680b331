"""What is asked of the cluster: a task (a pod, or one member of a gang)."""

from __future__ import annotations

from dataclasses import dataclass, field

MILLI = 1000  # one whole device, in the GPU-milli units of Alibaba's traces


@dataclass(slots=True)
class Task:
    """One schedulable unit.

    GPU request, in the convention of Alibaba's openb traces: ``num_gpu`` whole
    devices (``gpu_milli`` = 1000), or a share ``gpu_milli`` < 1000 of one device
    (``num_gpu`` = 1), optionally with ``gpu_mem_mib`` of that device's memory —
    an Ascend vNPU template such as 2 of a 910B's 20 AI cores with 6 GB is
    ``gpu_milli=100, gpu_mem_mib=6144``. ``gpu_spec`` lists the accelerator types allowed (empty =
    any). ``job`` groups the members of a gang; ``min_available`` of them must be
    placed together or none is.
    """

    name: str
    cpu_milli: int = 0
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_mem_mib: int = 0  # device memory a share needs (HAMi gpumem, an Ascend vNPU template)
    gpu_spec: frozenset[str] = frozenset()
    vendor: str = ""
    min_gpu_memory_gb: float = 0.0
    priority: int = 0
    queue: str = "default"
    job: str = ""
    min_available: int = 1
    preemptible: bool = False
    kind: str = "batch"  # train / serve / batch
    arrival_s: float = 0.0
    duration_s: float = 0.0
    work: float = 0.0  # abstract work units (e.g. steps) when duration depends on the chip
    regions: frozenset[str] = frozenset()
    data_region: str = ""  # where its dataset (or checkpoint) is; "" = nowhere in particular
    data_gb: float = 0.0  # how much of it must reach the node's region before it runs
    labels: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)  # labels a node must carry

    @property
    def gpu_request_milli(self) -> int:
        """Total GPU-milli asked for (what "arrived GPU request" counts)."""
        if self.num_gpu == 0:
            return 0
        if self.num_gpu == 1 and 0 < self.gpu_milli < MILLI:
            return self.gpu_milli
        return self.num_gpu * MILLI

    @property
    def shares_gpu(self) -> bool:
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI
