"""``suanli sites`` and ``suanli site create|attach|set|show|delete``: the places with
power, and the clusters among them suanli runs jobs on.

``attach`` is how a provider brings its own Ray cluster (its dashboard) or
Kubernetes cluster with Volcano (a kubeconfig): the service connects to it,
learns its nodes and chips, and schedules on them; a site that stays unreachable
past ``--grace`` has its jobs requeued elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from suanli.cli.output import age, console, listing, print_json
from suanli.cli.service_cmd import ApiError, Json, _call
from suanli.run.kubeconfig import TOKEN_ADVICE, KubeconfigError, read_kubeconfig

site_app = typer.Typer(
    help="Create, attach, change and delete sites (admin or provider).", no_args_is_help=True
)

Region = Annotated[str | None, typer.Option("--region", help="Its region, e.g. cn-west.")]
Pue = Annotated[
    float | None, typer.Option("--pue", min=1.0, max=3.0, help="Power usage effectiveness.")
]
Carbon = Annotated[
    float | None,
    typer.Option("--carbon", min=0.0, help="Grid carbon intensity there, g CO2 per kWh."),
]
Price = Annotated[
    float | None, typer.Option("--power-price", min=0.0, help="Electricity, $ per kWh.")
]
Notice = Annotated[
    float | None,
    typer.Option(
        "--notice",
        min=0.0,
        help="Seconds of warning the site gives before it takes capacity back: a stop "
        "there gives a job at most this grace to checkpoint.",
    ),
]
Grace = Annotated[
    float | None,
    typer.Option(
        "--grace",
        min=1.0,
        help="Seconds it may be unreachable before its running jobs are requeued (300).",
    ),
]
FIELDS = ("region", "pue", "carbon_g_per_kwh", "power_price_per_kwh", "preemption_notice_s")
ENGINE_FIELDS = ("engine", "address", "python", "grace_s", "namespace", "image")
#: what belongs to one engine only: dropped from a body that attaches the other
ONLY = {"ray": ("namespace", "image"), "kubernetes": ("python",)}


def _state(site: dict[str, Any]) -> str:
    if site.get("engine") is None:
        return "-"
    if site.get("away_since"):
        return f"away {age(time.time() - float(site['away_since']))}"
    return str(site.get("status") or "-").split(":", 1)[0]


def sites_cmd(json_out: Json = False) -> None:
    """Sites: region, power, and the engine suanli runs jobs with there (if any)."""

    def cells(s: dict[str, Any]) -> list[str]:
        engine = s.get("engine") or "-"
        if s.get("address"):
            engine += f" {s['address']}"
        return [
            s["name"],
            s["region"],
            s["owner"],
            engine,
            _state(s),
            f"{s['pue']:g}",
            f"{s['carbon_g_per_kwh']:g}",
            f"{s['power_price_per_kwh']:g}",
        ]

    listing(
        _call("GET", "/v1/sites"),
        json_out,
        "sites",
        ("name", "region", "owner", "engine", "state", "PUE", "g CO2/kWh", "$/kWh"),
        cells,
    )


def _find(name: str) -> dict[str, Any] | None:
    return next((s for s in _call("GET", "/v1/sites") if s["name"] == name), None)


def _put(name: str, body: dict[str, Any], json_out: bool, verb: str) -> None:
    out = _call("PUT", f"/v1/sites/{name}", json=body)
    if json_out:
        print_json(out)
        return
    engine = f"; {out['engine']} at {out.get('address')}" if out.get("engine") else ""
    console.print(f"{verb} site {name} in {out['region']}{engine}")
    if out.get("engine"):
        console.print(f"  see it come up: suanli site show {name}")


def _body(row: dict[str, Any], **given: Any) -> dict[str, Any]:
    body = {k: row[k] for k in (*FIELDS, *ENGINE_FIELDS) if row.get(k) is not None}
    body.update({k: v for k, v in given.items() if v is not None})
    return body


@site_app.command("create")
def site_create(
    name: Annotated[str, typer.Argument(help="A DNS label: a-z, 0-9 and '-'.")],
    region: Region = None,
    pue: Pue = None,
    carbon: Carbon = None,
    power_price: Price = None,
    notice: Notice = None,
    json_out: Json = False,
) -> None:
    """A site without an engine: a place nodes are placed in (`PUT /v1/nodes/N/site`)."""
    if region is None:
        raise ApiError("--region is required, e.g. --region cn-east")
    if _find(name) is not None:
        raise ApiError(f"site {name} exists; change it with `suanli site set {name}`")
    body = _body(
        {},
        region=region,
        pue=pue,
        carbon_g_per_kwh=carbon,
        power_price_per_kwh=power_price,
        preemption_notice_s=notice,
    )
    _put(name, body, json_out, "created")


@site_app.command("attach")
def site_attach(
    name: Annotated[str, typer.Argument(help="A DNS label: a-z, 0-9 and '-'.")],
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="A Ray cluster: its dashboard, HOST:PORT."),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            help="A Kubernetes cluster with Volcano: its API server, CA, token and namespace "
            "are read from this kubeconfig's context (a service account's token; exec "
            "plugins and client certificates are refused).",
        ),
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="The kubeconfig context (its current one).")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Kubernetes: the image jobs run in unless they name one (with suanli and "
            "the workloads: the README's Dockerfile).",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", help="Kubernetes: where its Volcano Jobs go (the context's)."),
    ] = None,
    region: Region = None,
    pue: Pue = None,
    carbon: Carbon = None,
    power_price: Price = None,
    notice: Notice = None,
    grace: Grace = None,
    python: Annotated[
        str | None,
        typer.Option(
            "--python",
            help="The Python with suanli and the workloads on the cluster's nodes "
            "(default: the service's own).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="A file holding the cluster's token (Ray started with RAY_AUTH_MODE=token): "
            "sent once, sealed by the service, never shown.",
        ),
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env",
            help="Or the name of the service's environment variable that holds the token.",
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Attach a Ray or Kubernetes cluster as a site: suanli learns its nodes and runs jobs
    there. A token is read from a file, never taken on the command line (which others can
    read)."""
    if (ray_address is None) == (kubeconfig is None):
        raise ApiError(
            "give one of --ray-address HOST:PORT (Ray) or --kubeconfig FILE (Kubernetes)"
        )
    if ray_address is not None and (context or image or namespace):
        raise ApiError("--context, --image and --namespace are for --kubeconfig")
    if kubeconfig is not None and python:
        raise ApiError("--python is for --ray-address; a Kubernetes job runs in its --image")
    row = _find(name) or {}
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ApiError(f"--token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise ApiError(f"--token-file {token_file} is empty")
    if region is None and "region" not in row:
        raise ApiError("--region is required for a new site, e.g. --region cn-west")
    engine: dict[str, Any] = {"engine": "ray", "address": ray_address, "python": python}
    if kubeconfig is not None:
        try:
            target = read_kubeconfig(kubeconfig, context)
        except KubeconfigError as exc:
            raise ApiError(str(exc)) from None
        if token is None and token_env is None:
            token = target.token
        if token is None and token_env is None and "credential" not in row:
            raise ApiError(f"--kubeconfig {kubeconfig}: its user has no token; {TOKEN_ADVICE}")
        engine = {
            "engine": "kubernetes",
            "address": target.server,
            "namespace": namespace or target.namespace or row.get("namespace"),
            "image": image or row.get("image"),
            "ca_cert": target.ca_cert,
        }
    body = _body(
        row,
        region=region,
        pue=pue,
        carbon_g_per_kwh=carbon,
        power_price_per_kwh=power_price,
        preemption_notice_s=notice,
        **engine,
        grace_s=grace,
        token=token,
        token_env=token_env,
    )
    for k in ONLY[engine["engine"]]:
        body.pop(k, None)
    _put(name, body, json_out, "attached")


@site_app.command("set")
def site_set(
    name: str,
    region: Region = None,
    pue: Pue = None,
    carbon: Carbon = None,
    power_price: Price = None,
    notice: Notice = None,
    grace: Grace = None,
    json_out: Json = False,
) -> None:
    """Change a site: only what is given changes."""
    row = _find(name)
    if row is None:
        raise ApiError(f"no site {name}; make it with `suanli site create` or `attach`")
    body = _body(
        row,
        region=region,
        pue=pue,
        carbon_g_per_kwh=carbon,
        power_price_per_kwh=power_price,
        preemption_notice_s=notice,
        grace_s=grace,
    )
    if body.get("engine") is None:
        body.pop("grace_s", None)
    _put(name, body, json_out, "set")


@site_app.command("show")
def site_show(name: str, json_out: Json = False) -> None:
    """One site: its engine, whether it answers, and its nodes."""
    out = _call("GET", f"/v1/sites/{name}")
    if json_out:
        print_json(out)
        return
    console.print(f"[bold]site {out['name']}[/bold]  region {out['region']}, owner {out['owner']}")
    console.print(
        f"  PUE {out['pue']:g}, {out['carbon_g_per_kwh']:g} g CO2/kWh, "
        f"${out['power_price_per_kwh']:g}/kWh"
    )
    if out.get("preemption_notice_s") is not None:
        console.print(f"  preemption notice {out['preemption_notice_s']:g} s")
    if out.get("engine"):
        where = f" at {out['address']}" if out.get("address") else ""
        console.print(f"  engine {out['engine']}{where}; state {_state(out)}")
        console.print(f"  status: {out.get('status') or '-'}")
        if out.get("credential"):
            console.print(f"  token: {out['credential']} (never shown)")
        if out.get("engine") == "kubernetes" and "image" in out:
            ca = "its own CA" if out.get("ca_cert") else "the system's CAs"
            console.print(
                f"  namespace {out.get('namespace') or 'default'}, image {out['image']}, "
                f"TLS checked against {ca}"
            )
        if out.get("seen_at"):
            console.print(f"  last answered {age(time.time() - float(out['seen_at']))} ago")
        console.print(f"  grace {out['grace_s']:g} s before its running jobs are requeued")
    console.print(f"  nodes: {', '.join(out.get('nodes') or []) or '-'}")


@site_app.command("delete")
def site_delete(name: str, json_out: Json = False) -> None:
    """Delete a site (an attached cluster is detached; refused while jobs run there)."""
    out = _call("DELETE", f"/v1/sites/{name}")
    print_json(out) if json_out else console.print(f"deleted site {out['deleted']}")
