"""Closing the loop in the service: measured vs predicted for every finished job.

A job that reports a ``suanli-metric`` summary (as the built-in workloads do:
model, layout, device, median step time) is predicted again by the perf model
once it has finished — on the device it really ran on, through the measured
profile of that device when one was saved (``NAME@measured``), else the
catalog chip — and the pair is stored. The correction for a (model family,
chip) is the median ratio measured / predicted over its last runs: a median,
so one noisy run does not swing it, over recent runs, so it follows software
upgrades. The planner and the scheduler's performance-affinity plugin multiply
their predictions by it; the raw perf model stays as it is.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suanli.errors import SuanliError
from suanli.workloads import METRIC

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from suanli.catalog.types import Accelerator
    from suanli.perf.train import TrainEstimate
    from suanli.store.db import Store

WINDOW = 20  # runs a correction looks back over


def summary_of(log_text: str) -> dict[str, Any] | None:
    """The last ``suanli-metric`` summary line of a job's log, if it printed one."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(METRIC):
            try:
                data = json.loads(line[len(METRIC) :])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("summary"):
                return data
    return None


def chip_of(summary: dict[str, Any], data_dir: Path | None = None) -> str | None:
    """The accelerator name to predict with: the saved measured profile, else the catalog."""
    from suanli.calibration.profile import SUFFIX, profile_name, profiles_dir

    name = profile_name(
        {
            "device": "cpu" if summary.get("device") == "cpu" else "cuda",
            "device_name": summary.get("device_name", ""),
            "threads": summary.get("threads", 0),
        }
    )
    if (profiles_dir(data_dir) / f"{name}.json").exists():
        return name + SUFFIX
    from suanli.catalog.loader import accelerators

    return name if name in accelerators() else None


def estimate_summary(summary: dict[str, Any], acc: Accelerator) -> TrainEstimate:
    """Perf's estimate of the step a ``train_lm`` summary describes, on ``acc``.

    train_lm keeps fp32 master weights under bf16 autocast, so every step casts the
    weights (and their gradients back), or runs plain fp32 (no casts) where bf16 is
    emulated; DDP/FSDP reduce fp32 gradients; FSDP shards like ZeRO-3.
    """
    from suanli.catalog.loader import get_model
    from suanli.perf import TrainLayout, estimate_train, make_system

    model = get_model(str(summary.get("model_ref") or summary["model"]))
    world = int(summary.get("world_size", 1))
    precision = summary.get("precision", "bf16")
    lay = TrainLayout(
        dp=world,
        zero=3 if summary.get("parallel") == "fsdp" else 0,
        micro_batch=int(summary["micro_batch"]),
        global_batch=int(summary["micro_batch"]) * world,
        seq_len=int(summary["seq_len"]),
        grad_reduce_dtype="fp32",
        # the precision the job ran (train_lm's auto: fp32 where bf16 is emulated)
        dtype="fp32" if precision == "fp32" else "bf16",
        autocast_weights=precision == "bf16",
    )
    return estimate_train(model, make_system(acc, devices_per_node=max(world, 1)), lay)


def predict(summary: dict[str, Any], data_dir: Path | None = None) -> tuple[str, str, float] | None:
    """(family, chip, predicted step seconds) for a workload summary; None if it cannot be."""
    from suanli.calibration.profile import resolve_accelerator

    chip = chip_of(summary, data_dir)
    if chip is None or "median_step_time_s" not in summary:
        return None
    try:
        acc = resolve_accelerator(chip, data_dir)
        est = estimate_summary(summary, acc)
        family = family_of(str(summary.get("model_ref") or summary["model"]))
    except (SuanliError, KeyError, ValueError, TypeError):
        return None  # a summary perf cannot model is recorded nowhere, not an error
    return family, chip, est.step_time_s


def corrections(
    records: Iterable[tuple[str, str, float, float]], window: int = WINDOW
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (family, chip): the median measured/predicted ratio of the last ``window`` runs.

    ``records`` are (family, chip, measured_s, predicted_s), oldest first.
    """
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for family, chip, measured, predicted in records:
        if measured > 0 and predicted > 0:
            ratios[(family, chip)].append(measured / predicted)
    out = {}
    for key, rs in ratios.items():
        recent = rs[-window:]
        out[key] = {"factor": statistics.median(recent), "runs": len(rs)}
    return out


def family_of(model: str) -> str:
    from suanli.catalog.loader import get_model

    arch = get_model(model)
    return arch.family or arch.name


@functools.cache
def _reference_step_s(model: str, chip: str) -> float | None:
    """Perf's step time of a reference layout (one device, 2k tokens) on a catalog chip."""
    from suanli.catalog.loader import accelerators, get_model
    from suanli.perf import TrainLayout, estimate_train, make_system

    acc = accelerators().get(chip)
    if acc is None:
        return None
    lay = TrainLayout(micro_batch=1, global_batch=1, seq_len=2048)
    return estimate_train(get_model(model), make_system(acc), lay, check=False).step_time_s


def throughput(model: str, chip: str, fixes: dict[tuple[str, str], dict[str, Any]]) -> float:
    """Corrected reference steps per second of ``model`` on ``chip`` (0: unknown chip)."""
    t = _reference_step_s(model, chip)
    if not t:
        return 0.0
    factor = float(fixes.get((family_of(model), chip), {}).get("factor", 1.0))
    return 1.0 / (t * factor)


def stored_corrections(s: Session) -> dict[tuple[str, str], dict[str, Any]]:
    from sqlalchemy import select

    from suanli.store.models import PerfRecordRow

    rows = s.scalars(select(PerfRecordRow).order_by(PerfRecordRow.id))
    return corrections((r.family, r.chip, r.measured_s, r.predicted_s) for r in rows)


def record(store: Store, s: Session, job_id: int, log_text: str, data_dir: Path | None) -> None:
    """Store measured vs predicted for a finished job that reported a workload summary."""
    from suanli.store.models import PerfRecordRow

    summary = summary_of(log_text)
    if summary is None:
        return
    try:
        measured = float(summary["median_step_time_s"])
    except (KeyError, TypeError, ValueError):
        measured = math.nan
    if not (math.isfinite(measured) and measured > 0):
        store.event(
            s,
            job_id,
            "perf",
            "not recorded: the summary's median_step_time_s must be a positive number of "
            f"seconds, got {summary.get('median_step_time_s')!r}",
        )
        return
    got = predict(summary, data_dir)
    if got is None or not (math.isfinite(got[2]) and got[2] > 0):
        return
    family, chip, predicted = got
    factor = float(stored_corrections(s).get((family, chip), {}).get("factor", 1.0))
    s.add(
        PerfRecordRow(
            job_id=job_id,
            family=family,
            chip=chip,
            measured_s=measured,
            predicted_s=predicted,
            at=time.time(),
        )
    )
    store.event(
        s,
        job_id,
        "perf",
        f"{family} on {chip}: measured {measured:.4g} s/step, perf {predicted:.4g} s "
        f"({predicted / measured - 1:+.1%}), with correction x{factor:.3g} "
        f"({predicted * factor / measured - 1:+.1%})",
    )
