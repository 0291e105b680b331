"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
`suanli up` process (SQLite, the local executor, real jobs).

Every page is saved as a screenshot under ``tests/artifacts/console/`` (or
``$SUANLI_ARTIFACTS``) for a person to look at. Without Chromium the tests skip, saying
so, except under CI, where ``.ci/run`` installs it and a skip would hide a failure.
"""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from suanli.run.local import free_port
from tests.helpers import start_service, stop_service

CHROMIUM = os.environ.get("SUANLI_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get("SUANLI_ARTIFACTS") or Path(__file__).parent / "artifacts" / "console"
)
#: a generous cap for what waits on a real job; the waits end at the event, not the cap
JOB_WAIT_MS = 120_000

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists() or not shutil.which(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} missing under CI: .ci/run installs it (apt chromium)")
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install chromium (never `playwright install`)",
        allow_module_level=True,
    )
expect = playwright_api.expect


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data, port = tmp_path_factory.mktemp("console"), free_port()
    svc = start_service(data, port)
    url = f"http://127.0.0.1:{port}"
    admin = (data / "admin.token").read_text().strip()
    made = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}) as c:
        for who in ("alice", "bob"):
            r = c.post("/v1/tokens", json={"role": "user", "owner": who})
            assert r.status_code == 201, r.text
            made[who] = r.json()["token"]
    try:
        yield {"url": url, "admin": admin, **made}
    finally:
        stop_service(svc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


class Session:
    """One signed-in browser context; records console errors (a CSP violation is one)."""

    def __init__(self, browser: Any, service: dict[str, Any], who: str) -> None:
        self.url = service["url"]
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self.on_console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url + "/ui/jobs")
        assert "/ui/signin" in self.page.url  # not signed in: asked to
        self.page.get_by_label("API token").fill(service[who])
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/ui/jobs$"))

    def on_console(self, message: Any) -> None:
        # a 4xx page is said by the browser as "Failed to load resource"; the tests check
        # those statuses themselves. Anything else (a script error, a CSP refusal) fails
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def session(browser: Any, service: dict[str, Any]) -> Iterator[Any]:
    opened: list[Session] = []

    def open_as(who: str) -> Session:
        s = Session(browser, service, who)
        opened.append(s)
        return s

    yield open_as
    for s in opened:
        s.close()


def test_a_wrong_token_is_refused_and_no_page_shows_without_one(
    browser: Any, service: dict[str, Any]
) -> None:
    page = browser.new_page()
    for path in ("/ui/cluster", "/ui/jobs", "/ui/plan", "/ui/market"):
        page.goto(service["url"] + path)
        assert "/ui/signin" in page.url
    page.get_by_label("API token").fill("sl_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown token")
    page.close()


def test_submit_watch_it_finish_and_read_its_log(session: Any) -> None:
    s = session("alice")
    s.page.get_by_role("link", name="Submit", exact=True).click()
    s.shot("submit")
    s.page.get_by_role("button", name="Submit").click()  # the example spec
    s.page.wait_for_url(re.compile(r".*/ui/jobs/\d+$"))
    expect(s.page.locator("#job-state")).to_have_text("succeeded", timeout=JOB_WAIT_MS)
    expect(s.page.locator("#job-log")).to_contain_text("step 9")
    s.shot("job-succeeded")
    s.page.get_by_role("link", name="Jobs", exact=True).click()
    expect(s.page.locator("main table").last).to_contain_text("hello")
    expect(s.page.locator("canvas[data-drawn]")).to_have_count(1)  # the timeline
    s.shot("jobs")


def test_a_bad_spec_is_explained_on_the_form(session: Any) -> None:
    s = session("alice")
    s.page.goto(s.url + "/ui/jobs/new")
    s.page.get_by_label(re.compile("Job spec")).fill("name: x\nresources: {devices: -1}\n")
    s.page.get_by_role("button", name="Submit").click()
    alert = s.page.get_by_role("alert")
    expect(alert).to_contain_text("command")
    expect(alert).to_contain_text("resources.devices")
    s.shot("submit-refused")


def submit_form(s: Session, spec: str) -> None:
    """Submit a spec through the form and land on the job's page."""
    s.page.goto(s.url + "/ui/jobs/new")
    s.page.get_by_label(re.compile("Job spec")).fill(spec)
    s.page.get_by_role("button", name="Submit").click()
    s.page.wait_for_url(re.compile(r".*/ui/jobs/\d+$"))


def test_cancel_a_running_job(session: Any) -> None:
    s = session("alice")
    submit_form(
        s,
        "name: sleeper\ncommand: python3 -c \"print('up', flush=True); import time; "
        'time.sleep(600)"\nresources: {accelerator: cpu, cpu: 1, memory_gb: 1}\n',
    )
    expect(s.page.locator("#job-log")).to_contain_text("up", timeout=JOB_WAIT_MS)
    s.page.get_by_role("button", name=re.compile("Cancel job")).click()
    expect(s.page.locator("#job-state")).to_have_text("cancelled", timeout=JOB_WAIT_MS)
    expect(s.page.get_by_role("button", name=re.compile("Cancel job"))).to_have_count(0)
    s.shot("job-cancelled")


