"""Built-in workloads: real training and serving jobs the platform runs (need PyTorch).

They are programs, not platform code: they import the catalog (the model they build)
and `suanli.device` (naming, precision), nothing else of the platform.
"""

#: the line prefix workloads report with (then one JSON object); the service reads it
METRIC = "suanli-metric "

#: glibc returns every large freed block to the OS, so each step page-faults its
#: activations back in (a third of a CPU step here); keeping them in the heap is the
#: CPU-side equivalent of a GPU framework's caching allocator. Read at process start,
#: so train_lm re-executes itself with them, and calibrate measures under them too.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),  # glibc's maximum: larger blocks still mmap
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
    "MALLOC_TOP_PAD_": str(2**30),
}
