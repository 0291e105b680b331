"""``suanli up``: the API, the scheduling loop and an executor in one process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import uvicorn

from suanli.api import create_app
from suanli.run.devices import detect
from suanli.run.executor import Executor
from suanli.run.local import LocalExecutor
from suanli.service.loop import Loop
from suanli.store.db import Store


def make_executor(kind: str, ray_address: str | None, log_dir: Path) -> Executor:
    if kind == "local":
        return LocalExecutor(log_dir, detect())
    if kind == "ray":
        try:
            from suanli.run.ray_exec import RayExecutor
        except ImportError as exc:
            raise SystemExit(
                "error: the Ray executor needs Ray: pip install 'suanli[ray]'"
            ) from exc
        address = ray_address or os.environ.get("RAY_DASHBOARD_ADDRESS") or "127.0.0.1:8265"
        return RayExecutor(address, log_dir)
    raise SystemExit(f"error: unknown executor {kind!r}; use local or ray")


def serve(
    host: str,
    port: int,
    db_url: str | None,
    data_dir: Path,
    executor: str,
    ray_address: str | None = None,
    calibrate: bool = False,
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    ex = make_executor(executor, ray_address, data_dir / "logs")
    store = Store(db_url) if db_url else Store.sqlite(data_dir)
    token_file = data_dir / "admin.token"
    if not store.has_admin():
        token = store.create_token("admin", "admin")
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        print(f"admin token (also in {token_file}): {token}", flush=True)
    loop = Loop(store, ex, data_dir=data_dir, calibrate_new_nodes=calibrate)
    nodes = ex.nodes()
    thread = threading.Thread(target=loop.run_forever, name="suanli-loop", daemon=True)
    thread.start()
    cores = sum(n.cpu_cores for n in nodes)
    devices = sum(len(n.devices) for n in nodes)
    print(
        f"suanli API on http://{host}:{port}  (data: {data_dir}; {ex.name} executor: "
        f"{len(nodes)} node(s), {cores} CPU cores, {devices} devices)",
        flush=True,
    )
    try:
        uvicorn.run(create_app(store), host=host, port=port, log_level="warning")
    finally:  # uvicorn returns on SIGTERM/SIGINT: stop the loop cleanly
        loop.stop()
        thread.join(timeout=5)
