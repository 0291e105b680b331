"""The console without a browser: what each page is built from (pure functions), and the
rules every page keeps (signing in, forms from this site only, tenants, bad input as a
page). The browser tests (test_console_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from suanli.api import create_app
from suanli.store import Store
from suanli.store.models import JobRow
from suanli.web import views
from suanli.web.app import safe_next
from suanli.web.render import chart, usd
from suanli.web.session import COOKIE, csrf_for

SPEC = {"name": "j", "command": ["true"], "resources": {"accelerator": "cpu"}}


def node(name: str, chips: list[str], held: dict[int, list[str]], **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "site": kw.get("site"),
        "executor": "agent",
        "state": kw.get("state", "ready"),
        "heartbeat_age_s": 1.0,
        "devices": [
            {"index": i, "accelerator": c, "healthy": i not in kw.get("down", ())}
            for i, c in enumerate(chips)
        ],
        "allocation": [{"index": i, "jobs": j} for i, j in held.items()],
    }


def test_the_cluster_view_counts_free_held_down_and_stranded_devices() -> None:
    nodes = [
        node("a", ["h100-sxm"] * 4, {0: ["7"], 1: ["other"]}, site="bj"),  # 2 free beside held
        node("b", ["h100-sxm"] * 4, {}, site="bj"),  # a whole free node
        node("c", ["a10"] * 2, {}, down=(1,), site="gz"),
        node("d", ["a10"] * 2, {0: ["8"]}, state="lost", site="gz"),  # lost: all down
    ]
    sites = [{"name": "bj", "region": "north"}, {"name": "gz", "region": "south"}]
    v = views.cluster(nodes, sites)
    by = {(c.chip, c.region): c for c in v["capacity"]}
    h100, a10 = by[("h100-sxm", "north")], by[("a10", "south")]
    assert (h100.total, h100.held, h100.free, h100.largest_free_block, h100.stranded) == (
        8, 2, 6, 4, 2,
    )  # fmt: skip
    assert (a10.total, a10.held, a10.down, a10.free, a10.largest_free_block) == (4, 0, 3, 1, 1)
    assert v["free"] == 7 and v["held"] == 2 and v["down"] == 3 and v["lost_nodes"] == 1
    assert v["fragmentation"] == pytest.approx(2 / 7)
    cells = v["nodes"][0].cells
    assert [c["state"] for c in cells] == ["held", "held", "free", "free"]
    assert cells[1]["jobs"] == ["other"]
    assert v["nodes"][0].summary == "node a: 4 h100-sxm; 2 held"
    assert views.chip_classes(nodes) == {"a10": "chip-0", "h100-sxm": "chip-1"}
    cpu = views.cluster([node("0-cpu", [], {}, site="bj")], sites)["nodes"]
    assert [n.name for n in views.ordered(v["nodes"] + cpu)] == ["a", "b", "0-cpu", "c", "d"]
    assert [n.name for n in views.ordered(v["nodes"], "a10")] == ["c", "d"]


def test_pages_frontier_placements_and_queue_use() -> None:
    assert views.Pages.of(0, 50, 120).page == 1 and views.Pages.of(9, 50, 120).page == 3
    p = views.Pages.of(2, 50, 120)
    assert (p.count, p.offset) == (3, 50) and views.Pages.of(5, 50, 0).count == 1
    #      fast & dear, slow & cheap, beaten by the first, middle
    pts = [(1.0, 10.0), (5.0, 2.0), (2.0, 11.0), (3.0, 5.0)]
    assert views.frontier(pts) == [0, 3, 1]
    assert views.device_count("n1:0,1,2 n2:5") == 4 and views.device_count("local") == 0
    running = [
        {"spec": {"queue": "research"}, "devices": "n1:0,1"},
        {"spec": {}, "devices": "n2:3"},
    ]
    queues = [{"name": "default"}, {"name": "research"}]
    use = {q["name"]: (q["running"], q["devices_held"]) for q in views.queue_usage(queues, running)}
    assert use == {"default": (1, 1), "research": (1, 2)}
    bars = views.timeline(
        [
            {"id": 1, "name": "a", "state": "running", "started_at": 40.0, "updated_at": 50.0,
             "devices": "n1:0"},
            {"id": 2, "name": "b", "state": "queued", "started_at": None, "updated_at": 1.0},
        ],
        now=100.0,
    )["bars"]  # fmt: skip
    assert bars == [{"x": [-1.0, 0.0], "y": "n1", "label": "#1 a (running)", "state": "running"}]


def test_what_a_page_embeds_cannot_break_out_of_it() -> None:
    text = str(chart({"name": "</script><script>alert(1)</script>"}))
    assert text.count("</script>") == 1 and "\\u003c/script>" in text
    assert usd("-12.5") == "-$12.50" and usd(None) == "-" and usd(3) == "$3.00"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/v1/jobs", "javascript:x"):
        assert safe_next(bad) == "/ui/cluster"
    assert safe_next("/ui/jobs/3") == "/ui/jobs/3"


@pytest.fixture()
def console(store: Store) -> tuple[TestClient, dict[str, str]]:
    tokens = {who: store.create_token(role, who) for who, role in
              (("admin", "admin"), ("alice", "user"), ("bob", "user"))}  # fmt: skip
    return TestClient(create_app(store)), tokens


def signed_in(client: TestClient, token: str) -> TestClient:
    client.cookies.clear()
    client.cookies.set(COOKIE, token, path="/ui")
    return client


def test_signing_in_and_out(console: tuple[TestClient, dict[str, str]]) -> None:
    c, tok = console
    first = c.get("/", follow_redirects=False)
    assert first.status_code == 307 and first.headers["location"] == "/ui/cluster"
    r = c.get("/ui/jobs?state=failed", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin?next=/ui/jobs"
    bad = c.post("/ui/signin", data={"token": "sl_nope"})
    assert bad.status_code == 401 and "unknown token" in bad.text
    ok = c.post(
        "/ui/signin", data={"token": tok["alice"], "next": "//evil"}, follow_redirects=False
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/cluster"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    page = c.get("/ui/jobs")
    assert page.status_code == 200 and "alice (user)" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # a form posted from elsewhere (no form token) changes nothing
    assert c.post("/ui/signout", data={}).status_code == 403
    out = c.post("/ui/signout", data={"csrf": csrf_for(tok["alice"])}, follow_redirects=False)
    assert out.status_code == 303 and 'suanli_console=""' in out.headers["set-cookie"]


def test_a_revoked_token_signs_the_viewer_out(
    console: tuple[TestClient, dict[str, str]], store: Store
) -> None:
    c, tok = console
    signed_in(c, tok["bob"])
    assert c.get("/ui/cluster").status_code == 200
    admin = {"Authorization": f"Bearer {tok['admin']}"}
    bobs = [t for t in c.get("/v1/tokens", headers=admin).json() if t["owner"] == "bob"]
    assert c.delete(f"/v1/tokens/{bobs[0]['id']}", headers=admin).status_code == 200
    assert c.get("/ui/cluster", follow_redirects=False).status_code == 303


def test_submit_cancel_and_tenants_through_the_forms(
    console: tuple[TestClient, dict[str, str]], store: Store
) -> None:
    c, tok = console
    signed_in(c, tok["alice"])
    spec = "name: mine\ncommand: [sleep, '60']\nresources: {accelerator: cpu}\n"
    no_csrf = c.post("/ui/jobs", data={"spec": spec})
    assert no_csrf.status_code == 403
    made = c.post(
        "/ui/jobs", data={"spec": spec, "csrf": csrf_for(tok["alice"])}, follow_redirects=False
    )
    assert made.status_code == 303
    job_path = made.headers["location"]
    job_id = int(job_path.rsplit("/", 1)[1])
    for bad, said in (
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "YAML mapping"),
        ("name: x\nresources: {devices: -1}\n", "resources.devices"),
    ):
        r = c.post("/ui/jobs", data={"spec": bad, "csrf": csrf_for(tok["alice"])})
        assert r.status_code == 422 and said in r.text and 'role="alert"' in r.text
    assert c.get(job_path).status_code == 200 and "mine" in c.get(job_path).text
    live = c.get(job_path + "/live")
    assert 'hx-trigger="every 2s"' in live.text  # queued: the page keeps polling
    signed_in(c, tok["bob"])
    other = c.get(job_path)
    assert other.status_code == 404 and "mine" not in other.text
    assert c.get(job_path + "/live").status_code == 404
    assert c.post(job_path + "/cancel", data={"csrf": csrf_for(tok["bob"])}).status_code == 404
    assert "mine" not in c.get("/ui/jobs").text
    signed_in(c, tok["alice"])
    r = c.post(job_path + "/cancel", data={"csrf": csrf_for(tok["alice"])})
    assert r.status_code == 200 and "cancelled" in r.text
    with store.tx() as s:
        row = s.get(JobRow, job_id)
        assert row is not None and row.state == "cancelled"
    assert "hx-trigger" not in c.get(job_path + "/live").text  # ended: polling stops


def test_bad_page_input_is_a_page_that_says_so(console: tuple[TestClient, dict[str, str]]) -> None:
    c, tok = console
    signed_in(c, tok["admin"])
    for path, said in (
        ("/ui/jobs?page=zero", "page"),
        ("/ui/jobs?state=lost", "state"),
        ("/ui/jobs/abc", "job_id"),
        ("/ui/plan?kind=train&run=true&tokens=lots", "tokens: &#39;lots&#39;; give a number"),
        ("/ui/plan?kind=serve&run=true&rate=-1", "rate"),
        ("/ui/plan?kind=train&run=true&model=no-such-model", "no-such-model"),
        ("/ui/simulate?run=true&policy=nonsense", "policy"),
    ):
        r = c.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html") and said in r.text, path


def test_the_jobs_list_pages_and_counts_follow_the_tenant(
    console: tuple[TestClient, dict[str, str]],
) -> None:
    c, tok = console
    auth = {who: {"Authorization": f"Bearer {t}"} for who, t in tok.items()}
    for who, n in (("alice", 7), ("bob", 3)):
        for _ in range(n):
            assert c.post("/v1/jobs", json={"spec": SPEC}, headers=auth[who]).status_code == 201
    page = c.get("/v1/jobs", params={"limit": 3, "offset": 3, "newest_first": True},
                 headers=auth["alice"])  # fmt: skip
    assert page.headers["x-total-count"] == "7"
    assert [j["id"] for j in page.json()] == [4, 3, 2] and {j["owner"] for j in page.json()} == {
        "alice"
    }
    assert c.get("/v1/jobs/counts", headers=auth["bob"]).json()["queued"] == 3
    counts = c.get("/v1/jobs/counts", headers=auth["admin"]).json()
    assert counts["queued"] == 10 and counts["running"] == 0 and set(counts) >= {"failed"}
    assert c.get("/v1/jobs", params={"limit": 0}, headers=auth["bob"]).status_code == 422


def test_the_split_planner_and_the_simulator_pages(tmp_path: Any, shared_dir: Any) -> None:
    # one database is enough: these pages read no store (and a simulation takes seconds)
    store = Store.sqlite(tmp_path)
    c = signed_in(TestClient(create_app(store)), store.create_token("user", "alice"))
    split = c.get(
        "/ui/plan",
        params={"kind": "split", "run": "true", "model": "llama-3.1-8b", "uplink_mbps": "50"},
    )
    assert split.status_code == 200 and "split after layer" in split.text
    assert '"kind":"bars"' in split.text  # latency by split layer, for the chart
    bad = c.get("/ui/plan", params={"kind": "split", "run": "true", "edge": "no-such-chip"})
    assert bad.status_code == 400 and "no-such-chip" in bad.text
    no_times = c.get(
        "/ui/simulate",
        params={"run": "true", "mode": "jct", "pods": "multigpu50", "policy": "fgd"},
    )
    assert no_times.status_code == 400 and "no run times" in no_times.text
    ran = c.get("/ui/simulate", params={"run": "true", "policy": "best-fit", "pods": "default"})
    assert ran.status_code == 200 and "1,213 nodes" in ran.text
    row = ran.text.split('id="sim-results"')[1].split("</table>")[0]
    assert "best-fit" in row and "%" in row


def test_forms_from_other_sites_and_odd_input_are_refused_as_pages(
    console: tuple[TestClient, dict[str, str]],
) -> None:
    c, tok = console
    for headers in ({"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"}):
        r = c.post("/ui/signin", data={"token": tok["alice"]}, headers=headers)
        assert (
            r.status_code == 403
            and "another site" in r.text
            and COOKIE not in r.headers.get("set-cookie", "")
        )
    signed_in(c, tok["alice"])
    assert c.post("/ui/signout", data={"csrf": "é"}).status_code == 403  # not a 500
    for spec, said in (
        ("name: 2024-01-01\ncommand: [x]\n", "name: a YAML date; quote it"),
        ("a: &a [*a]\n", "aliases are expanded"),
        ("name: x\nenv: !!set {A}\n", "env: a YAML set"),
    ):
        r = c.post("/ui/jobs", data={"spec": spec, "csrf": csrf_for(tok["alice"])})
        assert r.status_code == 422 and said in r.text, spec
    missing = c.get("/ui/no-such-page")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    # a viewer whose token was revoked can still sign out
    admin = {"Authorization": f"Bearer {tok['admin']}"}
    alices = [t for t in c.get("/v1/tokens", headers=admin).json() if t["owner"] == "alice"]
    assert c.delete(f"/v1/tokens/{alices[0]['id']}", headers=admin).status_code == 200
    out = c.post("/ui/signout", data={"csrf": csrf_for(tok["alice"])}, follow_redirects=False)
    assert out.status_code == 303


def test_a_busy_planner_says_so_rather_than_queueing() -> None:
    import anyio

    from suanli.web.planner import Busy, in_worker

    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        assert await in_worker(limiter, sum, [1, 2]) == 3
        async with limiter:
            with pytest.raises(Busy):
                await in_worker(limiter, sum, [1, 2])

    anyio.run(main)
