"""The market end to end through the CLI against a real `suanli up`: the operator offers
this machine's cores, a user orders, a lease is made, a job runs on it and is metered,
the ledger balances, an invoice is printed, and a spot lease outbid is reclaimed with
its notice: SIGTERM, the job's checkpoint handler, requeue."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from suanli.run.local import free_port
from tests.helpers import cli, cpu_order, start_service, stop_service, until, wait_state


def test_offer_order_lease_run_meter_bill_invoice_and_reclaim(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = start_service(tmp_path, port, "--spot-interval-s", "1", "--billing", "second")
    clients: list[httpx.Client] = []
    try:
        admin_tok = (tmp_path / "admin.token").read_text().strip()
        admin = {**os.environ, "SUANLI_URL": url, "SUANLI_TOKEN": admin_tok}
        users = {}
        for name in ("alice", "bob"):
            tok = cli(admin, "token", "create", "--role", "user", "--owner", name, "--json")
            users[name] = {**os.environ, "SUANLI_URL": url, "SUANLI_TOKEN": tok["token"]}
            cli(admin, "ledger", "deposit", name, "10", "--idempotency-key", f"d-{name}", "--json")
        # a deposit sent twice is booked once
        again = cli(
            admin, "ledger", "deposit", "alice", "10", "--idempotency-key", "d-alice", "--json"
        )
        assert again["duplicate"] is True
        alice = httpx.Client(
            base_url=url, headers={"Authorization": "Bearer " + users["alice"]["SUANLI_TOKEN"]}
        )
        clients.append(alice)

        # on-demand: one core of this machine for about 11 s
        offer = cli(
            admin,
            "market",
            "offer",
            "--accelerator",
            "cpu",
            "--count",
            "1",
            "--price-usd-per-hour",
            "0.5",
            "--hours",
            "1",
            "--json",
        )
        order = cpu_order(users["alice"], "1", "0.003")
        lease = until(
            "a lease",
            lambda: [
                x
                for x in cli(users["alice"], "market", "leases", "--json")
                if x["order"] == order["id"]
            ],
        )[0]
        assert lease["offer"] == offer["id"] and lease["price_usd_per_hour"] == "0.500000"
        spec = {
            "name": "on-lease",
            "command": [sys.executable, "-c", "import time; time.sleep(2); print('ran')"],
            "resources": {"accelerator": "cpu", "cpu": 1, "memory_gb": 1},
            "order": order["id"],
        }
        jid = alice.post("/v1/jobs", json={"spec": spec}).json()["id"]
        wait_state(alice, jid, {"succeeded"})
        ended = until(
            "the lease ends",
            lambda: [
                x
                for x in alice.get("/v1/market/leases").json()
                if x["id"] == lease["id"] and x["state"] == "ended"
            ],
        )[0]
        assert 0 < ended["used_unit_s"] <= ended["leased_unit_s"]  # metered from the real job
        assert ended["charged_usd"] == f"{0.5 * ended['leased_unit_s'] / 3600:.6f}"  # as quoted
        everyone = cli(admin, "ledger", "--json")
        assert everyone["sum_usd"] == "0.000000" and everyone["entries"] >= 6
        mine = cli(users["alice"], "ledger", "--json")
        assert [a["account"] for a in mine["accounts"]] == ["alice"]
        period = time.strftime("%Y-%m", time.gmtime())
        text = cli(users["alice"], "invoice", "alice", period)
        assert f"lease:{lease['id']}" in text and "closing balance" in text

        # spot: alice's job on a spot core is outbid by bob; it gets the notice as grace
        cli(
            admin,
            "market",
            "offer",
            "--accelerator",
            "cpu",
            "--count",
            "1",
            "--mode",
            "spot",
            "--price-usd-per-hour",
            "0.1",
            "--notice-s",
            "5",
            "--hours",
            "1",
            "--json",
        )
        low = cpu_order(users["alice"], "0.2", "0.5", mode="spot")
        until(
            "a spot lease",
            lambda: [
                x
                for x in alice.get("/v1/market/leases").json()
                if x["order"] == low["id"] and x["state"] == "active"
            ],
        )
        script = (
            "import signal, sys, time\n"
            "def bye(*_):\n    print('checkpoint saved', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('working', flush=True)\ntime.sleep(600)\n"
        )
        spot_spec = {
            **spec,
            "name": "on-spot",
            "command": [sys.executable, "-c", script],
            "order": low["id"],
        }
        sid = alice.post("/v1/jobs", json={"spec": spot_spec}).json()["id"]
        wait_state(alice, sid, {"running"})
        until("the job works", lambda: "working" in alice.get(f"/v1/jobs/{sid}/logs").text)
        cpu_order(users["bob"], "1", "0.01", mode="spot")
        until(
            "preempted",
            lambda: any(
                e["kind"] == "preempted" for e in alice.get(f"/v1/jobs/{sid}").json()["events"]
            ),
        )
        job = alice.get(f"/v1/jobs/{sid}").json()
        assert "checkpoint saved" in alice.get(f"/v1/jobs/{sid}/logs").text
        kinds = [e["kind"] for e in job["events"]]
        assert kinds.index("reclaim") < kinds.index("preempted")
        assert job["state"] in ("queued", "preempted")  # requeued, not failed
        assert job["attempts"] <= 1  # a reclaim does not use up a retry
        bob_lease = until(
            "bob's lease",
            lambda: [
                x
                for x in cli(users["bob"], "market", "leases", "--json")
                if x["buyer"] == "bob" and x["state"] == "active"
            ],
        )[0]
        assert 0.1 <= float(bob_lease["price_usd_per_hour"]) <= 1.0
        reclaimed = [x for x in alice.get("/v1/market/leases").json() if x["order"] == low["id"]]
        assert any("outbid" in (x["end_reason"] or "") for x in reclaimed)
        prices = cli(admin, "market", "book", "--json")
        assert isinstance(prices, list)
        assert cli(admin, "ledger", "--json")["sum_usd"] == "0.000000"
    finally:
        for c in clients:
            c.close()
        stop_service(svc)


def test_an_order_by_workload_buys_the_cheapest_offer_that_meets_the_deadline(
    tmp_path: Path,
) -> None:
    """`plan train --market --order`: two providers' GPUs on offer; the planner weighs both
    at their prices, and the order it places is filled from the cheaper feasible one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = start_service(tmp_path, port)
    try:
        admin = {
            **os.environ,
            "SUANLI_URL": url,
            "SUANLI_TOKEN": (tmp_path / "admin.token").read_text().strip(),
        }
        env = {}
        for role, name in (("provider", "p1"), ("provider", "p2"), ("user", "carol")):
            tok = cli(admin, "token", "create", "--role", role, "--owner", name, "--json")["token"]
            env[name] = {**os.environ, "SUANLI_URL": url, "SUANLI_TOKEN": tok}
        cli(admin, "ledger", "deposit", "carol", "100000", "--json")
        for prov, chip, price in (("p1", "h100-sxm", "2.5"), ("p2", "a100-80gb", "0.5")):
            devices = [{"index": i, "accelerator": chip} for i in range(8)]
            body = {"cpu_cores": 96, "memory_mib": 1_000_000, "devices": devices}
            r = httpx.put(
                f"{url}/v1/nodes/{prov}-n1",
                json=body,
                headers={"Authorization": "Bearer " + env[prov]["SUANLI_TOKEN"]},
            )
            assert r.status_code == 200, r.text
            cli(
                env[prov],
                "market",
                "offer",
                "--accelerator",
                chip,
                "--count",
                "8",
                "--price-usd-per-hour",
                price,
                "--hours",
                "1000",
                "--json",
            )
        plan = cli(
            env["carol"],
            "plan",
            "train",
            "--model",
            "llama-3-8b",
            "--tokens",
            "2e9",
            "--deadline-hours",
            "48",
            "--market",
            "--top",
            "10",
            "--json",
        )
        weighed = [n for n in plan["notes"] if n.startswith("weighed ")]
        assert len(weighed) == 2 and "h100-sxm/default/on-demand@2.5 (8 free)" in weighed[1]
        best = plan["options"][0]
        assert best["pool"] == "a100-80gb/default/on-demand@0.5"  # per token, cheaper than H100
        assert best["cost_usd"] == min(o["cost_usd"] for o in plan["options"])
        assert best["time_to_train_s"] <= 48 * 3600
        cli(
            env["carol"],
            "plan",
            "train",
            "--model",
            "llama-3-8b",
            "--tokens",
            "2e9",
            "--deadline-hours",
            "48",
            "--market",
            "--order",
        )
        (order,) = cli(env["carol"], "market", "orders", "--json")
        assert order["accelerator"] == best["pool"].split("/")[0]
        assert order["count"] == best["num_devices"]
        lease = until("a lease", lambda: cli(env["carol"], "market", "leases", "--json"))[0]
        assert lease["order"] == order["id"] and lease["buyer"] == "carol"
        # registered inventory is sold, but nothing here runs it: a job on it says so
        carol = {"Authorization": "Bearer " + env["carol"]["SUANLI_TOKEN"]}
        spec = {"name": "t", "command": "true", "order": order["id"]}
        jid = httpx.post(f"{url}/v1/jobs", json={"spec": spec}, headers=carol).json()["id"]
        said = until(
            "a reason",
            lambda: [
                e["message"]
                for e in httpx.get(f"{url}/v1/jobs/{jid}", headers=carol).json()["events"]
                if e["kind"] == "unschedulable"
            ],
        )
        assert "on nodes no executor here runs" in said[0]
    finally:
        stop_service(svc)
