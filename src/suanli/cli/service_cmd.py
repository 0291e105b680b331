"""``suanli up`` and the client commands: submit, jobs, job, logs, cancel, token."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from suanli.cli.output import console, print_json
from suanli.errors import SuanliError

Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class ApiError(SuanliError):
    """The service answered with an error, or could not be reached."""


def _client() -> Any:
    import httpx

    url = os.environ.get("SUANLI_URL", "http://127.0.0.1:8080")
    token = os.environ.get("SUANLI_TOKEN")
    if not token:
        raise ApiError(
            "set SUANLI_TOKEN (suanli up prints the admin token and writes <data-dir>/admin.token)"
        )
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _call(method: str, path: str, **kw: Any) -> Any:
    import httpx

    try:
        with _client() as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise ApiError(
            f"cannot reach {os.environ.get('SUANLI_URL', 'http://127.0.0.1:8080')}"
            f" ({exc.__class__.__name__}); is suanli up running?"
        ) from exc
    if r.status_code >= 400:
        try:
            body = r.json()
            detail = "; ".join(body.get("problems") or []) or body.get("detail") or body
        except ValueError:
            detail = r.text
        raise ApiError(f"{r.status_code}: {detail}")
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def up_cmd(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL without a password (default: SQLite)."),
    ] = None,
    db_file: Annotated[
        Path | None,
        typer.Option(
            "--db-file", help="A file holding the database URL (keeps a password out of argv)."
        ),
    ] = None,
    single_user: Annotated[
        bool,
        typer.Option(
            "--single-user",
            help="Run jobs as this service's own user (no per-owner accounts: one trust domain).",
        ),
    ] = False,
    executor: Annotated[
        str, typer.Option("--executor", help="local (this machine) or ray (a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray dashboard address (default 127.0.0.1:8265)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate", help="Run `suanli calibrate` as a job on each new node (PyTorch)."
        ),
    ] = False,
    market_fee: Annotated[
        float, typer.Option("--market-fee", min=0.0, max=1.0, help="Platform share of charges.")
    ] = 0.05,
    billing: Annotated[
        str, typer.Option("--billing", help="Billing granularity: second, minute or hour.")
    ] = "second",
    spot_interval_s: Annotated[
        float, typer.Option("--spot-interval-s", min=1.0, help="Spot auctions this often.")
    ] = 60.0,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Scheduling policy: a name (priority, hetero, gavel-rounds, ...) or a YAML file.",
        ),
    ] = "priority",
    cpu_slices: Annotated[
        str | None,
        typer.Option(
            "--cpu-slices",
            help="Pseudo-devices of CPU threads, e.g. fast:2,slow:1 (try heterogeneous "
            "scheduling without accelerators; they share this machine's cores).",
        ),
    ] = None,
) -> None:
    """Start the API, the scheduling loop and an executor (stop with Ctrl-C)."""
    from suanli.market.controller import GRANULARITY_S, MarketConfig
    from suanli.paths import default_data_dir
    from suanli.service.up import serve

    if billing not in GRANULARITY_S:
        raise typer.BadParameter(f"--billing {billing!r}: one of {', '.join(GRANULARITY_S)}")
    market = MarketConfig(
        fee_ppm=round(market_fee * 1_000_000),
        granularity_s=GRANULARITY_S[billing],
        spot_interval_s=spot_interval_s,
    )

    from suanli.run.devices import cpu_slices as parse_slices
    from suanli.sched.policies import load_policy

    config = load_policy(policy)  # a bad name or file is refused before anything starts
    if cpu_slices is not None:
        if executor != "local":
            raise typer.BadParameter("--cpu-slices: only with --executor local")
        try:
            parse_slices(cpu_slices)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    serve(
        host,
        port,
        db,
        data_dir or default_data_dir(),
        executor,
        ray_address,
        calibrate,
        db_file=db_file,
        single_user=single_user,
        market=market,
        policy=config,
        cpu_slices=cpu_slices,
    )


def submit_cmd(
    spec: Annotated[Path, typer.Argument(help="Job spec YAML.")],
    key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
    json_out: Json = False,
) -> None:
    """Submit a job spec."""
    from suanli.jobs.spec import parse_job_spec, read_yaml

    data = read_yaml(spec)
    parse_job_spec(data, str(spec))  # every problem named here, before the network
    out = _call("POST", "/v1/jobs", json={"spec": data, "idempotency_key": key})
    if json_out:
        print_json({"id": out["id"]})
    else:
        console.print(f"submitted job {out['id']}")


def jobs_cmd(json_out: Json = False) -> None:
    """List jobs (yours; all for an admin)."""
    rows = _call("GET", "/v1/jobs")
    if json_out:
        print_json(rows)
        return
    t = Table(title="jobs", title_justify="left")
    for col in ("id", "name", "owner", "state", "exit", "attempts", "age"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["name"],
            r["owner"],
            r["state"],
            str(r["exit_code"]),
            str(r["attempts"]),
            f"{time.time() - r['created_at']:.0f}s",
        )
    console.print(t)


def job_cmd(job_id: int, json_out: Json = False) -> None:
    """One job, with its events."""
    row = _call("GET", f"/v1/jobs/{job_id}")
    if json_out:
        print_json(row)
        return
    console.print(f"job {row['id']} {row['name']}: {row['state']} (exit {row['exit_code']})")
    for e in row["events"]:
        console.print(
            f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['kind']}: {e['message']}"
        )


def logs_cmd(job_id: int, follow: Annotated[bool, typer.Option("-f", "--follow")] = False) -> None:
    """A job's output (-f: keep printing until it ends)."""
    shown = 0
    while True:
        text = _call("GET", f"/v1/jobs/{job_id}/logs")
        print(text[shown:], end="", flush=True)
        shown = len(text)
        if not follow or _call("GET", f"/v1/jobs/{job_id}")["state"] not in ("queued", "running"):
            return
        time.sleep(0.5)


