"""``suanli export k8s FILE``: the Kubernetes object that would run a job spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from suanli.jobs import load_job_spec
from suanli.run.k8s import render

export_app = typer.Typer(help="Render jobs for other systems.", no_args_is_help=True)


@export_app.command("k8s")
def k8s_cmd(
    spec: Annotated[Path, typer.Argument(help="A job spec YAML file.")],
) -> None:
    """Print a Volcano Job (or, for a service, a Deployment) as YAML for kubectl apply -f."""
    obj = render(load_job_spec(spec))
    typer.echo(yaml.safe_dump(obj, sort_keys=False), nl=False)
