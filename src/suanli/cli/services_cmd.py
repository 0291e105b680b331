"""``suanli serve SPEC.yaml``, ``suanli services``, ``suanli service NAME``,
``suanli scale NAME N|auto`` and ``suanli service delete NAME``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from suanli.cli.output import console, fmt, kv_table, listing, print_json, table
from suanli.cli.service_cmd import ApiError, Json, _call
from suanli.errors import UsageError


def _endpoint(name: str) -> str:
    return f"{os.environ.get('SUANLI_URL', 'http://127.0.0.1:8080')}/s/{name}/v1"


def serve_cmd(
    spec: Annotated[Path, typer.Argument(help="Service spec YAML (see docs/services.md).")],
    json_out: Json = False,
) -> None:
    """Create a service (or change it, if it exists): an OpenAI endpoint whose replicas
    the scheduler runs and the autoscaler sizes."""
    try:
        data = yaml.safe_load(spec.read_text())
    except OSError as exc:
        raise UsageError(f"{spec}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{spec}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or "name" not in data:
        raise UsageError(f"{spec}: a service spec is a mapping with at least name and model")
    try:
        out = _call("POST", "/v1/services", json=data)
        verb = "created"
    except ApiError as exc:
        if not str(exc).startswith("409"):
            raise
        out = _call("PUT", f"/v1/services/{data['name']}", json=data)
        verb = "updated"
    if json_out:
        print_json(out)
        return
    console.print(f"service {out['name']} {verb}: OpenAI base URL {_endpoint(out['name'])}")
    console.print(
        f"  model {out['model']} on {out['engine']}, {out['policy']} autoscaling "
        f"between {out['min']} and {out['max']} replicas"
    )


def _ready(row: dict[str, Any]) -> str:
    ready = sum(1 for r in row["replicas"] if r["ready"])
    return f"{ready}/{row['desired']}" + (" (pinned)" if row["pinned"] is not None else "")


def _spot(row: dict[str, Any]) -> str:
    spot = row["spec"]["spot"]
    on = sum(r["capacity"] == "spot" and not r["stopping"] for r in row["replicas"])
    return (
        f"{on} on the leases of market order {spot['order']}, "
        f"{spot['base_ondemand']} always on demand"
        + (", on-demand fallback" if spot["fallback"] else ", no fallback")
    )


def _attainment(row: dict[str, Any]) -> str:
    a = row["observed"].get("slo_attainment")
    return "-" if a is None else f"{a:.1%}"


def services_cmd(json_out: Json = False) -> None:
    """Services: replicas ready of those wanted, load, SLO attainment, cost so far."""
    rows = _call("GET", "/v1/services")
    listing(
        rows,
        json_out,
        "services",
        ["name", "model", "engine", "policy", "ready", "in flight", "req/s", "SLO met", "cost $"],
        lambda r: [
            r["name"],
            r["model"],
            r["engine"],
            r["policy"],
            _ready(r),
            fmt(r["observed"].get("running", 0)),
            fmt(r["observed"].get("arrivals_per_s", 0)),
            _attainment(r),
            f"{r['cost_usd']:.4f}",
        ],
    )


def service_cmd(
    args: Annotated[list[str], typer.Argument(help="NAME, or: delete NAME.")],
    json_out: Json = False,
) -> None:
    """Show a service (replicas, load, SLO attainment, cost so far), or delete it."""
    if args[0] == "delete" and len(args) == 2:
        out = _call("DELETE", f"/v1/services/{args[1]}")
        if json_out:
            print_json(out)
        else:
            console.print(
                f"deleted service {out['deleted']}; {out['replicas_stopping']} replica(s) stopping"
            )
        return
    if len(args) != 1:
        raise UsageError("suanli service NAME, or suanli service delete NAME")
    row = _call("GET", f"/v1/services/{args[0]}")
    if json_out:
        print_json(row)
        return
    o = row["observed"]
    console.print(
        kv_table(
            f"service {row['name']}",
            [
                ("endpoint", _endpoint(row["name"])),
                ("model / engine", f"{row['model']} / {row['engine']}"),
                (
                    "autoscaler",
                    f"{row['policy']}, {row['min']}-{row['max']} replicas"
                    + (f", pinned at {row['pinned']}" if row["pinned"] is not None else ""),
                ),
                ("replicas ready / wanted", _ready(row)),
                *([("spot", _spot(row))] if row["spec"].get("spot") is not None else []),
                ("status", row["status"] or "-"),
                ("requests/s (last 10 s)", fmt(o.get("arrivals_per_s", 0))),
                ("waiting / in flight", f"{fmt(o.get('waiting', 0))} / {fmt(o.get('running', 0))}"),
                ("KV-cache use", fmt(o.get("kv_use", 0))),
                ("tokens/s", fmt(o.get("tokens_per_s", 0))),
                (
                    "SLO attainment",
                    f"{_attainment(row)} of {o.get('requests_judged', 0)} "
                    f"(TTFT {row['slo']['ttft_s']} s, TPOT {row['slo']['tpot_s']} s)",
                ),
                (
                    "device-hours / cost so far",
                    f"{row['device_hours']:.4f} / ${row['cost_usd']:.4f}",
                ),
            ],
        )
    )
    table(
        f"replicas of {row['name']}",
        ["job", "chip", "capacity", "state", "ready", "in flight", "queue", "KV use"],
        [
            [
                r["job"],
                r["chip"] or "-",
                r["capacity"],
                r["state"]
                + (" (reclaimed)" if r["reclaimed"] else " (stopping)" if r["stopping"] else ""),
                "yes" if r["ready"] else "no",
                r["in_flight"],
                fmt(r["queue"]),
                fmt(r["kv_use"]),
            ]
            for r in row["replicas"]
        ],
    )


def scale_cmd(
    name: Annotated[str, typer.Argument(help="The service.")],
    replicas: Annotated[str, typer.Argument(help="A count to pin, or `auto`.")],
    json_out: Json = False,
) -> None:
    """Pin a service at N replicas (the autoscaler stands aside), or hand it back (`auto`)."""
    if replicas == "auto":
        n: int | None = None
    else:
        try:
            n = int(replicas)
        except ValueError:
            raise UsageError(f"replicas: a whole number or `auto`, not {replicas!r}") from None
    out = _call("POST", f"/v1/services/{name}/scale", json={"replicas": n})
    if json_out:
        print_json(out)
    else:
        console.print(
            f"service {name}: "
            + (f"pinned at {n} replicas" if n is not None else f"autoscaled ({out['policy']})")
        )
