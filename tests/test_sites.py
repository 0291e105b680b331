"""Two sites, each a real Ray cluster started on this machine, driven by one loop.

Site ``east`` has one ``a100-80gb`` and site ``west`` two (custom resources named
after a catalog chip: no such card is here). The clusters are separate Ray
heads with their own ports and temp dirs (``../shared/RECIPES.md``, "Two Ray
clusters on one machine"); an outage is made by SIGKILL of one cluster's own
process tree, a partition by stopping its dashboard (SIGSTOP) while its jobs run
on. Ray's own record of where each job ran says whether it landed right.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytest.importorskip("ray.job_submission", reason="sites on Ray need `pip install suanli[ray]`")
from suanli.autoscale.service_spec import ServiceSpec
from suanli.jobs.spec import parse_job_spec
from suanli.market import book, ledger
from suanli.market.controller import MarketConfig, MarketController
from suanli.market.money import to_micro
from suanli.run.executor import ADDRESS_LABEL
from suanli.run.sites import SITE_LABEL, SiteExecutors
from suanli.service.loop import Loop
from suanli.service.replicas import ReplicaBook
from suanli.service.services import ServicesController
from suanli.service.sites import SiteController
from suanli.service.up import site_factory
from suanli.store import Store
from suanli.store.models import JobRow, LeaseRow, NodeRow, ServiceRow, SiteRow
from tests.helpers import (
    TINY,
    admin_cli,
    get,
    start_service,
    stop_service,
    suanli,
    submit,
    tiny_service,
)

PY = sys.executable
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
GRACE_S = 4.0  # a site away this long has its jobs requeued (300 s by default)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """One Ray head with ports and a temp dir of its own, stoppable on its own."""

    name: str
    chips: int
    temp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    dash: int = 0
    token: str | None = None  # Ray's token auth on (RAY_AUTH_MODE=token) with this token

    def start(self) -> None:
        """Start the head; a restart keeps its dashboard port (the site's address), so it
        waits until the killed head has let that port go, and tries again on fresh other
        ports if ``ray start`` still fails (saying why, once it gives up)."""
        ray = shutil.which("ray", path=str(Path(PY).parent)) or "ray"
        self.dash = self.dash or _port()
        _wait(lambda: _free(self.dash), f"port {self.dash} free for {self.name}'s head", 60)
        env = {**os.environ, **RAY_ENV}
        if self.token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        for _ in range(3):
            done = subprocess.run(
                self._argv(ray), env=env, capture_output=True, text=True, timeout=180
            )
            if done.returncode == 0:
                return
            self.kill()  # what the failed start left of this cluster only (not `ray stop`)
        raise AssertionError(f"ray start failed for {self.name}: {done.stderr[-3000:]}")

    def _argv(self, ray: str) -> list[str]:
        base = random.randrange(20_000, 40_000, 200)  # a worker port range nobody else has
        argv = [ray, "start", "--head", f"--port={_port()}", f"--dashboard-port={self.dash}"]
        argv += ["--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
        argv += [f"--temp-dir={self.temp}", "--object-store-memory=100000000"]
        argv += [f'--resources={{"a100-80gb": {self.chips}}}', "--disable-usage-stats"]
        argv += [f"--min-worker-port={base}", f"--max-worker-port={base + 100}"]
        for flag in (
            "ray-client-server",
            "node-manager",
            "object-manager",
            "dashboard-agent-listen",
            "dashboard-agent-grpc",
            "metrics-export",
            "runtime-env-agent",
        ):
            argv.append(f"--{flag}-port={_port()}")
        return argv

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.dash}"

    def processes(self) -> list[psutil.Process]:
        """Its own processes: those naming its temp dir, and all their descendants."""
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp in arg for arg in p.info["cmdline"] or []):
                roots.append(p)
        seen = {p.pid: p for p in roots}
        for p in roots:
            try:
                for c in p.children(recursive=True):
                    seen.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                pass
        return list(seen.values())

    def dashboard(self) -> psutil.Process:
        return next(
            p
            for p in self.processes()
            if any("dashboard.py" in a for a in p.cmdline())
            and "agent" not in " ".join(p.cmdline())
        )

    def kill(self) -> None:
        for p in self.processes():
            try:
                p.send_signal(signal.SIGCONT)  # a stopped process dies too
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(self.processes(), timeout=30)

    def ray_jobs(self) -> dict[str, str]:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(f"http://{self.address}")
        return {j.submission_id or "": str(j.status) for j in client.list_jobs()}


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, Cluster]]:
    os.environ.update(RAY_ENV)
    pair = {"east": Cluster("east", 1), "west": Cluster("west", 2)}
    try:
        for c in pair.values():
            c.start()
        yield pair
    finally:
        for c in pair.values():
            c.kill()
            shutil.rmtree(c.temp, ignore_errors=True)


@dataclass
class Rig:
    store: Store
    loop: Loop
    sites: SiteExecutors
    clusters: dict[str, Cluster]
    book: ReplicaBook | None = None

    def until(self, done: Callable[[], bool], what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.loop.tick()
            if done():
                return
            time.sleep(0.1)
        raise AssertionError(f"not reached: {what}")

    def state(self, jid: int) -> str:
        return get(self.store, jid).state

    def log(self, jid: int) -> str:
        files = {Path(str(m["stdout"])) for m in get(self.store, jid).members or []}
        return "".join(f.read_text() for f in files if f.exists())

    def site_of(self, jid: int) -> set[str]:
        return {str(m["site"]) for m in get(self.store, jid).members or []}

    def events(self, jid: int) -> list[str]:
        return [f"{e.kind}: {e.message}" for e in self.store.events(jid)]


def _rig(
    clusters: dict[str, Cluster],
    tmp_path: Path,
    policy: str,
    owners: dict[str, str] | None = None,
    market: bool = False,
    book: ReplicaBook | None = None,
) -> Iterator[Rig]:
    store = Store.sqlite(tmp_path)
    sites = SiteExecutors(timeout_s=5.0)
    service = f"test-{tmp_path.name}"  # strays are this store's jobs only
    controllers: list[Any] = [
        SiteController(store, sites, site_factory(tmp_path / "logs", service))
    ]
    if market:
        controllers.append(MarketController(store, MarketConfig(every_s=0.0)))
    if book is not None:
        controllers.append(ServicesController(store, book))
    loop = Loop(store, sites, policy, tick_s=0.1, grace_s=3.0, controllers=controllers)
    with store.tx() as s:
        for name, c in clusters.items():
            s.add(
                SiteRow(
                    name=name,
                    owner=(owners or {}).get(name, "admin"),
                    region=f"cn-{name}",
                    pue=1.2,
                    carbon_g_per_kwh=500.0 if name == "east" else 100.0,
                    power_price_per_kwh=0.1,
                    updated_at=time.time(),
                    engine="ray",
                    address=c.address,
                    grace_s=GRACE_S,
                )
            )
    rig = Rig(store, loop, sites, clusters)
    rig.until(lambda: len(_nodes(store)) == 2, "both sites attached and their nodes learned")
    yield rig
    for jid in _live(store):  # leave the clusters empty for the next test
        with store.tx() as s:
            row = s.get(JobRow, jid)
            assert row is not None
            row.cancel_requested = True
    rig.until(lambda: not _live(store), "every job ended", timeout=60)


@pytest.fixture()
def rig(clusters: dict[str, Cluster], tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(clusters, tmp_path, "priority")


@pytest.fixture()
def provider_rig(clusters: dict[str, Cluster], tmp_path: Path) -> Iterator[Rig]:
    """West attached by its provider ``prov``, with the market running."""
    yield from _rig(clusters, tmp_path, "priority", owners={"west": "prov"}, market=True)


@pytest.fixture()
def with_services(clusters: dict[str, Cluster], tmp_path: Path) -> Iterator[Rig]:
    """The two sites with the services controller (its replica book in ``rig.book``)."""
    book = ReplicaBook()
    for rig in _rig(clusters, tmp_path, "priority", book=book):
        rig.book = book
        yield rig


@pytest.fixture()
def site_aware(clusters: dict[str, Cluster], tmp_path: Path) -> Iterator[Rig]:
    """The two sites under the ``site-aware`` policy (cost, data and queueing delay)."""
    yield from _rig(clusters, tmp_path, "site-aware")


def _nodes(store: Store) -> dict[str, NodeRow]:
    with store.tx() as s:
        return {n.name: n for n in s.query(NodeRow) if n.heartbeat_at > time.time() - 5}


def _live(store: Store) -> list[int]:
    with store.tx() as s:
        rows = s.query(JobRow).filter(JobRow.state.in_(("queued", "running", "preempted")))
        return [r.id for r in rows]


def test_each_site_reports_its_own_nodes_and_a_job_pinned_to_a_region_runs_there(
    rig: Rig,
) -> None:
    nodes = _nodes(rig.store)
    assert sorted(n.site or "" for n in nodes.values()) == ["east", "west"]
    assert all(n.executor == "ray" for n in nodes.values())
    assert {n.site: len(n.devices) for n in nodes.values()} == {"east": 1, "west": 2}
    assert {n.labels[SITE_LABEL] for n in nodes.values()} == {"east", "west"}
    address = {n.site: n.labels[ADDRESS_LABEL] for n in nodes.values()}  # Ray's node IPs
    # `python` is resolved on the site as it is here: the service's Python, with suanli
    cmd = ["python", "-c", "import os, suanli, sys; print('suanli from', sys.executable, "
           "'on', os.environ['SUANLI_NODE_ADDRESS'])"]  # fmt: skip
    jobs = {
        region: submit(rig.store, {"command": cmd, "regions": [f"cn-{region}"]})
        for region in ("west", "east")
    }
    rig.until(lambda: all(rig.state(j) == "succeeded" for j in jobs.values()), "both ran")
    for site, jid in jobs.items():
        assert rig.site_of(jid) == {site}
        ref = str((get(rig.store, jid).members or [])[0]["ref"])
        assert ref in rig.clusters[site].ray_jobs()  # the site's own Ray ran it
        text = rig.log(jid)
        ran = re.search(r"suanli from (\S+) on (\S+)", text)
        assert ran and Path(ran.group(1)).parent == Path(PY).parent, text  # this venv's
        assert ran.group(2) == address[site], text  # where a replica there would listen
        assert not text.startswith("Running entrypoint"), text  # Ray's own line is left out


def test_a_gang_never_spans_sites(rig: Rig) -> None:
    gang = "import os; print('member', os.environ['RANK'], flush=True)"
    two = submit(
        rig.store,
        {"command": [PY, "-c", gang], "gang": 2, "resources": {"accelerator": "a100-80gb"}},
    )
    rig.until(lambda: rig.state(two) == "succeeded", "the gang of two ran")
    assert rig.site_of(two) == {"west"}  # east has one chip: both members went west
    # three chips exist, but no one site has three: it waits, whole, and says why
    three = submit(
        rig.store,
        {"command": [PY, "-c", gang], "gang": 3, "resources": {"accelerator": "a100-80gb"}},
    )
    rig.until(lambda: any("never spans sites" in e for e in rig.events(three)), "the gang's reason")
    assert rig.state(three) == "queued"


def test_a_provider_sells_its_attached_sites_device_and_the_buyers_job_runs_there(
    provider_rig: Rig,
) -> None:
    """The attached site's nodes are its provider's: ``prov`` offers a west device on
    the market, alice's order leases it, and her job for the order runs on the west's
    Ray; the east (the operator's, attached by the admin) is not ``prov``'s to sell."""
    rig = provider_rig
    owners = {n.site: n.owner for n in _nodes(rig.store).values()}
    assert owners == {"west": "prov", "east": "admin"}
    with rig.store.tx() as s:
        ledger.transfer(
            s, "dep", ledger.DEPOSITS, "alice", to_micro(10), "deposit", "d", time.time()
        )
        offer = book.create_offer(s, "prov", "a100-80gb", 2, to_micro(2.0), "on-demand", 2)
        assert {u["node"] for u in offer.units} == {
            n for n, row in _nodes(rig.store).items() if row.site == "west"
        }
        with pytest.raises(book.MarketError):  # three devices: only west's two are prov's
            book.create_offer(s, "prov", "a100-80gb", 1, to_micro(2.0), "on-demand", 1)
        order = book.create_order(
            s, "alice", "a100-80gb", 1, to_micro(3.0), "on-demand", 1.0, [], 1.0
        ).id
    rig.until(lambda: _leases(rig.store) == [("prov", "alice", "active")], "the lease")
    spec = parse_job_spec(
        {"name": "bought", "command": [PY, "-c", "print('on a leased device')"], "order": order,
         "resources": {"accelerator": "a100-80gb"}}
    ).model_dump()  # fmt: skip
    with rig.store.tx() as s:
        jid = rig.store.add_job(s, spec, "alice").id
    rig.until(lambda: rig.state(jid) == "succeeded", "the buyer's job ran")
    assert rig.site_of(jid) == {"west"} and "on a leased device" in rig.log(jid)


def _leases(store: Store) -> list[tuple[str, str, str]]:
    with store.tx() as s:
        return [(r.provider, r.buyer, r.state) for r in s.query(LeaseRow)]


def test_a_service_replica_on_a_ray_site_is_reached_at_its_nodes_address(
    with_services: Rig, tmp_path: Path
) -> None:
    """A serve_lm replica placed on a Ray site listens on that node's address (Ray's
    node IP here, not the loopback the service runs on), and the prober reaches it
    there and gets the replica's proof: the router can send it requests."""
    rig = with_services
    assert rig.book is not None
    spec = ServiceSpec.model_validate(tiny_service(tmp_path))
    with rig.store.tx() as s:
        s.add(ServiceRow(name="chat", owner="admin", spec=spec.model_dump(), created_at=0,
                         updated_at=0))  # fmt: skip
    book = rig.book
    nodes = {n.name: n.labels[ADDRESS_LABEL] for n in _nodes(rig.store).values()}

    def ready() -> bool:
        with httpx.Client() as client:
            book.probe_once(client)
        return any(r.ready for r in book.of("chat"))

    rig.until(ready, "the replica answers the prober", timeout=180)
    (replica,) = book.of("chat")
    host = replica.address.rsplit(":", 1)[0]
    assert host in nodes.values(), (replica.address, nodes)
    assert replica.stats.get("proof")  # serve_lm itself, not whatever holds the port
    with rig.store.tx() as s:  # its replica goes with it (the rig then waits for that)
        s.delete(s.get(ServiceRow, "chat"))


def test_a_restarted_service_stops_what_a_site_still_ran_for_it(
    clusters: dict[str, Cluster], tmp_path: Path
) -> None:
    """A service that crashed after starting a Ray job but before storing the start
    comes back: once it attaches the site, what the site runs for this service that no
    stored job holds is stopped (the first sweep), and nothing else there is touched."""
    from ray.job_submission import JobSubmissionClient

    east = JobSubmissionClient(f"http://{clusters['east'].address}")
    sleep = f"{PY} -c 'import time; time.sleep(600)'"
    stray = east.submit_job(entrypoint=sleep, metadata={"suanli_service": f"test-{tmp_path.name}"})
    other = east.submit_job(entrypoint=sleep, metadata={"suanli_service": "another-service"})
    rigs = _rig(clusters, tmp_path, "priority")
    rig = next(rigs)  # the service starts: the sites attach
    try:
        rig.until(lambda: "STOPPED" in clusters["east"].ray_jobs()[stray], "the stray stopped")
        assert "RUNNING" in clusters["east"].ray_jobs()[other]  # another service's: kept
    finally:
        east.stop_job(other)
        next(rigs, None)


def test_a_job_queues_for_the_busy_site_by_its_data_rather_than_move_it(
    site_aware: Rig,
) -> None:
    """East's one device runs a job bound there for at most 60 s; a job whose 5 TB are
    in the east would take 11 hours to move them west, where two devices are free: it
    waits for the east, says so, and runs there once the device frees."""
    rig = site_aware
    a100 = {"accelerator": "a100-80gb"}
    sleep = [PY, "-c", "import time; time.sleep(600)"]
    first = submit(
        rig.store,
        {"command": sleep, "regions": ["cn-east"], "resources": a100, "max_runtime_s": 60},
    )
    rig.until(lambda: rig.state(first) == "running", "the east's device taken")
    heavy = submit(
        rig.store,
        {
            "command": [PY, "-c", "print('by its data')"],
            "resources": a100,
            "data": {"region": "cn-east", "size_gb": 5000},
        },
    )
    rig.until(
        lambda: any("waiting for site east" in e for e in rig.events(heavy)),
        "the heavy job's reason",
    )
    assert rig.state(heavy) == "queued"  # while the west's two devices stand free
    with rig.store.tx() as s:
        row = s.get(JobRow, first)
        assert row is not None
        row.cancel_requested = True
    rig.until(lambda: rig.state(heavy) == "succeeded", "the heavy job ran")
    assert rig.site_of(heavy) == {"east"}


def _train(tmp: Path, steps: int) -> list[str]:
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    argv = [PY, "-m", "suanli.workloads.train_lm", "--model", str(cfg), "--steps", str(steps)]
    argv += ["--seq-len", "32", "--micro-batch", "2", "--precision", "fp32"]
    return [*argv, "--ckpt-dir", str(tmp / "ckpt"), "--ckpt-every", "50"]


def test_attach_schedule_outage_requeue_and_resume_through_the_cli_against_suanli_up(
    clusters: dict[str, Cluster], tmp_path: Path
) -> None:
    """The operator's path, end to end: `suanli up` on this machine, two Ray clusters
    attached with `suanli site attach`, a training job that loses its site and finishes
    on the other from its checkpoint, and the site back with nothing run twice."""
    port, data = _port(), tmp_path / "data"
    svc = start_service(data, port, "--single-user")
    try:
        env, cli = admin_cli(data, port)

        def sites() -> dict[str, dict[str, object]]:
            return {s["name"]: s for s in json.loads(cli("sites", "--json"))}

        refused = suanli("site", "attach", "east", "--ray-address", "127.0.0.1:1", env=env)
        assert refused.returncode == 2 and "--region is required" in refused.stderr, refused
        for name, c in clusters.items():
            said = cli(
                "site",
                "attach",
                name,
                "--ray-address",
                c.address,
                "--region",
                f"cn-{name}",
                "--grace",
                str(GRACE_S),
            )
            assert f"attached site {name} in cn-{name}; ray at {c.address}" in said
        _wait(lambda: all(s["status"] == "ready" for s in sites().values()), "both ready")

        def node_sites() -> list[str]:
            return sorted(n["site"] or "-" for n in json.loads(cli("nodes", "--json")))

        _wait(lambda: node_sites() == ["-", "east", "west"], "their nodes, and this machine's")
        spec = tmp_path / "train.yaml"
        spec.write_text(
            json.dumps(
                {
                    "name": "train",
                    "command": _train(tmp_path, 1200),
                    "regions": ["cn-east", "cn-west"],  # either site, never this machine
                    "resources": {"cpu": 1},
                }
            )
        )
        jid = int(json.loads(cli("submit", str(spec), "--json"))["id"])

        def job() -> dict[str, object]:
            return dict(json.loads(cli("job", str(jid), "--json")))

        def site_now() -> set[str]:
            return set(job()["sites"])  # type: ignore[call-overload]

        # its first checkpoint (step 50), seen at once: reading the logs through the CLI
        # under load once took so long that the job had trained all 1,200 steps first
        ckpt = tmp_path / "ckpt" / "rank0.pt"
        _wait(ckpt.exists, "trains past its first checkpoint")
        (lost,) = site_now()
        other = "west" if lost == "east" else "east"
        clusters[lost].kill()  # the whole site: head, raylet, workers and the job itself
        _wait(lambda: site_now() == {other} and job()["state"] == "running", "moved", 180)
        shown = cli("site", "show", lost)
        assert "state away" in shown and "grace 4 s" in shown, shown
        _wait(lambda: job()["state"] == "succeeded", "finished on the other site", 300)
        text = cli("logs", str(jid))
        resumed = re.findall(r"resumed from .* at step (\d+)", text)
        assert resumed and int(resumed[-1]) >= 50, text[-1500:]  # not from the start
        assert '"steps": 1200' in text
        events = json.loads(cli("job", str(jid), "--json"))["events"]
        said = [e["message"] for e in events]
        assert any(f"site {lost} unreachable" in m and "requeued" in m for m in said), said
        # the site comes back (a fresh cluster at the same address): re-attached, nothing
        # of this service runs there twice
        clusters[lost].start()
        _wait(lambda: sites()[lost]["status"] == "ready", "the site is back", 180)
        assert not [j for j, st in clusters[lost].ray_jobs().items() if "RUNNING" in st]
        # a site whose jobs ended is detached with its nodes
        assert "deleted site" in cli("site", "delete", other)
        assert other not in sites()
    finally:
        stop_service(svc)


def _wait(done: Callable[[], bool], what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if done():
            return
        time.sleep(0.3)
    raise AssertionError(f"not reached: {what}")


def _site_status(store: Store, name: str) -> str | None:
    with store.tx() as s:
        row = s.get(SiteRow, name)
        return row.status if row else None


def test_a_partitioned_site_gets_its_job_requeued_and_stopped_there_when_it_answers(
    rig: Rig,
) -> None:
    sleeper = [PY, "-c", "import time; print('working', flush=True); time.sleep(600)"]
    job = submit(rig.store, {"command": sleeper, "resources": {"cpu": 1}})
    rig.until(lambda: "working" in rig.log(job), "it runs")
    (cut,) = rig.site_of(job)
    first = str((get(rig.store, job).members or [])[0]["ref"])
    dashboard = rig.clusters[cut].dashboard()
    dashboard.suspend()  # the head stops answering; the job there runs on
    try:
        rig.until(
            lambda: rig.state(job) == "running" and rig.site_of(job) != {cut},
            "requeued onto the other site",
        )
    finally:
        dashboard.resume()
    assert "RUNNING" in rig.clusters[cut].ray_jobs()[first]  # both run while it is cut off
    rig.until(
        lambda: "STOPPED" in rig.clusters[cut].ray_jobs()[first],
        "the site answers again and its copy is stopped",
    )
    assert rig.state(job) == "running"  # the requeued one runs on


def test_a_ray_log_reads_as_the_job_wrote_it() -> None:
    from suanli.run.ray_exec import clean_log

    raw = (
        "Running entrypoint for job suanli-3-ab12cd34: python train.py\n"
        "2026-12-03 19:40:01,123\tINFO worker.py:1821 -- Connecting to existing Ray cluster\n"
        "\x1b[36m(run_member pid=77)\x1b[0m step 1 loss 2.5\n"
        "2026-12-03 19:40:02,456\tWARNING util.py:12 -- a warning the job may care about\n"
    )
    assert clean_log(raw) == (
        "(run_member pid=77) step 1 loss 2.5\n"
        "2026-12-03 19:40:02,456\tWARNING util.py:12 -- a warning the job may care about\n"
    )
