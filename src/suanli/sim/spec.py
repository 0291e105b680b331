"""Our own YAML formats for clusters and workloads, and format detection for trace files.

Cluster::

    sites:
      - {name: bj, region: cn-north, pue: 1.2, carbon_g_per_kwh: 550, usd_per_kwh: 0.08}
    nodes:
      - {count: 16, gpu_type: h800-sxm, gpus: 8, cpu: 128, memory_gib: 1024, site: bj,
         usd_per_gpu_hour: 2.0}   # price optional (else the catalog's reference price)

Workload (durations from the perf model: ``tokens`` of training for ``model`` on
each chip type; a job runs only on chips its model fits; ``cpu`` cores and
``memory_gib`` default to 4 cores and 16 GiB per device)::

    jobs:
      - {name: llama-ft, count: 20, model: llama-2-7b, tokens: 2e9, gpus: 8,
         arrival_rate_per_hour: 6, seq_len: 4096}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from suanli.calibration.profile import resolve_accelerator as get_accelerator
from suanli.catalog.loader import get_model
from suanli.cluster.state import NodeSpec, Site
from suanli.cluster.task import MILLI, Task
from suanli.errors import SuanliError
from suanli.perf import TrainLayout, estimate_train, make_system


class SpecError(SuanliError, ValueError):
    """A cluster or workload spec with problems (each named with its path)."""


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read ({exc})") from exc


def read_cluster_yaml(path: Path) -> tuple[list[NodeSpec], list[Site]]:
    doc = _load(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise SpecError(f"{path}: expected 'nodes:' with a list of node groups")
    try:
        sites = [Site(**s) for s in doc.get("sites") or []]
    except TypeError as exc:
        raise SpecError(
            f"{path}: sites: {exc} (fields: name, region, pue, carbon_g_per_kwh, usd_per_kwh)"
        ) from exc
    nodes: list[NodeSpec] = []
    problems = []
    for g, group in enumerate(doc["nodes"]):
        where = f"nodes[{g}]"
        try:
            count = int(group.get("count", 1))
            if count < 0 or int(group.get("gpus", 0)) < 0:
                raise ValueError("count and gpus must be >= 0")
            gpu_type = str(group.get("gpu_type", ""))
            if gpu_type:
                get_accelerator(gpu_type)
            labels = (
                {"usd_per_gpu_hour": str(float(group["usd_per_gpu_hour"]))}
                if "usd_per_gpu_hour" in group
                else {}
            )
            for k in range(count):
                nodes.append(
                    NodeSpec(
                        name=f"{group.get('prefix', gpu_type or 'cpu')}-{g}-{k}",
                        cpu_milli=int(float(group.get("cpu", 64)) * 1000),
                        memory_mib=int(float(group.get("memory_gib", 512)) * 1024),
                        gpu_count=int(group.get("gpus", 0)),
                        gpu_type=gpu_type,
                        site=str(group.get("site", "default")),
                        switch=f"{group.get('site', 'default')}-leaf-{k // 32}",
                        labels=labels,
                    )
                )
        except (SuanliError, ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{where}: {exc}")
    if not problems and not nodes:
        problems.append("nodes: no nodes (every group has count 0?)")
    if problems:
        raise SpecError(f"{path}: " + "; ".join(problems))
    return nodes, sites


def perf_workload(
    path: Path, node_types: list[str], seed: int
) -> tuple[list[Task], dict[tuple[str, str], float]]:
    """Jobs of the YAML workload, and their throughput (tokens/s) on each chip type.

    Each job's throughput per chip comes from `perf.estimate_train` with a
    data-parallel layout over its devices (ZeRO-3 where the states need it).
    """
    doc = _load(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise SpecError(f"{path}: expected 'jobs:' with a list of job groups")
    rng = np.random.default_rng(seed)
    tasks: list[Task] = []
    thr: dict[tuple[str, str], float] = {}
    for g, job in enumerate(doc["jobs"]):
        try:
            model = get_model(str(job["model"]))
            gpus = int(job.get("gpus", 8))
            seq = int(job.get("seq_len", 4096))
            name = str(job.get("name", f"job{g}"))
            for typ in node_types:
                acc = get_accelerator(typ)
                lay = TrainLayout(
                    dp=gpus,
                    zero=3 if gpus > 1 else 0,
                    global_batch=gpus * 4,
                    seq_len=seq,
                    recompute="full",
                )
                est = estimate_train(model, make_system(acc), lay)
                thr[(name, typ)] = est.tokens_per_s if est.fits_in_memory else 0.0
            # only chips the model fits on; none at all makes the job unplaceable
            allowed = frozenset(typ for typ in node_types if thr[(name, typ)] > 0) or frozenset(
                {"(fits no chip)"}
            )
            t = 0.0
            for k in range(int(job.get("count", 1))):
                rate = float(job.get("arrival_rate_per_hour", 1))
                if rate <= 0:
                    raise ValueError("arrival_rate_per_hour must be > 0")
                t += float(rng.exponential(3600.0 / rate))
                tasks.append(
                    Task(
                        name=f"{name}-{k}",
                        cpu_milli=int(float(job.get("cpu", 4 * gpus)) * 1000),
                        memory_mib=int(float(job.get("memory_gib", 16 * gpus)) * 1024),
                        num_gpu=gpus,
                        gpu_milli=MILLI,
                        gpu_spec=allowed,
                        arrival_s=t,
                        work=float(job["tokens"]),
                        kind="train",
                        labels={"workload": name},
                    )
                )
        except (KeyError, ValueError, TypeError, ZeroDivisionError, SuanliError) as exc:
            raise SpecError(f"{path}: jobs[{g}]: {exc!s} (see suanli/sim/spec.py)") from exc
    return tasks, thr
