"""The compression options `estimate` and `plan` share: pruning and a distillation teacher."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from suanli.catalog import get_model
from suanli.catalog.types import ModelArch
from suanli.perf.compress import prune


class PruneAxisOpt(StrEnum):
    width = "width"
    depth = "depth"


Prune = Annotated[
    float | None,
    typer.Option(
        "--prune",
        help="Structured pruning: the share (0-1) of MLP channels and query heads (width) "
        "or of layers (depth) removed from the model.",
    ),
]
PruneAxis = Annotated[PruneAxisOpt, typer.Option("--prune-axis", help="What --prune removes.")]
DistillFrom = Annotated[
    str | None,
    typer.Option(
        "--distill-from",
        help="Teacher model (catalog name or config.json): its forward pass runs every step.",
    ),
]


def pruned_model(model: str, sparsity: float | None, axis: PruneAxisOpt) -> ModelArch:
    """The catalog model, pruned where ``--prune`` says so."""
    arch = get_model(model)
    return arch if sparsity is None else prune(arch, sparsity, axis.value)


def teacher_model(name: str | None) -> ModelArch | None:
    return None if name is None else get_model(name)
