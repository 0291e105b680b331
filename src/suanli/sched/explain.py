"""Why a task does not fit, node by node, in the words ``kubectl describe`` uses.

The filters say yes or no per node; a user whose job waits wants the reason:
"0/3 nodes are available: 2 have no h100-sxm, 1 has 0.5 of 4 CPU cores free."
Each node is charged with the first condition it fails, in the order a user would
fix them (where the job may run, what the node is, what is free on it now); the
counts are summed over nodes. ``capacity=True`` asks whether the node could host
the task when empty (a job that no node could *ever* host is refused at submit).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from suanli.cluster.state import ClusterState
from suanli.cluster.task import MILLI, Task
from suanli.sched.plugins_fit import label_refusal


def _node_reason(state: ClusterState, task: Task, i: int, capacity: bool) -> str | None:
    spec = state.specs[i]
    if task.regions and state.sites[state.site[i]].region not in task.regions:
        return f"not in region {' or '.join(sorted(task.regions))}"
    refused = label_refusal(task, spec.labels)
    if refused is not None:
        return refused
    if task.num_gpu:
        if task.gpu_spec and not state.type_mask(task.gpu_spec)[i]:
            return f"have 0 {' or '.join(sorted(task.gpu_spec))}"
        if not task.gpu_spec and spec.gpu_count == 0:
            return "have no devices"
    cpu = state.cpu_cap[i] if capacity else state.cpu_free[i]
    if cpu < task.cpu_milli:
        what = "CPU cores" if capacity else "CPU cores free"
        return f"have {cpu / 1000:g} of {task.cpu_milli / 1000:g} {what}"
    mem = state.mem_cap[i] if capacity else state.mem_free[i]
    if mem < task.memory_mib:
        what = "GiB of memory" if capacity else "GiB of memory free"
        return f"have {mem / 1024:.3g} of {task.memory_mib / 1024:.3g} {what}"
    if task.num_gpu:
        typ = spec.gpu_type
        if task.shares_gpu:
            free = state.gpu_cap[i] if capacity else state.gpu_free[i]
            if not bool(np.any(free >= task.gpu_milli)):
                return f"have no {typ} with {task.gpu_milli / MILLI:g} of a device free"
        else:
            whole = state.gpu_count[i] if capacity else state.full_free[i]
            if whole < task.num_gpu:
                free = "" if capacity else " free"
                return f"have {whole} of {task.num_gpu} {typ}{free}"
    return None


def why_unschedulable(state: ClusterState, task: Task, capacity: bool = False) -> str | None:
    """None when some node fits; else "0/N nodes are available: ..." with counts."""
    reasons: Counter[str] = Counter()
    for i in range(state.num_nodes):
        why = _node_reason(state, task, i, capacity)
        if why is None:
            return None
        reasons[why] += 1
    n = state.num_nodes
    parts = ", ".join(f"{c} {_agree(why, c)}" for why, c in reasons.most_common())
    return f"0/{n} nodes are available: {parts}"


def _agree(why: str, count: int) -> str:
    """ "have ..." for several nodes, "has ..." for one."""
    if count != 1:
        return why
    for plural, singular in (("have ", "has "), ("do not ", "does not ")):
        if why.startswith(plural):
            return singular + why[len(plural) :]
    return why
