"""``suanli up``: the API, the scheduling loop and the local executor in one process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import uvicorn

from suanli.api import create_app
from suanli.run.devices import detect
from suanli.service.loop import Loop
from suanli.store.db import Store


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "suanli"


def serve(host: str, port: int, db_url: str | None, data_dir: Path, executor: str) -> None:
    if executor != "local":
        raise SystemExit(f"error: --executor {executor} is not available yet; use local")
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db_url) if db_url else Store.sqlite(data_dir)
    token_file = data_dir / "admin.token"
    if not store.has_admin():
        token = store.create_token("admin", "admin")
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        print(f"admin token (also in {token_file}): {token}", flush=True)
    inventory = detect()
    loop = Loop(store, inventory, data_dir / "logs")
    thread = threading.Thread(target=loop.run_forever, name="suanli-loop", daemon=True)
    thread.start()
    print(
        f"suanli API on http://{host}:{port}  (data: {data_dir}; "
        f"{inventory.cpu_cores} CPU cores, {len(inventory.devices)} devices)",
        flush=True,
    )
    try:
        uvicorn.run(create_app(store, inventory), host=host, port=port, log_level="warning")
    finally:  # uvicorn returns on SIGTERM/SIGINT: stop the loop cleanly
        loop.stop()
        thread.join(timeout=5)
