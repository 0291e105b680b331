"""Where suanli keeps its state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def default_data_dir() -> Path:
    """``$SUANLI_DATA_DIR``, else ``$XDG_DATA_HOME/suanli``, else ``~/.local/share/suanli``."""
    if os.environ.get("SUANLI_DATA_DIR"):
        return Path(os.environ["SUANLI_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "suanli"
