"""``suanli up``: the API, the scheduling loop and an executor in one process.

Everything the service writes is private from the moment it exists: it runs
under umask 077, so the data directory, the database (and SQLite's WAL), the
logs and the admin token are its user's alone. Jobs run as other users
(`suanli.run.accounts`) where the service is root; where it is not, they run as
the service's own user, and ``--single-user`` must say that is intended.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import uvicorn
from sqlalchemy.engine import make_url

from suanli.api import create_app
from suanli.api.metrics import Metrics
from suanli.errors import SuanliError
from suanli.market.controller import MarketConfig, MarketController
from suanli.run import accounts, devices, limits
from suanli.run.devices import detect
from suanli.run.executor import Executor
from suanli.run.local import PSEUDO_LABEL, LocalExecutor
from suanli.run.sites import SiteExecutors
from suanli.sched.policies import PolicyConfig
from suanli.service import logs
from suanli.service.controllers import Controller
from suanli.service.loop import Loop
from suanli.service.replicas import ReplicaBook
from suanli.service.services import ServicesController
from suanli.service.sites import SiteController
from suanli.store.db import Store
from suanli.store.models import SiteRow
from suanli.store.vault import Vault

PRIVATE_UMASK = 0o077


class PortInUseError(SuanliError):
    """The address ``suanli up`` was asked to listen on is taken or cannot be had."""


def listen(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` before anything is printed or started, so a clash is the one
    line said (the socket is handed to uvicorn: nothing can take the port between)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is in use: stop what holds it or pass --port"
            ) from None
        raise PortInUseError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --host or --port"
        ) from None
    return sock


def make_executor(
    kind: str,
    ray_address: str | None,
    data_dir: Path,
    single_user: bool = False,
    cpu_slices: str | None = None,
    service: str = "",
) -> Executor:
    """The engine of the site ``suanli up`` starts with: this machine, or one Ray cluster."""
    if kind == "local":
        inventory = detect()
        if cpu_slices:
            extra = devices.cpu_slices(cpu_slices, first_index=len(inventory.devices))
            inventory = replace(inventory, devices=inventory.devices + extra)
        return LocalExecutor(
            data_dir / "logs",
            inventory,
            jobs_dir=data_dir / "jobs",
            accounts=accounts.can_switch_users() and not single_user,
            limits=limits.detect(),
        )
    if kind == "ray":
        address = ray_address or os.environ.get("RAY_DASHBOARD_ADDRESS") or "127.0.0.1:8265"
        return ray_executor(address, data_dir / "logs", service=service)
    raise SystemExit(f"error: unknown executor {kind!r}; use local or ray")


def ray_executor(
    address: str, log_dir: Path, python: str | None = None, service: str = ""
) -> Executor:
    try:
        from suanli.run.ray_exec import RayExecutor
    except ImportError as exc:
        raise SystemExit("error: the Ray executor needs Ray: pip install 'suanli[ray]'") from exc
    return RayExecutor(address, log_dir, python=python, service=service)


def site_factory(
    log_dir: Path, service: str, vault: Vault | None = None
) -> Callable[[SiteRow], Executor]:
    """How the sites controller connects to an attached site's engine, with its token
    (opened from the vault, or read from the service's environment) where it has one."""

    def make(row: SiteRow) -> Executor:
        if row.engine not in ("ray", "kubernetes") or not row.address:
            raise SuanliError(f"site {row.name}: engine {row.engine!r} cannot run jobs here")
        token = site_token(row, vault)
        try:
            if row.engine == "kubernetes":
                from suanli.run.k8s_exec import KubernetesExecutor

                return KubernetesExecutor(
                    row.address,
                    log_dir,
                    token=token,
                    image=row.image or "",
                    namespace=row.namespace or "default",
                    ca_cert=row.ca_cert,
                    service=service,
                    prefix=f"{row.name}-",
                )
            from suanli.run.ray_exec import RayExecutor

            return RayExecutor(
                row.address, log_dir, python=row.python, service=service, token=token
            )
        except Exception as exc:  # its text goes to the site's status: never the token
            raise SuanliError(scrub(str(exc), token)) from None

    return make


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` (an error a client raised may quote its headers)."""
    return text.replace(secret, "[token]") if secret else text


def site_token(row: SiteRow, vault: Vault | None) -> str | None:
    if row.credential:
        if vault is None:
            raise SuanliError(f"site {row.name}: its token is sealed and no vault key is here")
        return vault.open(row.credential)
    if row.credential_env:
        token = os.environ.get(row.credential_env)
        if token and any(c.isspace() for c in token):
            raise SuanliError(f"site {row.name}: ${row.credential_env} must hold one word")
        if not token:
            raise SuanliError(
                f"site {row.name}: its token is referenced as ${row.credential_env}, which "
                "this service's environment lacks; set it and restart, or attach with a token"
            )
        return token
    return None


def service_id(store: Store) -> str:
    """Which service submitted a job to a shared engine: the same across restarts (it
    names the database), different between services (their databases differ)."""
    url = store.engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def database_url(db_url: str | None, db_file: Path | None) -> str | None:
    """The URL from ``--db-file`` (kept out of every process's argv), or ``--db`` where it
    holds no password: ``/proc/<pid>/cmdline`` is readable by every user, jobs included."""
    if db_file is not None:
        try:
            return db_file.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"error: --db-file {db_file}: {exc.strerror}") from exc
    if db_url and make_url(db_url).password:
        raise SystemExit(
            "error: --db holds a password, which every process on this machine can read in "
            "/proc/<pid>/cmdline; write the URL to a file only you can read (chmod 600) "
            "and pass --db-file FILE"
        )
    return db_url


def make_private(data_dir: Path) -> None:
    """Take group and other permissions off the data directory and everything in it but the
    jobs' own directories (a database, token or log written by an older version may be
    0644; job accounts can search the data directory, so such a file would be readable)."""
    jobs = data_dir / "jobs"
    for root, dirs, files in os.walk(data_dir):
        if Path(root) == jobs:
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            path = Path(root, name)
            if path != jobs and not path.is_symlink():
                path.chmod(path.stat().st_mode & 0o700)
    data_dir.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` as 0600 from its creation, atomically (whole or absent)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def serve(
    host: str,
    port: int,
    db_url: str | None,
    data_dir: Path,
    executor: str,
    ray_address: str | None = None,
    calibrate: bool = False,
    db_file: Path | None = None,
    single_user: bool = False,
    market: MarketConfig | None = None,
    policy: PolicyConfig | None = None,
    cpu_slices: str | None = None,
    log_format: str = "text",
) -> None:
    sock = listen(host, port)  # a clash is said before anything else
    logs.setup(log_format)  # job transitions and executor outages, one line each
    os.umask(PRIVATE_UMASK)
    url = database_url(db_url, db_file)
    data_dir.mkdir(parents=True, exist_ok=True)
    make_private(data_dir)  # one made before umask 077, too (its files from then as well)
    store = Store(url) if url else Store.sqlite(data_dir)
    service = service_id(store)  # names this service's jobs on engines it shares
    first = make_executor(executor, ray_address, data_dir, single_user, cpu_slices, service)
    # every site behind one executor: this machine (or the one Ray cluster) under its
    # engine's name, and the sites attached through the API (the sites controller)
    ex = SiteExecutors()
    ex.attach(first.name, first, remote=executor != "local", own=True)
    token_file = data_dir / "admin.token"
    if not store.has_admin():
        token = store.create_token("admin", "admin")
        write_private(token_file, token + "\n")
        print(f"admin token (also in {token_file}): {token}", flush=True)
    per_owner = bool(getattr(ex, "accounts", False))
    if executor == "local" and not per_owner and not single_user:
        print(
            "note: not running as root, so jobs cannot run as other users: only admin "
            "tokens are issued; start with --single-user to run jobs as this user "
            "knowingly, or as root for per-owner accounts",
            flush=True,
        )
    market = market or MarketConfig()
    metrics = Metrics(store)  # one registry: what the loop counts, the app exports
    book = ReplicaBook()  # the services' replicas: the controller fills it, the router reads
    vault = Vault.for_service(data_dir)  # sites' tokens, sealed at rest
    app = create_app(
        store,
        multi_tenant=per_owner or single_user or executor != "local",
        market=market,
        metrics=metrics,
        book=book,
        vault=vault,
    )
    controllers: list[Controller] = [
        SiteController(store, ex, site_factory(data_dir / "logs", service, vault)),
        MarketController(store, market),
        ServicesController(store, book),
    ]
    book.start()
    loop = Loop(
        store,
        ex,
        policy=policy or "priority",
        data_dir=data_dir,
        calibrate_new_nodes=calibrate,
        controllers=controllers,
        metrics=metrics,
    )
    nodes = ex.nodes()
    thread = threading.Thread(target=loop.run_forever, name="suanli-loop", daemon=True)
    thread.start()
    # CPU slices are pseudo-nodes made of this machine's own cores: not more cores
    real = [n for n in nodes if PSEUDO_LABEL not in n.labels]
    cores = sum(n.cpu_cores for n in real)
    devices = sum(len(n.devices) for n in nodes)
    isolation: dict[str, str] = getattr(ex, "isolation", dict)()
    print(
        f"suanli API on http://{host}:{port}  (data: {data_dir}; {first.name} executor: "
        f"{len(real)} node(s), {cores} CPU cores, {devices} devices"
        + (
            f", {len(nodes) - len(real)} CPU-slice pseudo-node(s))"
            if len(real) < len(nodes)
            else ")"
        )
        + "".join(f"\n  {k.split('/')[-1]}: {v}" for k, v in isolation.items())
        + f"\nconsole on http://{host}:{port}/ (sign in with an API token; the admin's is in "
        f"{token_file})",
        flush=True,
    )
    try:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
    finally:  # uvicorn returns on SIGTERM/SIGINT: stop the loop cleanly
        loop.stop()
        thread.join(timeout=5)
        book.stop()
