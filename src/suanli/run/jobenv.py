"""A job's environment: built from an allow-list, never inherited from the service.

The service's own environment may hold secrets (a database URL, cloud
credentials) and settings that are not the job's business, so a job sees only:
a ``PATH`` (this Python's directory first, so ``python3 -m suanli.workloads...``
works), ``HOME`` and ``TMPDIR`` in its private directory, the locale, a few
settings of the machine every job needs (``OPENBLAS_CORETYPE``: older OpenBLAS
builds compute wrong results without it on some CPUs; ``SUANLI_BF16``), the torchrun variables,
``SUANLI_JOB_ID``, the thread counts of the CPU it was given (``OMP_NUM_THREADS`` and
kin, as Ray sets them: a math library that starts one thread per core of the machine
under a quota of one core spends most of it spinning and waiting for the quota), the
device pinning the scheduler chose — every other vendor's
visibility variable set empty, so a CPU job sees no GPU — and the user's own
``env``. The user's ``env`` may not set pinning, torchrun or loader (``LD_*``)
variables: the spec is refused at submit, and they are dropped here too.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the machine's settings every job needs: locale, OpenBLAS's CPU choice, and whether bf16
#: is to be treated as emulated here (suanli.device.BF16_ENV)
PASS_THROUGH = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "SUANLI_BF16",
)
#: thread-pool sizes of the math libraries a job may use; the user's own ``env`` may set them
THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TORCHRUN = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
JOB_ID = "SUANLI_JOB_ID"
#: visibility variables of vendors whose devices may sit in a node even where the catalog
#: names none of them (container runtimes read NVIDIA_VISIBLE_DEVICES)
EXTRA_PINNING = (
    "NVIDIA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "SUANLI_CPU_SLICE",  # suanli.run.devices.CPU_SLICE_ENV: pseudo-devices of CPU threads
)


@functools.cache
def pinning_vars() -> frozenset[str]:
    """Every device-visibility variable: the catalog's chips' and a few runtimes'."""
    from suanli.catalog.loader import accelerators

    names = {a.visible_devices_env for a in accelerators().values() if a.visible_devices_env}
    return frozenset(names | set(EXTRA_PINNING))


def reserved_reason(name: str) -> str | None:
    """Why a user's ``env`` may not set ``name`` (None: it may)."""
    if name.startswith("LD_"):
        return "loader variables (LD_*) cannot be set by a job"
    if name in pinning_vars():
        return "device pinning is set by the scheduler"
    if name in TORCHRUN or name == JOB_ID:
        return "set by the executor for every job"
    return None


def build(
    user_env: dict[str, str],
    job_id: str,
    home: Path,
    visible_env: str | None,
    devices: tuple[int, ...],
    torchrun: dict[str, str],
    cpu_cores: float = 0.0,
) -> dict[str, str]:
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), SYSTEM_PATH]),
        "HOME": str(home),
        "TMPDIR": str(home),
        "LANG": "C.UTF-8",
    }
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    if cpu_cores > 0:
        env.update({k: str(cpu_threads(cpu_cores)) for k in THREADS})
    env.update({k: v for k, v in user_env.items() if reserved_reason(k) is None})
    env.update({k: "" for k in pinning_vars()})  # no device unless the scheduler gave it
    if visible_env:
        env[visible_env] = ",".join(str(d) for d in devices)
    env.update(torchrun)
    env[JOB_ID] = job_id
    return env


def cpu_threads(cpu_cores: float) -> int:
    """Threads for a share of ``cpu_cores``: whole cores, at least one (Ray's rule)."""
    return max(1, int(cpu_cores))
