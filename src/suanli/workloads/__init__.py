"""Built-in workloads: real training and serving jobs the platform runs (need PyTorch).

They are programs, not platform code: they import the catalog (the model they build)
and `suanli.device` (naming, precision), nothing else of the platform.
"""

#: the line prefix workloads report with (then one JSON object); the service reads it
METRIC = "suanli-metric "

#: glibc returns every large freed block to the OS, so each step page-faults its
#: activations back in (a third of a CPU step here); keeping them in the heap is the
#: CPU-side equivalent of a GPU framework's caching allocator. Read at process start,
#: so train_lm re-executes itself with them; a process already running takes the same
#: settings from `keep_freed_heap`.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc's maximum: larger blocks still mmap
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
    "MALLOC_TOP_PAD_": str(2**30),
}

# mallopt(3)'s parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_heap() -> bool:
    """`MALLOC_ENV`'s settings for this process from now on, through glibc's ``mallopt``
    (its value is a C int: the trim threshold is held at 2 GiB, not 1 TiB); False where
    the C library is not glibc and nothing changed.

    serve_lm through ONNX Runtime hands the graph a fresh gather of the cache each step:
    under glibc's defaults a decode step of tiny-llama-40m (batch 8) page-faulted 885-902
    times and took 12.0-13.5 ms on a 2-core EPYC, and 0 times and 10.3-11.3 ms under
    these settings. A process calls it before the work it times: blocks already mapped
    stay where they are.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = (
        (_M_MMAP_THRESHOLD, int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])),
        (_M_TRIM_THRESHOLD, min(int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]), 2**31 - 1)),
        (_M_TOP_PAD, int(MALLOC_ENV["MALLOC_TOP_PAD_"])),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