def test_a_user_never_sees_another_users_job(session: Any, service: dict[str, Any]) -> None:
    alice = session("alice")
    submit_form(
        alice,
        "name: alices-secret\ncommand: echo private\n"
        "resources: {accelerator: cpu, cpu: 1, memory_gb: 1}\n",
    )
    job_url = alice.page.url
    bob = session("bob")
    bob.page.goto(bob.url + "/ui/jobs")
    expect(bob.page.locator("main")).not_to_contain_text("alices-secret")
    answer = bob.page.goto(job_url)
    assert answer is not None and answer.status == 404
    expect(bob.page.locator("main")).not_to_contain_text("alices-secret")
    bob.shot("other-tenants-job")
    admin = session("admin")
    admin.page.goto(admin.url + "/ui/jobs")
    expect(admin.page.locator("main")).to_contain_text("alices-secret")


def test_plan_training_and_see_the_charts(session: Any) -> None:
    s = session("admin")
    s.page.get_by_role("link", name="Planner").click()
    s.page.get_by_label("Model (catalog name)").fill("llama-3.1-8b")
    s.page.get_by_label(re.compile("^Chips")).fill("h100-sxm, a100-80gb")
    s.page.get_by_label("Tokens to train on").fill("1e11")
    s.page.get_by_role("button", name="Plan").click()
    expect(s.page.locator("#options tbody tr")).to_have_count(5, timeout=JOB_WAIT_MS)
    expect(s.page.locator("canvas[data-drawn]")).to_have_count(3)
    s.shot("plan-train")
    s.page.get_by_role("link", name="Serve", exact=True).click()
    s.page.get_by_label("Requests per second").fill("20")
    s.page.get_by_role("button", name="Plan").click()
    expect(s.page.locator("#options tbody tr").first).to_be_visible()
    expect(s.page.locator("canvas[data-drawn]")).to_have_count(1)
    s.shot("plan-serve")
    s.page.get_by_role("link", name="Train", exact=True).click()
    s.page.get_by_label("Model (catalog name)").fill("no-such-model")
    s.page.get_by_role("button", name="Plan").click()
    expect(s.page.get_by_role("alert")).to_contain_text("no-such-model")


def seed_market(service: dict[str, Any]) -> None:
    """A provider's machine, its offer, a buyer's money and an order below the ask: what
    the cluster and market pages draw."""
    admin = {"Authorization": f"Bearer {service['admin']}"}
    with httpx.Client(base_url=service["url"], headers=admin) as c:
        made = c.post("/v1/tokens", json={"role": "provider", "owner": "dc1"})
        prov = {"Authorization": f"Bearer {made.json()['token']}"}
        site = {"region": "north", "pue": 1.2, "carbon_g_per_kwh": 500, "power_price_per_kwh": 0.1}
        assert c.put("/v1/sites/bj1", json=site, headers=prov).status_code == 200
        gpus = [{"index": i, "accelerator": "a100-80gb"} for i in range(8)]
        node = {"site": "bj1", "cpu_cores": 64, "memory_mib": 512_000, "devices": gpus}
        assert c.put("/v1/nodes/gpu-1", json=node, headers=prov).status_code == 200
        offer = {"accelerator": "a100-80gb", "count": 4, "price_usd_per_hour": 2.5, "hours": 10}
        assert c.post("/v1/market/offers", json=offer, headers=prov).status_code == 201
        dep = {"account": "alice", "amount_usd": 50.0, "idempotency_key": "browser"}
        assert c.post("/v1/ledger/deposits", json=dep).status_code == 201
    alice = {"Authorization": f"Bearer {service['alice']}"}
    with httpx.Client(base_url=service["url"], headers=alice) as c:
        bid = {"accelerator": "a100-80gb", "count": 1, "max_price_usd_per_hour": 1, "hours": 1}
        assert c.post("/v1/market/orders", json=bid).status_code == 201


def test_every_page_renders_without_errors(session: Any, service: dict[str, Any]) -> None:
    seed_market(service)
    s = session("admin")
    for name in ("cluster", "jobs", "services", "market", "simulate"):
        s.page.goto(f"{s.url}/ui/{name}")
        expect(s.page.locator("h1")).to_be_visible()
        s.shot(name)
    s.page.goto(f"{s.url}/ui/cluster")
    expect(s.page.locator(".devs[aria-label*='gpu-1']")).to_have_attribute(
        "aria-label", "node gpu-1: 8 a100-80gb; 0 held"
    )
    s.page.keyboard.press("Tab")  # the first stop is the skip link
    expect(s.page.locator(".skip")).to_be_focused()
    alice = session("alice")
    alice.page.goto(f"{alice.url}/ui/market")
    expect(alice.page.locator("main")).to_contain_text("$2.50 × 4")  # the ask, no provider
    expect(alice.page.locator("main")).not_to_contain_text("dc1")
    alice.shot("market-alice")
