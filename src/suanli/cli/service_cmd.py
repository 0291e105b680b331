"""``suanli up`` and the client commands: submit, jobs, job, logs, cancel, token."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from suanli.cli.output import age, console, exit_status, held_devices, listing, print_json
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
    r = _send(method, path, **kw)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def _send(method: str, path: str, **kw: Any) -> Any:
    """The service's answer (an ``httpx.Response``); an error answer raises ApiError."""
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
    return r


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
    log_format: Annotated[
        str,
        typer.Option("--log-format", help="Service log: text, or json (one object per line)."),
    ] = "text",
) -> None:
    """Start the API, the scheduling loop and an executor (stop with Ctrl-C)."""
    from suanli.market.controller import GRANULARITY_S, MarketConfig
    from suanli.paths import default_data_dir
    from suanli.service.up import serve

    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"--log-format {log_format!r}: text or json")
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
        log_format=log_format,
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
    listing(
        _call("GET", "/v1/jobs"),
        json_out,
        "jobs",
        ("id", "name", "owner", "state", "exit", "attempts", "age"),
        lambda r: [
            r["id"],
            r["name"],
            r["owner"],
            r["state"],
            exit_status(r["exit_code"]),
            r["attempts"],
            age(time.time() - r["created_at"]),
        ],
    )


def job_cmd(job_id: int, json_out: Json = False) -> None:
    """One job, with its events."""
    row = _call("GET", f"/v1/jobs/{job_id}")
    if json_out:
        print_json(row)
        return
    where = f" on {row['devices']}" if row.get("devices") else ""
    if row.get("sites"):
        where += f" (site {', '.join(row['sites'])})"
    console.print(
        f"job {row['id']} {row['name']}: {row['state']}{where} "
        f"(exit {exit_status(row['exit_code'])})"
    )
    for e in row["events"]:
        console.print(
            f"  {time.strftime('%H:%M:%S', time.localtime(e['at']))} {e['kind']}: {e['message']}"
        )


LIVE_STATES = ("queued", "preempted", "running")


def logs_cmd(
    job_id: int,
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep printing what it writes until it ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=1, help="Only its last N lines first.")
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON {id, text, offset} (with -f one line per new part)."
        ),
    ] = False,
) -> None:
    """A job's output (-f: keep printing until it ends, asking only for what is new)."""
    import json

    def show(text: str, cursor: str) -> None:
        if json_out:
            out = {"id": job_id, "text": text, "offset": cursor}
            print(json.dumps(out) if follow else json.dumps(out, indent=2), flush=True)
        else:
            print(text, end="", flush=True)

    path = f"/v1/jobs/{job_id}/logs"
    r = _send("GET", path, params={"tail": tail} if tail else {})
    cursor = r.headers.get("X-Log-Offset", "")
    show(r.text, cursor)
    while follow:
        ended = _call("GET", f"/v1/jobs/{job_id}")["state"] not in LIVE_STATES
        r = _send("GET", path, params={"offset": cursor})  # only bytes not yet shown
        cursor = r.headers.get("X-Log-Offset", cursor)
        if r.text:
            show(r.text, cursor)
        elif ended:  # it had ended before this read: everything it wrote is shown
            return
        if not ended:
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


def nodes_cmd(
    json_out: Json = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also nodes not heard of for a minute (lost).")
    ] = False,
) -> None:
    """Nodes: who runs them, their devices and health, and when they were last heard of.

    A node its executor stopped reporting (a Ray node that died) or whose agent stopped
    heartbeating is "lost" after a minute, and hidden unless --all (--json has them all).
    """
    rows = _call("GET", "/v1/nodes")
    if json_out:
        print_json(rows)
        return
    lost = [n for n in rows if n.get("state") == "lost"]
    if not show_all:
        rows = [n for n in rows if n.get("state") != "lost"]
    t = Table(title="nodes", title_justify="left")
    cols = ("name", "state", "executor", "site", "owner", "CPU", "memory GiB", "devices", "held")
    for col in (*cols, "heartbeat"):
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
            n.get("state", "-"),
            n["executor"],
            n["site"] or "-",
            n["owner"],
            str(n["cpu_cores"]),
            f"{n['memory_mib'] / 1024:.0f}",
            devs + (f" (unhealthy: {','.join(sick)})" if sick else ""),
            held_devices(n),
            f"{age(n['heartbeat_age_s'])} ago",
            " / ".join(
                n["labels"].get(k, "-") for k in ("suanli.io/isolation", "suanli.io/limits")
            ),
        )
    console.print(t)
    if lost and not show_all:
        console.print(f"{len(lost)} lost node(s) not shown (--all shows them)")


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
    listing(
        _call("GET", "/v1/corrections"),
        json_out,
        "perf corrections (measured / predicted)",
        ("family", "chip", "factor", "runs"),
        lambda r: [r["family"], r["chip"], f"{r['factor']:.3f}", r["runs"]],
    )


@token_app.command("list")
def token_list(json_out: Json = False) -> None:
    """Tokens by id, role and owner (yours; all for an admin). Secrets are never shown:
    only their hashes are stored."""
    listing(
        _call("GET", "/v1/tokens"),
        json_out,
        "tokens",
        ("id", "role", "owner", "created"),
        lambda r: [
            r["id"],
            r["role"],
            r["owner"],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
        ],
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The id `suanli token list` shows.")],
    json_out: Json = False,
) -> None:
    """Revoke a token (yours; any for an admin): it stops working at once."""
    out = _call("DELETE", f"/v1/tokens/{token_id}")
    print_json(out) if json_out else console.print(f"revoked token {out['revoked']}")
