"""Kubernetes clusters with Volcano as sites: Volcano Jobs applied with the real
``kubernetes`` client.

No API server can run here, so two things are tested, and said so: every Volcano Job
the executor renders is checked against Volcano's CRD schema (``../shared/schemas``),
and the executor, the sites controller and the loop are driven against a stand-in API
server (`tests.k8s_standin`, NOT a real cluster) that checks the token and the schema
and reports how each Job ends as a test tells it.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient

from suanli.api.app import create_app
from suanli.run.executor import Handle, Launch
from suanli.run.k8s_exec import (
    SERVICE_LABEL,
    KubernetesExecutor,
    _unplaced,
    node_name,
    volcano_job,
)
from suanli.run.kubeconfig import KubeconfigError, read_kubeconfig
from suanli.run.sites import SITE_LABEL, SiteExecutors
from suanli.service.loop import Loop
from suanli.service.sites import SiteController
from suanli.service.up import site_factory
from suanli.store import Store
from suanli.store.models import JobRow, NodeRow, SiteRow
from suanli.store.vault import Vault
from tests.helpers import admin_cli, get, start_service, stop_service, suanli, submit
from tests.k8s_standin import StandIn, gpu_node, volcano_schema

TOKEN = "k8s-sa-token-abc123"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def _until(tick: Callable[[], None], done: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + 60  # a cap for a hang only: each step waits for an event
    while time.monotonic() < end:
        tick()
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached: {what}")


def test_a_launch_renders_as_a_volcano_job_the_crd_accepts(shared_dir: Path) -> None:
    schema = volcano_schema(shared_dir)
    gang = Launch(
        "7",
        [sys.executable, "-m", "suanli.workloads.train_lm", "--echo", "$(HOME)"],
        {"A": "1"},
        cwd="/work",
        devices=(0,),
        share=0.5,
        cpu=2.5,
        gang=2,
        member_nodes=("east-a", "east-b"),
        grace_s=12,
        memory_mib=2048,
    )
    job = volcano_job(gang, "suanli-7-abc", "reg/suanli:1", ["a", "b"], "nvidia.com/gpu", "svc")
    jsonschema.validate(job, schema)
    spec = job["spec"]
    assert spec["minAvailable"] == 2 and spec["maxRetry"] == 1  # placed whole, no restarts
    assert spec["plugins"] == {"svc": ["--publish-not-ready-addresses=true"]}
    assert job["metadata"]["labels"][SERVICE_LABEL] == "svc"
    for rank, (task, host) in enumerate(zip(spec["tasks"], ["a", "b"], strict=True)):
        pod = task["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": host}  # suanli's choice
        assert pod["terminationGracePeriodSeconds"] == 12
        assert pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "suanli-7-abc-m0-0.suanli-7-abc"  # the svc plugin's name
        assert env["A"] == "1" and env["OMP_NUM_THREADS"] == "2"
        # the service's own Python is the image's there; a $( ) stays the program's
        assert c["command"][0] == "python" and c["command"][-1] == "$$(HOME)"
        assert c["image"] == "reg/suanli:1" and c["workingDir"] == "/work"
        # half a GPU is HAMi's share, as `suanli export k8s` renders it
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["resources"]["limits"]["nvidia.com/gpumem-percentage"] == "50"
        assert c["resources"]["requests"] == {"cpu": "2500m", "memory": "2048Mi"}
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    whole = volcano_job(gang, "j", "i", ["a", "b"], "nvidia.com/gpu", "svc", shares=False)
    (c,) = whole["spec"]["tasks"][0]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"  # no HAMi: the whole device
    assert "nvidia.com/gpumem-percentage" not in c["resources"]["limits"]
    one = volcano_job(
        Launch("8", ["true"], devices=(0, 1)), "j", "i", ["a"], "huawei.com/Ascend910", ""
    )
    jsonschema.validate(one, schema)
    assert "plugins" not in one["spec"] and len(one["spec"]["tasks"]) == 1
    (c,) = one["spec"]["tasks"][0]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["huawei.com/Ascend910"] == "2"
    assert "RANK" not in {e["name"] for e in c["env"]}
    assert one["spec"]["policies"] == [  # a member's failure ends the gang, not a hang
        {"event": "PodFailed", "action": "TerminateJob"},
        {"event": "PodEvicted", "action": "TerminateJob"},
    ]
    assert one["spec"]["ttlSecondsAfterFinished"] == 8 * 86_400  # a backstop: see TTL_S
    no_gpu = volcano_job(Launch("9", ["true"]), "j", "i", ["a"], None, "")
    (c,) = no_gpu["spec"]["tasks"][0]["template"]["spec"]["containers"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"]  # sees no GPU
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in gang_env(job)}
    # our names for a cluster's nodes: DNS labels, one per (site, node)
    pairs = [("s-", "n" * 100), ("a-", "b-x"), ("a-b-", "x"), ("s-", "ip-10-0-1-5"),
             ("s-", "ip-10-0-1-5.ec2.internal")]  # fmt: skip
    names = [node_name(prefix, node) for prefix, node in pairs]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in names), names


def gang_env(job: dict[str, Any]) -> list[dict[str, str]]:
    return list(job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["env"])


def test_nodes_are_learned_with_their_chips(shared_dir: Path, tmp_path: Path) -> None:
    ascend = gpu_node("npu-1", 0)
    ascend["status"]["allocatable"] = {"cpu": "192", "memory": "1Ti", "huawei.com/Ascend910": "8"}
    ascend["metadata"]["labels"] = {"suanli.io/accelerator": "ascend-910b3"}
    unlabelled = json.loads(json.dumps(ascend))
    unlabelled["metadata"] = {"name": "npu-2", "labels": {}}
    cordoned = gpu_node("gpu-3", 8)
    cordoned["spec"] = {"unschedulable": True}
    down = gpu_node("gpu-4", 8)
    down["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    tainted = gpu_node("master", 0)
    tainted["spec"] = {"taints": [{"key": "node-role.kubernetes.io/control-plane",
                                   "effect": "NoSchedule"}]}  # fmt: skip
    huge = gpu_node("huge", 10**9)  # a stranger's report: must not build 10^9 devices
    cores = gpu_node("cores", 1)
    cores["status"]["allocatable"]["cpu"] = "1e30"
    junk = {"metadata": {"name": "junk"}, "status": {"allocatable": {"cpu": "many"},
            "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
    dotted = gpu_node("ip-10-0-1-5.ec2.internal", 1)
    hami = gpu_node("hami", 40)  # HAMi: 4 cards split 10 ways, GFD counts the cards
    hami["metadata"]["labels"] |= {"nvidia.com/gpu.count": "4", "suanli.io/gpu-shares": "hami"}
    nodes = [gpu_node("gpu-1", 4, "NVIDIA-H100-80GB-HBM3"), ascend, unlabelled, cordoned, down,
             tainted, huge, cores, junk, dotted, hami, "not a node"]  # fmt: skip
    standin = StandIn(shared_dir, TOKEN, nodes)
    try:
        ex = KubernetesExecutor(
            standin.url, tmp_path, token=TOKEN, image="i", namespace="suanli", prefix="k-"
        )
        got = {n.labels["kubernetes.io/hostname"]: n for n in ex.nodes()}
        # cordoned, NotReady, tainted, out of bounds and unreadable nodes are left out
        assert sorted(got) == ["gpu-1", "hami", "ip-10-0-1-5.ec2.internal", "npu-1", "npu-2"]
        assert (
            len(got["hami"].devices) == 4 and got["hami"].labels["suanli.io/gpu-shares"] == "hami"
        )
        assert got["gpu-1"].labels["suanli.io/gpu-shares"] == "none"  # no HAMi said: no shares
        assert got["gpu-1"].name.startswith("k-gpu-1-")
        assert got["ip-10-0-1-5.ec2.internal"].name.startswith("k-ip-10-0-1-5-ec2-internal-")
        gpu = got["gpu-1"]
        assert [d.accelerator for d in gpu.devices] == ["h100-sxm"] * 4  # GFD's product label
        assert gpu.cpu_cores == 7 and gpu.memory_mib == 64 * 1024 and gpu.address == "10.1.0.7"
        assert gpu.labels["topology.kubernetes.io/region"] == "cn-k8s"
        assert [d.accelerator for d in got["npu-1"].devices] == ["ascend-910b3"] * 8
        assert got["npu-2"].devices == []  # which 910 it is cannot be told: not offered
        with pytest.raises(Exception, match=r"bad token|401"):
            KubernetesExecutor(standin.url, tmp_path, token="wrong", image="i", namespace="suanli")
        standin.volcano = False
        with pytest.raises(Exception, match="no Volcano Jobs API"):
            KubernetesExecutor(standin.url, tmp_path, token=TOKEN, image="i", namespace="suanli")
    finally:
        standin.close()


@pytest.fixture()
def k8s(shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """One Kubernetes site (two nodes of two A100s) behind the stand-in, driven by a loop,
    with a stray of this service's and a job of another service's already there."""
    standin = StandIn(shared_dir, TOKEN, [gpu_node("a", 2), gpu_node("b", 2)])
    store = Store.sqlite(tmp_path)
    store.create_token("admin", "admin")  # the site is an admin's: its token_env is trusted
    service = "svc-test"
    for name, svc in (("stray", service), ("others", "another")):
        labels = {SERVICE_LABEL: svc, "suanli.io/job": "1"}
        standin.jobs[name] = {
            "metadata": {"name": name, "labels": labels},
            "status": {"state": {"phase": "Running"}},
        }
    monkeypatch.setenv("SUANLI_SITE_TOKEN_K8S", TOKEN)
    sites = SiteExecutors(timeout_s=5.0)
    ctrl = SiteController(store, sites, site_factory(tmp_path / "logs", service))
    loop = Loop(store, sites, "priority", tick_s=0.1, grace_s=3.0, controllers=[ctrl])
    with store.tx() as s:
        s.add(
            SiteRow(
                name="kube",
                owner="admin",
                region="cn-k8s",
                pue=1.2,
                carbon_g_per_kwh=300.0,
                power_price_per_kwh=0.1,
                updated_at=time.time(),
                engine="kubernetes",
                address=standin.url,
                credential_env="SUANLI_SITE_TOKEN_K8S",
                namespace="suanli",
                image="reg.example/suanli:0.1",
                preemption_notice_s=1.0,  # less than the loop's 3 s grace
            )
        )

    def nodes() -> list[NodeRow]:
        with store.tx() as s:
            return list(s.query(NodeRow))

    _until(loop.tick, lambda: len(nodes()) == 2, "the site attached and its nodes learned")
    yield standin, store, loop, nodes
    standin.close()


def sites_of(loop: Loop) -> SiteExecutors:
    executor = loop.executor
    assert isinstance(executor, SiteExecutors)
    return executor


def _volcano_of(standin: StandIn, store: Store, jid: int) -> dict[str, Any]:
    ref = str((get(store, jid).members or [])[0]["ref"])
    return standin.jobs[ref]


def test_jobs_run_fail_and_stop_on_a_kubernetes_site_through_the_loop(k8s: Any) -> None:
    standin, store, loop, nodes = k8s
    rows = nodes()
    assert {n.site for n in rows} == {"kube"} and {n.executor for n in rows} == {"kubernetes"}
    assert all(n.labels[SITE_LABEL] == "kube" and len(n.devices) == 2 for n in rows)
    # what the site still ran for this service is stopped once it attaches; not others'
    _until(loop.tick, lambda: "stray" not in standin.jobs, "this service's stray stopped")
    assert "others" in standin.jobs

    def state(jid: int) -> str:
        return get(store, jid).state

    gpu = {"accelerator": "a100-80gb", "devices": 1}
    one = submit(store, {"command": ["python", "-c", "print(1)"], "resources": gpu})
    _until(loop.tick, lambda: state(one) == "running", "the job started")
    job = _volcano_of(standin, store, one)  # the stand-in checked it against the CRD
    (task,) = job["spec"]["tasks"]
    pod = task["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg.example/suanli:0.1"  # the site's default
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["kubernetes.io/hostname"] in ("a", "b")
    assert pod["terminationGracePeriodSeconds"] == 1  # the site's notice, not the 3 s grace
    standin.finish(job["metadata"]["name"], [0], "hello from the pod\n")
    _until(loop.tick, lambda: state(one) == "succeeded", "the job succeeded")
    member = (get(store, one).members or [])[0]
    assert "hello from the pod" in Path(str(member["stdout"])).read_text()

    # a gang of two whole nodes: one Volcano Job, a task per member on its own node
    both = {"accelerator": "a100-80gb", "devices": 2}
    gang = submit(store, {"command": ["python", "-c", "1"], "gang": 2, "resources": both})
    _until(loop.tick, lambda: state(gang) == "running", "the gang started")
    job = _volcano_of(standin, store, gang)
    hosts = [
        t["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
        for t in job["spec"]["tasks"]
    ]
    assert sorted(hosts) == ["a", "b"] and job["spec"]["minAvailable"] == 2
    standin.finish(job["metadata"]["name"], [0, 3])  # rank 1 exits 3
    _until(loop.tick, lambda: state(gang) == "failed", "the gang failed")
    assert get(store, gang).exit_code == 3

    # a cancel deletes the Volcano Job (its pods get their grace from Kubernetes)
    stop = submit(store, {"command": ["sleep", "1000"], "resources": gpu})
    _until(loop.tick, lambda: state(stop) == "running", "the third job started")
    ref = str((get(store, stop).members or [])[0]["ref"])
    with store.tx() as s:
        row = s.get(JobRow, stop)
        assert row is not None
        row.cancel_requested = True

    def deleting() -> bool:
        return bool(standin.jobs.get(ref, {}).get("metadata", {}).get("deletionTimestamp"))

    _until(loop.tick, deleting, "the Volcano Job deleted in the foreground")
    assert any("cut to 1 s: the site's preemption notice" in (e.message or "")
               for e in store.events(stop))  # fmt: skip
    assert any("propagationPolicy=Foreground" in c for c in standin.calls)
    for _ in range(5):  # its pods serve their grace: the stop is not over, the devices held
        loop.tick()
        assert state(stop) == "running"
    standin.reap(ref)
    _until(loop.tick, lambda: state(stop) == "cancelled", "the job cancelled")
    assert ref not in standin.jobs and not any(p["job"] == ref for p in standin.pods.values())

    # a service replica is not placed where the router cannot reach it (a pod's network)
    replica = submit(store, {"kind": "serve", "command": ["sleep", "1"], "resources": gpu})
    said = lambda: " ".join(e.message or "" for e in store.events(replica))  # noqa: E731
    _until(loop.tick, lambda: "cannot be reached by the router" in said(), "the reason said")
    assert state(replica) == "queued"
    # nor a share of a GPU on a node without HAMi (the pod would hold a whole device)
    half = {"accelerator": "a100-80gb", "devices": 1, "fraction": 0.5}
    share = submit(store, {"command": ["true"], "resources": half})
    told = lambda: " ".join(e.message or "" for e in store.events(share))  # noqa: E731
    _until(loop.tick, lambda: "cannot share a device" in told(), "the share's reason said")
    assert state(share) == "queued"


def test_a_member_that_fails_stops_its_gang_and_a_broken_cluster_stops_nothing(
    k8s: Any,
) -> None:
    """A gang member exits 3 while Volcano has not ended the Job: the executor deletes the
    Job (the others would wait in their collectives) and reports 3 once its pods are gone.
    A container that cannot start fails its job, saying why. A server that answers 429 or
    nonsense leaves the job running as far as anyone knows, and the loop goes on."""
    standin, store, loop, _ = k8s

    def state(jid: int) -> str:
        return get(store, jid).state

    both = {"accelerator": "a100-80gb", "devices": 2}
    gang = submit(store, {"command": ["python", "-c", "1"], "gang": 2, "resources": both})
    _until(loop.tick, lambda: state(gang) == "running", "the gang started")
    ref = _volcano_of(standin, store, gang)["metadata"]["name"]
    standin.logs[f"{ref}-m1-0"] = "Traceback: boom\n"  # its last words
    standin.fail_pod(f"{ref}-m1-0", 3)
    _until(loop.tick, lambda: ref not in standin.jobs or "deletionTimestamp" in
           standin.jobs[ref]["metadata"], "the gang's Job deleted")  # fmt: skip
    assert state(gang) == "running"  # rank 0 is still stopping
    # the failed member's pod is removed while rank 0 stops: its last lines stay
    standin.logs[f"{ref}-m0-0"] = "rank0 working\n"
    del standin.pods[f"{ref}-m1-0"]
    handle = Handle.from_dict((get(store, gang).members or [])[0])
    text = sites_of(loop).logs(handle)
    assert text.index("rank0 working") < text.index("Traceback: boom"), text
    # its node never confirms the deletion: past the grace the pods are deleted at once
    for p in standin.pods.values():
        if p["job"] == ref:
            p["obj"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    _until(loop.tick, lambda: state(gang) == "failed", "the gang failed")
    assert get(store, gang).exit_code == 3
    member = (get(store, gang).members or [])[0]
    assert "Traceback: boom" in Path(str(member["stdout"])).read_text()
    assert any("gracePeriodSeconds=0" in c for c in standin.calls)

    gpu = {"accelerator": "a100-80gb", "devices": 1}
    pull = submit(store, {"command": ["true"], "image": "reg/nope:1", "resources": gpu})
    _until(loop.tick, lambda: state(pull) == "running", "the job started")
    job = _volcano_of(standin, store, pull)
    assert job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["image"] == "reg/nope:1"
    standin.waiting(
        job["metadata"]["name"], "ImagePullBackOff", "manifest for reg/nope:1 not found"
    )
    _until(loop.tick, lambda: bool(standin.jobs.get(job["metadata"]["name"], {}).get(
        "metadata", {}).get("deletionTimestamp")), "the job's Job deleted")  # fmt: skip
    standin.reap(job["metadata"]["name"])
    _until(loop.tick, lambda: state(pull) == "failed", "the job failed")
    assert get(store, pull).exit_code == 125
    member = (get(store, pull).members or [])[0]
    assert (
        "ImagePullBackOff: manifest for reg/nope:1 not found"
        in Path(str(member["stdout"])).read_text()
    )

    # a JSON line is logged as the program wrote it; 429s and nonsense are not ended
    talk = submit(store, {"command": ["python", "-c", "1"], "resources": gpu})
    _until(loop.tick, lambda: state(talk) == "running", "the third job started")
    name = _volcano_of(standin, store, talk)["metadata"]["name"]
    standin.faults["/pods"] = (429, {"kind": "Status", "code": 429}, False)
    for _ in range(3):
        loop.tick()
    standin.faults["/pods"] = (404, {"kind": "Status", "code": 404}, False)
    standin.faults[f"/jobs/{name}"] = (200, "this is not JSON", True)
    for _ in range(5):
        loop.tick()
    assert state(talk) == "running"
    standin.faults.clear()
    standin.finish(name, [0], '{"loss": 1.5, "ok": true}\n')
    _until(loop.tick, lambda: state(talk) == "succeeded", "the third job succeeded")
    member = (get(store, talk).members or [])[0]
    assert Path(str(member["stdout"])).read_text() == '{"loss": 1.5, "ok": true}\n'
    assert name not in standin.jobs  # its end read, the Job is deleted (the TTL a backstop)
    ref_handle = Handle.from_dict((get(store, talk).members or [])[0])
    assert sites_of(loop).poll(ref_handle) == 0  # asked again (a restart's check): the same


def test_a_job_the_cluster_never_places_fails_and_frees_its_devices(k8s: Any) -> None:
    """Something beside suanli took the node's GPUs: the pod is never scheduled. Before
    the limit the job waits (a busy scheduler, a node coming back); past it the Job is
    deleted and the job fails 125 with the scheduler's reason, freeing what suanli held."""
    standin, store, loop, _ = k8s
    gpu = {"accelerator": "a100-80gb", "devices": 2}
    jid = submit(store, {"command": ["true"], "resources": gpu})
    _until(loop.tick, lambda: get(store, jid).state == "running", "the job started")
    ref = _volcano_of(standin, store, jid)["metadata"]["name"]
    why = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    standin.unschedulable(ref, why)
    for _ in range(5):
        loop.tick()
    assert get(store, jid).state == "running" and ref in standin.jobs
    (kube,) = [link.executor for link in sites_of(loop).links.values()]
    kube.pending_limit_s = 0.0  # type: ignore[attr-defined]  # the limit has passed
    _until(loop.tick, lambda: "deletionTimestamp" in standin.jobs.get(ref, {}).get(
        "metadata", {}), "the unplaced Job deleted")  # fmt: skip
    standin.reap(ref)
    _until(loop.tick, lambda: get(store, jid).state == "failed", "the job failed")
    assert get(store, jid).exit_code == 125
    member = (get(store, jid).members or [])[0]
    text = Path(str(member["stdout"])).read_text()
    assert "has not placed the job's pods in 0 s: 0/2 nodes are available" in text
    # a queue that never admits the job makes no pods at all: also unplaced
    assert _unplaced([], "Pending") and _unplaced([], "Running") is None
    assert (
        _unplaced([{"status": {"phase": "Running"}, "spec": {"nodeName": "a"}}], "Running") is None
    )
    pulling = {"status": {"phase": "Pending"}, "spec": {"nodeName": "a"}}  # placed, pulling
    assert _unplaced([pulling], "Pending") is None


