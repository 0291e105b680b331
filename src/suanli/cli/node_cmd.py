"""``suanli node register|show|site|heartbeat|delete``: a provider's machines, the ones no
engine reports (executor nodes are learned from their site; only their site is set)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from suanli.cli.output import console, held_devices, kv_table, print_json
from suanli.cli.service_cmd import Json, _call
from suanli.errors import UsageError

node_app = typer.Typer(
    help="Register and manage nodes (providers and admins).", no_args_is_help=True
)


def _devices(specs: list[str]) -> list[dict[str, Any]]:
    """``CHIP`` or ``CHIP:COUNT``, repeated: devices indexed from 0 in that order."""
    out: list[dict[str, Any]] = []
    for spec in specs:
        chip, _, count = spec.partition(":")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise UsageError(f"--device {spec!r}: CHIP or CHIP:COUNT, e.g. a100-80gb:8") from None
        if n < 1:
            raise UsageError(f"--device {spec!r}: the count must be at least 1")
        out += [{"index": len(out) + i, "accelerator": chip} for i in range(n)]
    return out


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: KEY=VALUE")
        labels[key] = value
    return labels


def _find(name: str) -> dict[str, Any]:
    for node in _call("GET", "/v1/nodes"):
        if node["name"] == name:
            return dict(node)
    raise UsageError(f"no node {name} (see `suanli nodes`)")


@node_app.command("register")
def node_register(
    name: Annotated[str, typer.Argument(help="The node's name.")],
    cpu: Annotated[int, typer.Option("--cpu", min=1, help="CPU cores.")],
    memory_gb: Annotated[float, typer.Option("--memory-gb", min=0.001, help="Memory, GiB.")],
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device", help="CHIP or CHIP:COUNT (repeat for several kinds).", metavar="CHIP[:N]"
        ),
    ] = None,
    site: Annotated[str | None, typer.Option("--site", help="The site it is in.")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE (repeat).", metavar="K=V")
    ] = None,
    json_out: Json = False,
) -> None:
    """Register a node (or replace its record) with its cores, memory, devices and labels;
    it must then heartbeat, or it is listed as lost and nothing is placed on it."""
    body = {
        "site": site,
        "cpu_cores": cpu,
        "memory_mib": int(memory_gb * 1024),
        "devices": _devices(device or []),
        "labels": _labels(label or []),
    }
    out = _call("PUT", f"/v1/nodes/{name}", json=body)
    if json_out:
        print_json(out)
        return
    chips = ", ".join(sorted({d["accelerator"] for d in out["devices"]})) or "no devices"
    console.print(
        f"registered node {out['name']}: {out['cpu_cores']} cores, "
        f"{len(out['devices'])} device(s) ({chips}), site {out['site'] or '-'}"
    )


@node_app.command("show")
def node_show(name: str, json_out: Json = False) -> None:
    """One node: who reports it, its devices and who holds each, its last heartbeat."""
    node = _find(name)
    if json_out:
        print_json(node)
        return
    console.print(
        kv_table(
            f"node {node['name']}",
            [
                ("owner / executor", f"{node['owner']} / {node['executor']}"),
                ("site", node["site"] or "-"),
                ("state", f"{node['state']} (heard {node['heartbeat_age_s']:g} s ago)"),
                ("cores / memory", f"{node['cpu_cores']} / {node['memory_mib'] / 1024:g} GiB"),
                (
                    "devices",
                    ", ".join(
                        f"{d['index']}:{d['accelerator']}"
                        + ("" if d.get("healthy", True) else " (unhealthy)")
                        for d in node["devices"]
                    )
                    or "-",
                ),
                ("held", held_devices(node) or "-"),
                ("labels", ", ".join(f"{k}={v}" for k, v in node["labels"].items()) or "-"),
            ],
        )
    )


@node_app.command("site")
def node_site(
    name: str,
    site: Annotated[str, typer.Argument(help="A site's name, or `none`.")],
    json_out: Json = False,
) -> None:
    """Place a node in a site (its region, power price and carbon), executor nodes too."""
    out = _call("PUT", f"/v1/nodes/{name}/site", json={"site": None if site == "none" else site})
    print_json(out) if json_out else console.print(f"node {name}: site {out['site'] or '-'}")


@node_app.command("heartbeat")
def node_heartbeat(
    name: str,
    unhealthy: Annotated[
        list[int] | None,
        typer.Option("--unhealthy", help="A device index now failing (repeat).", metavar="IDX"),
    ] = None,
    json_out: Json = False,
) -> None:
    """Say the node is alive, and which of its devices fail now (the others are healthy)."""
    out = _call("POST", f"/v1/nodes/{name}/heartbeat", json={"unhealthy": unhealthy or []})
    if json_out:
        print_json(out)
        return
    bad = [d["index"] for d in out["devices"] if not d.get("healthy", True)]
    console.print(f"node {name}: alive" + (f"; unhealthy devices {bad}" if bad else ""))


@node_app.command("delete")
def node_delete(name: str, json_out: Json = False) -> None:
    """Remove a node's record."""
    out = _call("DELETE", f"/v1/nodes/{name}")
    print_json(out) if json_out else console.print(f"deleted node {out['deleted']}")
