"""The ``suanli`` command line (Typer + Rich)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from suanli.cli.calibrate_cmd import calibrate_cmd
from suanli.cli.catalog_cmd import catalog_app
from suanli.cli.estimate_cmd import estimate_app
from suanli.cli.export_cmd import export_app
from suanli.cli.market_cmd import invoice_cmd, ledger_app, market_app
from suanli.cli.node_cmd import node_app
from suanli.cli.plan_cmd import plan_app
from suanli.cli.queue_cmd import queue_app, queues_cmd
from suanli.cli.service_cmd import (
    cancel_cmd,
    corrections_cmd,
    job_cmd,
    jobs_cmd,
    logs_cmd,
    nodes_cmd,
    submit_cmd,
    token_app,
    up_cmd,
)
from suanli.cli.services_cmd import scale_cmd, serve_cmd, service_cmd, services_cmd
from suanli.cli.simulate_cmd import simulate_app
from suanli.cli.site_cmd import site_app, sites_cmd
from suanli.cli.top_cmd import top_cmd
from suanli.errors import SuanliError
from suanli.plan.common import InfeasibleError


def _flags_take_no_value() -> None:
    """Typer's help lists a type beside every option, flags too (``--json <bool>``), which
    reads as if a flag wanted a value: a flag shows none (`TyperOption.display_type_rich`
    is where Typer draws it)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else shown(self, ctx)  # type: ignore[arg-type]

    TyperOption.display_type_rich = display  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="suanli",
    help="Plan, schedule and run large-model work on heterogeneous accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"suanli {version('suanli')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("suanli (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version),
    ] = False,
) -> None:
    """Plan, schedule and run large-model work on heterogeneous accelerators."""


app.add_typer(catalog_app, name="catalog")
app.add_typer(estimate_app, name="estimate")
app.add_typer(plan_app, name="plan")
app.add_typer(export_app, name="export")
app.add_typer(simulate_app, name="simulate")
app.command("calibrate")(calibrate_cmd)
app.command("up")(up_cmd)
app.command("submit")(submit_cmd)
app.command("jobs")(jobs_cmd)
app.command("job")(job_cmd)
app.command("logs")(logs_cmd)
app.command("cancel")(cancel_cmd)
app.command("nodes")(nodes_cmd)
app.command("queues")(queues_cmd)
app.add_typer(queue_app, name="queue")
app.add_typer(node_app, name="node")
app.command("sites")(sites_cmd)
app.command("top")(top_cmd)
app.command("serve")(serve_cmd)
app.command("services")(services_cmd)
app.command("service")(service_cmd)
app.command("scale")(scale_cmd)
app.add_typer(site_app, name="site")
app.command("corrections")(corrections_cmd)
app.add_typer(token_app, name="token")
app.add_typer(market_app, name="market")
app.add_typer(ledger_app, name="ledger")
app.command("invoice")(invoice_cmd)


def main() -> None:
    """Entry point: user errors become one readable line and exit code 2.

    Typer itself reports usage errors (a missing option, a bad choice) with exit 2.
    """
    try:
        app()
    except InfeasibleError as exc:
        typer.echo(f"infeasible: {exc}", err=True)
        sys.exit(3)
    except SuanliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