def _kubeconfig(path: Path, user: dict[str, Any], server: str = "https://10.0.0.5:6443") -> Path:
    ca = base64.b64encode(PEM.encode()).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "prod",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_kubeconfig_gives_server_ca_token_and_namespace_or_says_why_not(tmp_path: Path) -> None:
    got = read_kubeconfig(_kubeconfig(tmp_path / "ok", {"token": "t0k"}))
    assert (got.server, got.token, got.ca_cert, got.namespace) == (
        "https://10.0.0.5:6443",
        "t0k",
        PEM,
        "ml",
    )
    (tmp_path / "tok").write_text("from-file\n")
    assert read_kubeconfig(_kubeconfig(tmp_path / "f", {"tokenFile": "tok"})).token == "from-file"
    refused = {
        "running a program": {"exec": {"command": "/bin/sh", "args": ["-c", "curl evil"]}},
        "client certificates": {"client-certificate-data": "eA==", "client-key-data": "eA=="},
    }
    for why, user in refused.items():
        with pytest.raises(KubeconfigError, match=why) as err:
            read_kubeconfig(_kubeconfig(tmp_path / "bad", user))
        assert "kubectl -n NS create token" in str(err.value)  # and what to do instead
    with pytest.raises(KubeconfigError, match="no context 'dev' \\(contexts: prod\\)"):
        read_kubeconfig(_kubeconfig(tmp_path / "ok", {"token": "t"}), "dev")
    with pytest.raises(KubeconfigError, match="not YAML"):
        (tmp_path / "junk").write_text("a: [")
        read_kubeconfig(tmp_path / "junk")


