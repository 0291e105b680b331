"""The job spec (YAML), validated with every problem named by its path.

The smallest valid spec::

    name: hello
    command: ["python3", "-c", "print('hello')"]   # or a shell string
    resources: {accelerator: cpu, devices: 1}

Everything else has a default: kind (train/serve/batch), env, working_dir,
image (for Kubernetes), queue, priority, preemptible, gang (minimum members
placed together), replicas (services), max_runtime_s, retries, regions, and
resource constraints instead of a named chip (vendor, min_memory_gb, or a
model the chip must be able to run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from suanli.catalog.loader import accelerators, models
from suanli.errors import SuanliError

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes DNS label


class JobSpecError(SuanliError, ValueError):
    """A job spec with problems; ``problems`` lists each as "path: what is wrong"."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accelerator: str | None = None
    vendor: str | None = None
    min_memory_gb: float | None = Field(default=None, gt=0)
    model: str | None = None  # any chip that can run this catalog model
    devices: int = Field(default=1, ge=0)
    fraction: float | None = Field(default=None, gt=0, le=1)  # a share of one device
    cpu: float = Field(default=1.0, gt=0)  # cores
    memory_gb: float = Field(default=4.0, gt=0)

    @field_validator("accelerator")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        # "cpu" means any CPU: the job needs cores, not a device
        if v is not None and v.lower() != "cpu" and v.lower() not in accelerators():
            raise ValueError(f"unknown accelerator {v!r} (see `suanli catalog list`, or cpu)")
        return v.lower() if v else v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in models():
            raise ValueError(f"unknown model {v!r} (see `suanli catalog list models`)")
        return v.lower() if v else v


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    command: list[str] | str
    kind: Literal["train", "serve", "batch"] = "batch"
    resources: Resources = Field(default_factory=Resources)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    image: str = "python:3.11-slim"
    queue: str = "default"
    priority: int = 0
    preemptible: bool = False
    gang: int | None = Field(default=None, ge=1)  # members that must start together
    replicas: int = Field(default=1, ge=1)
    max_runtime_s: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    regions: list[str] = Field(default_factory=list)
    # node labels the job needs (Kubernetes' nodeSelector); every node carries
    # suanli.io/node=<its name>, so {suanli.io/node: n1} pins a job to node n1
    node_selector: dict[str, str] = Field(default_factory=dict)
    owner: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | str) -> list[str] | str:
        if not v or (isinstance(v, list) and not all(isinstance(x, str) and x for x in v)):
            raise ValueError("must be a non-empty string or list of strings")
        return v

    @property
    def argv(self) -> list[str]:
        """The command as an argv list (a string runs through /bin/sh -c)."""
        return (
            list(self.command)
            if isinstance(self.command, list)
            else ["/bin/sh", "-c", self.command]
        )


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_job_spec(data: Any, source: str = "<job>") -> JobSpec:
    """Validate a parsed spec; every problem is listed with its path."""
    if not isinstance(data, dict):
        raise JobSpecError(source, ["expected a mapping with at least name and command"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_path(err['loc'])}: {msg}")
        raise JobSpecError(source, problems) from exc
    r = spec.resources
    if r.fraction is not None and r.devices != 1:
        raise JobSpecError(source, ["resources.fraction: a share is of one device; set devices: 1"])
    if spec.kind == "serve" and spec.gang:
        raise JobSpecError(source, ["gang: services scale by replicas, not gangs"])
    return spec


def load_job_spec(path: str | Path) -> JobSpec:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobSpecError(str(p), [f"cannot read ({exc.strerror})"]) from exc
    except yaml.YAMLError as exc:
        raise JobSpecError(str(p), [" ".join(f"not valid YAML: {exc}".split())]) from exc
    return parse_job_spec(data, str(p))
