"""What devices this machine has: one detector per vendor tool, each optional.

A detector runs its vendor's query tool (``nvidia-smi``, ``npu-smi``, ``cnmon``,
``hy-smi``) and parses the devices it reports; a missing tool means no devices
of that vendor, never an error. The CPU is always there (psutil). The
results say how to pin a process to each device (the catalog's visibility
variable), so the executor never hard-codes a vendor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from suanli.catalog.loader import accelerators


@dataclass(frozen=True)
class Device:
    index: int
    accelerator: str  # catalog name, or the tool's model string when unknown
    memory_mib: int
    visible_env: str  # e.g. CUDA_VISIBLE_DEVICES
    threads: int = 0  # > 0: a CPU slice (see `cpu_slices`), run with this many threads


@dataclass(frozen=True)
class Inventory:
    cpu_cores: int
    memory_mib: int
    devices: tuple[Device, ...]


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def catalog_name(model: str, vendor: str) -> str:
    """Best catalog match for a tool's model string (e.g. "NVIDIA H100 80GB HBM3")."""
    words = set(re.findall(r"[a-z0-9]+", model.lower()))

    def weight(token: str) -> int:
        # a chip model (h100, a100, 910b3) says more than a capacity (80gb) or a form factor
        return (
            10
            if re.fullmatch(r"[a-z]+\d+[a-z0-9]*|\d+[a-z]\d*", token) and not (token.endswith("gb"))
            else 1
        )

    best, score = model, 0
    for name, acc in accelerators().items():
        if acc.vendor != vendor:
            continue
        hit = sum(weight(t) for t in set(re.findall(r"[a-z0-9]+", name)) & words)
        if hit > score:
            best, score = name, hit
    return best


def parse_nvidia_smi(text: str) -> list[Device]:
    """``nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits``."""
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            out.append(
                Device(
                    int(parts[0]),
                    catalog_name(parts[1], "nvidia"),
                    int(float(parts[2])),
                    "CUDA_VISIBLE_DEVICES",
                )
            )
    return out


def detect_nvidia() -> list[Device]:
    text = _run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    )
    return parse_nvidia_smi(text) if text else []


def parse_npu_smi(text: str) -> list[Device]:
    """``npu-smi info``: table rows such as ``| 0     910B3   | OK ...``."""
    out = []
    for m in re.finditer(r"^\|\s*(\d+)\s+(\w*9\d\d\w*|\w*310\w*)\s+\|", text, re.M):
        model = m.group(2)
        name = catalog_name(f"ascend {model}", "huawei")
        out.append(Device(int(m.group(1)), name, 0, "ASCEND_RT_VISIBLE_DEVICES"))
    return out


def detect_ascend() -> list[Device]:
    text = _run(["npu-smi", "info"])
    return parse_npu_smi(text) if text else []


def detect_cambricon() -> list[Device]:
    text = _run(["cnmon"])
    if not text:
        return []
    return [
        Device(int(m.group(1)), catalog_name(m.group(2), "cambricon"), 0, "MLU_VISIBLE_DEVICES")
        for m in re.finditer(r"^\|\s*(\d+)\s+(MLU\w+)", text, re.M)
    ]


def detect_hygon() -> list[Device]:
    text = _run(["hy-smi"])
    if not text:
        return []
    return [
        Device(int(m.group(1)), catalog_name(m.group(2), "hygon"), 0, "HIP_VISIBLE_DEVICES")
        for m in re.finditer(r"^\s*(\d+)\s+.*?(Z100|K100\w*)", text, re.M)
    ]


#: CPU slices are pseudo-devices: a job asks for them with ``vendor: cpu-slice``
CPU_SLICE_VENDOR = "cpu-slice"
CPU_SLICE_ENV = "SUANLI_CPU_SLICE"


def cpu_slices(spec: str, *, first_index: int = 0) -> tuple[Device, ...]:
    """Pseudo-devices of different speeds carved from this machine's CPU, for trying
    heterogeneity-aware scheduling where no accelerator is: ``"fast:2,slow:1"`` is a
    device of type ``cpu-slice-fast`` whose jobs run 2 math threads and one of type
    ``cpu-slice-slow`` with 1 (``NAME:THREADS[xCOUNT]``). They are not isolated
    hardware: slices share the machine's cores and memory, stated as such wherever
    they show (their type name says ``cpu-slice``)."""
    out: list[Device] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"([a-z][a-z0-9-]{0,30}):(\d{1,3})(?:x(\d{1,3}))?", part)
        if not m or int(m.group(2)) < 1 or (m.group(3) and int(m.group(3)) < 1):
            raise ValueError(
                f"--cpu-slices: {part!r} is not NAME:THREADS[xCOUNT] (e.g. fast:2,slow:1x2)"
            )
        for _ in range(int(m.group(3) or 1)):
            out.append(
                Device(
                    first_index + len(out),
                    f"{CPU_SLICE_VENDOR}-{m.group(1)}",
                    0,
                    CPU_SLICE_ENV,
                    threads=int(m.group(2)),
                )
            )
    return tuple(out)


DETECTORS: dict[str, Callable[[], list[Device]]] = {
    "nvidia": detect_nvidia,
    "ascend": detect_ascend,
    "cambricon": detect_cambricon,
    "hygon": detect_hygon,
}


def detect(detectors: dict[str, Callable[[], list[Device]]] | None = None) -> Inventory:
    """This machine's CPU, memory and devices (every detector whose tool exists)."""
    devices: list[Device] = []
    for fn in (detectors or DETECTORS).values():
        devices.extend(fn())
    cores = (
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (psutil.cpu_count() or 1)
    )
    return Inventory(cores, int(psutil.virtual_memory().total // 2**20), tuple(devices))
