"""``suanli export k8s FILE``: the Kubernetes object that would run a job spec.

The manifest goes to stdout (pipe it to ``kubectl apply -f -``); where the
rendering reads the spec more narrowly than suanli's own scheduler would (a whole
device for a share, a fixed gang for an elastic one) a warning goes to stderr, so
nothing changes unseen. A spec that cannot be rendered at all is an error naming
every field at fault (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from suanli.jobs import load_job_spec
from suanli.run.k8s import K8sExportError, rendering

export_app = typer.Typer(help="Render jobs for other systems.", no_args_is_help=True)


@export_app.command("k8s")
def k8s_cmd(
    spec: Annotated[Path, typer.Argument(help="A job spec YAML file.")],
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse (exit 2) rather than warn.")
    ] = False,
) -> None:
    """Print a Volcano Job (or, for a service, a Deployment) as YAML for kubectl apply -f."""
    job = load_job_spec(spec)
    out = rendering(job)
    if strict and out.warnings:
        raise K8sExportError(job.name, [f"{w} (--strict)" for w in out.warnings])
    for warning in out.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(yaml.safe_dump(out.manifest, sort_keys=False), nl=False)