def test_the_api_takes_a_kubernetes_site_and_never_shows_its_token(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    store.migrate()
    admin = store.create_token("admin", "admin")
    api = TestClient(create_app(store, vault=Vault.for_service(tmp_path)))
    api.headers["Authorization"] = f"Bearer {admin}"
    body = {
        "region": "cn-k8s",
        "engine": "kubernetes",
        "address": "https://10.0.0.5:6443",
        "token": "sa-token-xyz",
        "namespace": "ml",
        "image": "reg/suanli:1",
        "ca_cert": PEM,
        "preemption_notice_s": 30.0,
    }
    put = api.put("/v1/sites/kube", json=body)
    assert put.status_code == 200, put.text
    view = put.json()
    assert (view["engine"], view["namespace"], view["image"]) == (
        "kubernetes",
        "ml",
        "reg/suanli:1",
    )
    assert view["credential"] == "sealed" and view["ca_cert"] == "given"
    assert view["preemption_notice_s"] == 30.0
    assert "sa-token-xyz" not in put.text + api.get("/v1/sites/kube").text
    # a change that names no CA keeps it (as `suanli site set` sends none)
    again = api.put("/v1/sites/kube", json={**body, "ca_cert": None, "token": None})
    assert again.json()["ca_cert"] == "given" and again.json()["credential"] == "sealed"
    for bad, why in (
        ({"image": None}, "needs the image"),
        ({"address": "10.0.0.5:6443"}, "https://HOST[:PORT]"),
        ({"address": "https://10.0.0.5:99999"}, "https://HOST[:PORT]"),
        ({"python": "/usr/bin/python3"}, "python is a Ray site's"),
        ({"ca_cert": "not a pem"}, "ca_cert"),
    ):
        refused = api.put("/v1/sites/kube", json={**body, **bad})
        assert refused.status_code == 422 and why in refused.text, (bad, refused.text)
    no_port = api.put("/v1/sites/eks", json={**body, "address": "https://x.eks.amazonaws.com"})
    assert no_port.status_code == 200, no_port.text  # EKS and GKE give no port
    # a provider: a malformed address is a 422 (never a 500), and the service's own
    # environment (another site's token variable) is not its to name
    prov = TestClient(create_app(store, vault=Vault.for_service(tmp_path)))
    prov.headers["Authorization"] = f"Bearer {store.create_token('provider', 'prov')}"
    bad = prov.put("/v1/sites/p", json={**body, "address": "https://[::1:6443"})
    assert bad.status_code == 422, bad.text
    other = {**body, "token": None, "token_env": "SUANLI_SITE_TOKEN_KUBE"}
    stolen = prov.put("/v1/sites/p", json=other)
    assert stolen.status_code == 403 and "only an admin" in stolen.text
    ray = {"region": "r", "engine": "ray", "address": "127.0.0.1:8265", "image": "x"}
    refused = api.put("/v1/sites/ray", json=ray)
    assert refused.status_code == 422 and "a Kubernetes site's" in refused.text


def test_a_kubernetes_site_attached_through_the_cli_against_suanli_up(
    shared_dir: Path, tmp_path: Path
) -> None:
    """``suanli site attach --kubeconfig`` against a real `suanli up` and the stand-in."""
    standin = StandIn(shared_dir, TOKEN, [gpu_node("gpu-1", 2)], namespace="ml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    svc = start_service(data, port, "--single-user")
    try:
        env, cli = admin_cli(data, port)

        bad = _kubeconfig(tmp_path / "exec", {"exec": {"command": "aws"}}, standin.url)
        refused = suanli("site", "attach", "kube", "--kubeconfig", str(bad), "--region", "cn-k8s",
                         "--image", "reg/suanli:1", env=env)  # fmt: skip
        assert refused.returncode != 0 and "running a program" in refused.stderr + refused.stdout
        good = _kubeconfig(tmp_path / "kc", {"token": TOKEN}, standin.url)
        said = cli("site", "attach", "kube", "--kubeconfig", str(good), "--region", "cn-k8s",
                   "--image", "reg/suanli:1", "--notice", "30")  # fmt: skip
        assert TOKEN not in said

        def site() -> dict[str, Any]:
            return dict(json.loads(cli("site", "show", "kube", "--json")))

        end = time.monotonic() + 60
        while not (site()["status"] == "ready" and site()["nodes"]):
            assert time.monotonic() < end, site()
            time.sleep(0.2)
        shown = site()
        assert shown["namespace"] == "ml" and len(shown["nodes"]) == 1
        assert shown["nodes"][0].startswith("kube-gpu-1-")
        text = cli("site", "show", "kube")
        assert "namespace ml, image reg/suanli:1, TLS checked against its own CA" in text
        assert "preemption notice 30 s" in text
        assert "GET /api/v1/nodes?" in standin.calls
        for f in data.glob("*.db*"):  # sealed at rest
            assert TOKEN.encode() not in f.read_bytes(), f
    finally:
        stop_service(svc)
        standin.close()


def test_a_providers_stored_token_variable_is_not_used(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's site stored with ``credential_env`` (before only admins could name
    the service's environment) is not connected: that variable may hold another site's
    token, and the provider chose the address it would be sent to."""
    standin = StandIn(shared_dir, TOKEN, [gpu_node("a", 1)])
    monkeypatch.setenv("SUANLI_SITE_TOKEN_K8S", TOKEN)
    store = Store.sqlite(tmp_path)
    sites = SiteExecutors(timeout_s=5.0)
    ctrl = SiteController(store, sites, site_factory(tmp_path / "logs", "svc"))
    with store.tx() as s:
        s.add(SiteRow(name="theirs", owner="prov", region="r", pue=1.2, carbon_g_per_kwh=0.0,
                      power_price_per_kwh=0.0, updated_at=0.0, engine="kubernetes",
                      address=standin.url, credential_env="SUANLI_SITE_TOKEN_K8S",
                      image="i"))  # fmt: skip

    def status() -> str:
        with store.tx() as s:
            row = s.get(SiteRow, "theirs")
            return str(row.status if row else "")

    try:
        _until(lambda: ctrl.reconcile(time.time()), lambda: "cannot attach" in status(), "said")
        assert "only an admin" in status() and "theirs" not in sites.links
        assert not any("/api/v1/nodes" in c for c in standin.calls)  # the token never went
    finally:
        standin.close()
