"""suanli (算力): plan, schedule and run large-model work on heterogeneous accelerators."""

__version__ = "0.1.0"
__all__ = ["__version__"]
