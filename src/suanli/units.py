"""Units, stated once.

Capacities and bandwidths in the catalog use SI units as vendors print them:
1 GB = 1e9 bytes, 1 GB/s = 1e9 bytes/s, 1 Gb/s = 1e9 bits/s, 1 TFLOP/s = 1e12
FLOP/s. Where a memory figure is quoted in GiB by software (e.g. nvidia-smi), the
catalog still stores the vendor's GB figure: it is the smaller number, so "fits in
memory" errs on the safe side.
"""

from __future__ import annotations

GB = 1e9
GIB = 2**30
TERA = 1e12
GBPS_TO_BYTES_PER_S = 1e9 / 8  # one Gb/s of a NIC, in bytes/s
US = 1e-6

#: Bytes per element of each numeric format the catalog and perf model know.
BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
