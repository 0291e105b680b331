"""``suanli queues`` and ``suanli queue create|set|delete``: the queues the scheduler shares
the cluster by (weight, a quota of devices per chip type, reclaimable)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from suanli.cli.output import console, listing, print_json
from suanli.cli.service_cmd import ApiError, Json, _call
from suanli.errors import SuanliError, UnknownNameError

Weight = Annotated[
    float | None,
    typer.Option("--weight", min=0.0, help="Its share against other queues (default 1)."),
]
Quota = Annotated[
    list[str] | None,
    typer.Option(
        "--quota",
        help="CHIP=N: at most N devices of that chip (`*` = all chips; N may be 0.5); "
        "repeat for more chips; with `set`, CHIP=none removes one.",
        metavar="CHIP=N",
    ),
]
Reclaimable = Annotated[
    bool | None,
    typer.Option(
        "--reclaimable/--no-reclaimable",
        help="Whether other queues may take back what it borrowed (default yes).",
        show_default=False,
    ),
]

queue_app = typer.Typer(help="Create, change and delete queues (admin).", no_args_is_help=True)


def _devices(milli: int) -> str:
    return f"{milli / 1000:g}"


def queues_cmd(json_out: Json = False) -> None:
    """Queues: weight, quota per chip type, reclaimable (`default` always exists)."""

    def cells(q: dict[str, Any]) -> list[str]:
        quota = ", ".join(f"{k}={_devices(v)}" for k, v in sorted(q["quota_milli"].items()))
        return [q["name"], f"{q['weight']:g}", quota or "-", "yes" if q["reclaimable"] else "no"]

    listing(
        _call("GET", "/v1/queues"),
        json_out,
        "queues",
        ("name", "weight", "quota (devices)", "reclaimable"),
        cells,
    )


def _quota(items: list[str], into: dict[str, int]) -> dict[str, int]:
    """``["a100-80gb=4", "*=8"]`` merged into ``into`` as GPU-milli per chip type (a name
    of the catalog or a device type a node reports, such as a CPU slice's)."""
    from suanli.catalog.loader import accelerators

    out = dict(into)
    known: set[str] | None = None  # the catalog's chips and those nodes report (CPU slices)
    for item in items:
        chip, sep, n = item.partition("=")
        chip = chip.strip().lower()
        if not sep or not chip:
            raise SuanliError(f"--quota {item!r}: write CHIP=N, e.g. a100-80gb=4 or '*=8'")
        if chip != "*" and known is None:
            nodes = _call("GET", "/v1/nodes")
            reported = {str(d["accelerator"]) for n in nodes for d in n["devices"]}
            known = set(accelerators()) | reported
        if chip != "*" and known is not None and chip not in known:
            raise UnknownNameError("accelerator", chip, known)
        if n.strip().lower() == "none":
            out.pop(chip, None)
            continue
        try:
            devices = float(n)
        except ValueError:
            devices = -1.0
        if not 0 <= devices <= 1e9:
            raise SuanliError(f"--quota {item!r}: N is a number of devices >= 0, e.g. 4 or 0.5")
        out[chip] = round(devices * 1000)
    return out


def _find(name: str) -> dict[str, Any] | None:
    return next((q for q in _call("GET", "/v1/queues") if q["name"] == name), None)


def _put(name: str, row: dict[str, Any], json_out: bool, verb: str) -> None:
    body = {k: row[k] for k in ("weight", "quota_milli", "reclaimable")}
    out = _call("PUT", f"/v1/queues/{name}", json=body)
    if json_out:
        print_json(out)
        return
    quota = ", ".join(f"{k}={_devices(v)}" for k, v in sorted(out["quota_milli"].items()))
    console.print(
        f"{verb} queue {name}: weight {out['weight']:g}, quota {quota or 'none'}, "
        f"{'reclaimable' if out['reclaimable'] else 'not reclaimable'}"
    )


@queue_app.command("create")
def queue_create(
    name: Annotated[str, typer.Argument(help="A DNS label: a-z, 0-9 and '-'.")],
    weight: Weight = None,
    quota: Quota = None,
    reclaimable: Reclaimable = None,
    json_out: Json = False,
) -> None:
    """Create a queue (jobs name it with `queue: NAME` in their spec)."""
    if _find(name) is not None:
        raise ApiError(f"queue {name} exists; change it with `suanli queue set {name}`")
    row = {
        "weight": 1.0 if weight is None else weight,
        "quota_milli": _quota(quota or [], {}),
        "reclaimable": True if reclaimable is None else reclaimable,
    }
    _put(name, row, json_out, "created")


@queue_app.command("set")
def queue_set(
    name: str,
    weight: Weight = None,
    quota: Quota = None,
    reclaimable: Reclaimable = None,
    json_out: Json = False,
) -> None:
    """Change a queue: only what is given changes (`default` too)."""
    row = _find(name)
    if row is None:
        raise ApiError(f"no queue {name}; create it with `suanli queue create {name}`")
    if weight is not None:
        row["weight"] = weight
    row["quota_milli"] = _quota(quota or [], row["quota_milli"])
    if reclaimable is not None:
        row["reclaimable"] = reclaimable
    _put(name, row, json_out, "set")


@queue_app.command("delete")
def queue_delete(name: str, json_out: Json = False) -> None:
    """Delete a queue that no job waits or runs in (`default` stays)."""
    out = _call("DELETE", f"/v1/queues/{name}")
    print_json(out) if json_out else console.print(f"deleted queue {out['deleted']}")