def cancel_cmd(job_id: int, json_out: Json = False) -> None:
    """Cancel a job (SIGTERM, then SIGKILL after a grace period)."""
    row = _call("POST", f"/v1/jobs/{job_id}/cancel")
    if json_out:
        print_json(row)
    else:
        console.print(
            f"job {job_id}: {row['state']}" + (" (stopping)" if row["cancel_requested"] else "")
        )


def nodes_cmd(json_out: Json = False) -> None:
    """Nodes: who runs them, their devices and health, and when they were last heard of."""
    rows = _call("GET", "/v1/nodes")
    if json_out:
        print_json(rows)
        return
    t = Table(title="nodes", title_justify="left")
    for col in ("name", "executor", "site", "owner", "CPU", "memory GiB", "devices", "heartbeat"):
        t.add_column(col)
    t.add_column("isolation / limits")
    for n in rows:
        kinds: dict[str, list[int]] = {}
        for d in n["devices"]:
            kinds.setdefault(d["accelerator"], []).append(d["index"])
        sick = [str(d["index"]) for d in n["devices"] if not d.get("healthy", True)]
        devs = ", ".join(f"{len(v)}x {k}" for k, v in kinds.items()) or "-"
        t.add_row(
            n["name"],
            n["executor"],
            n["site"] or "-",
            n["owner"],
            str(n["cpu_cores"]),
            f"{n['memory_mib'] / 1024:.0f}",
            devs + (f" (unhealthy: {','.join(sick)})" if sick else ""),
            f"{n['heartbeat_age_s']:.0f} s ago",
            " / ".join(
                n["labels"].get(k, "-") for k in ("suanli.io/isolation", "suanli.io/limits")
            ),
        )
    console.print(t)


def queues_cmd(json_out: Json = False) -> None:
    """Queues: weight, quota per device type, reclaimable."""
    rows = _call("GET", "/v1/queues")
    if json_out:
        print_json(rows)
        return
    t = Table(title="queues", title_justify="left")
    for col in ("name", "weight", "quota (GPU-milli)", "reclaimable"):
        t.add_column(col)
    for q in rows:
        t.add_row(
            q["name"], f"{q['weight']:g}", str(q["quota_milli"] or "—"), str(q["reclaimable"])
        )
    console.print(t)


token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option("--role")] = "user",
    owner: Annotated[str, typer.Option("--owner")] = "user",
    json_out: Json = False,
) -> None:
    """Create a token (admin only)."""
    out = _call("POST", "/v1/tokens", json={"role": role, "owner": owner})
    print_json(out) if json_out else console.print(out["token"])


def corrections_cmd(json_out: Json = False) -> None:
    """Measured / predicted step time per (model family, chip), from finished jobs."""
    rows = _call("GET", "/v1/corrections")
    if json_out:
        print_json(rows)
        return
    t = Table(title="perf corrections (measured / predicted)", title_justify="left")
    for col in ("family", "chip", "factor", "runs"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["family"], r["chip"], f"{r['factor']:.3f}", str(r["runs"]))
    console.print(t)


@token_app.command("list")
def token_list(json_out: Json = False) -> None:
    """Tokens by id, role and owner (yours; all for an admin). Secrets are never shown:
    only their hashes are stored."""
    rows = _call("GET", "/v1/tokens")
    if json_out:
        print_json(rows)
        return
    t = Table(title="tokens", title_justify="left")
    for col in ("id", "role", "owner", "created"):
        t.add_column(col)
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))
        t.add_row(str(r["id"]), r["role"], r["owner"], created)
    console.print(t)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The id `suanli token list` shows.")],
    json_out: Json = False,
) -> None:
    """Revoke a token (yours; any for an admin): it stops working at once."""
    out = _call("DELETE", f"/v1/tokens/{token_id}")
    print_json(out) if json_out else console.print(f"revoked token {out['revoked']}")
