"""The job spec (YAML), validated with every problem named by its path.

The smallest valid spec::

    name: hello
    command: ["python3", "-c", "print('hello')"]   # or a shell string
    resources: {accelerator: cpu, devices: 1}

Everything else has a default: kind (train/serve/batch), env, working_dir,
image (none: Kubernetes export requires one), queue, priority, preemptible, gang
(minimum members placed together), replicas (services), max_runtime_s, retries,
regions, and resource constraints instead of a named chip (vendor, min_memory_gb,
or a model the chip must be able to run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from suanli.catalog.loader import accelerators, models
from suanli.errors import SuanliError
from suanli.yamlfile import dotted, expanded_size, not_json

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes DNS label
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
INT32 = 2**31 - 1  # what every integer column holds on PostgreSQL
#: bounds no job spec may pass, whatever the cluster: a spec is data one tenant sends and
#: every tick reads, so its size and numbers are capped (a 50 MB env value was once
#: accepted, and every job listing after it was 52 MB)
MAX_ENV_VARS = 128
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ENV_BYTES = 128 * 1024
MAX_ARGS = 1024
MAX_COMMAND_BYTES = 128 * 1024
MAX_GANG = 1024
MAX_DEVICES = 1024  # per member
MAX_CPU = 4096.0  # cores per member
MAX_MEMORY_GB = 65536.0  # per member
MAX_RUNTIME_S = 366 * 86400.0
MAX_RETRIES = 100
MAX_REPLICAS = 1000
#: what the service's executors do with ``replicas`` > 1: nothing yet (a Deployment from
#: ``suanli export k8s`` runs them), so the service refuses such a job rather than start one
REPLICAS_REFUSED = (
    "more than one replica is not run by the service yet: submit one job per replica, a "
    "gang for members that start together, or run it on Kubernetes (suanli export k8s)"
)


class JobSpecError(SuanliError, ValueError):
    """A job spec with problems; ``problems`` lists each as "path: what is wrong"."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


#: every number finite (``Infinity`` in JSON, ``.inf`` in YAML are refused, not stored as
#: null), no surprising coercion (``true`` is not 1.0, ``0`` is not false)
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def catalog_enum(names: Any) -> Any:
    """A JSON-schema hook: the string branch of an optional field lists ``names()``, so
    the API's schema says which chips and models exist (the validators check the same)."""

    def hook(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == "string":
                branch["enum"] = sorted(names())

    return hook


def _chips() -> list[str]:
    return ["cpu", *accelerators()]


class Resources(BaseModel):
    model_config = STRICT
    accelerator: str | None = Field(
        default=None, min_length=1, max_length=63, json_schema_extra=catalog_enum(_chips)
    )
    #: any one of these chips (a service whose replicas may land on several types)
    accelerators: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = Field(
        default=None, min_length=1, max_length=32
    )
    vendor: str | None = Field(default=None, min_length=1, max_length=63)
    min_memory_gb: float | None = Field(default=None, gt=0, le=MAX_MEMORY_GB)
    model: str | None = Field(  # any chip that can run this catalog model
        default=None, min_length=1, max_length=127, json_schema_extra=catalog_enum(models)
    )
    devices: int = Field(default=1, ge=0, le=MAX_DEVICES)
    fraction: float | None = Field(default=None, gt=0, le=1)  # a share of one device
    cpu: float = Field(default=1.0, gt=0, le=MAX_CPU)  # cores
    memory_gb: float = Field(default=4.0, gt=0, le=MAX_MEMORY_GB)

    @field_validator("accelerator")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        # "cpu" means any CPU: the job needs cores, not a device
        if v is not None and v.lower() != "cpu" and v.lower() not in accelerators():
            raise ValueError(f"unknown accelerator {v!r} (see `suanli catalog list`, or cpu)")
        return v.lower() if v else v

    @field_validator("accelerators")
    @classmethod
    def _all_known(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out: list[str] = []
        for chip in (c.lower() for c in v):
            if chip == "cpu" or chip not in accelerators():
                raise ValueError(
                    f"unknown accelerator {chip!r} (see `suanli catalog list`; a list names "
                    "devices, and cpu is not one)"
                )
            if chip not in out:
                out.append(chip)
        return out

    @model_validator(mode="after")
    def _one_way_to_name_chips(self) -> Resources:
        if self.accelerator and self.accelerators:
            raise ValueError(
                "resources: give accelerator (one chip) or accelerators (any of several), not both"
            )
        return self

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in models():
            raise ValueError(f"unknown model {v!r} (see `suanli catalog list models`)")
        return v.lower() if v else v


class DataSpec(BaseModel):
    """Where the job's input (a dataset, a checkpoint to resume) is, and how big: the
    scheduler weighs moving it over the WAN against running where it is."""

    model_config = STRICT
    region: str = Field(min_length=1, max_length=63)
    size_gb: float = Field(ge=0, le=1e7)


class JobSpec(BaseModel):
    model_config = STRICT
    name: str = Field(max_length=63, json_schema_extra={"pattern": NAME.pattern})
    command: list[str] | str = Field(
        # what `_command` checks, said in the schema too (its message is the friendlier one)
        json_schema_extra={
            "anyOf": [
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                {"type": "string", "minLength": 1},
            ]
        }
    )
    kind: Literal["train", "serve", "batch"] = "batch"
    resources: Resources = Field(default_factory=Resources)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(default=None, min_length=1, max_length=4096)
    # Kubernetes export only, where it is required: no published image holds suanli and
    # torch, so none is assumed (the README shows a Dockerfile that builds one)
    image: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^\S+$")
    queue: str = Field(default="default", max_length=63)
    priority: int = Field(default=0, ge=-INT32, le=INT32)
    preemptible: bool = False
    gang: int | None = Field(default=None, ge=1, le=MAX_GANG)  # members started together
    # elastic: the job may start with as few as min_gang members and be resized between
    # runs (it resumes from its checkpoint at the new world size); preemptible jobs only
    min_gang: int | None = Field(default=None, ge=1, le=MAX_GANG)
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)  # Kubernetes export; see RUNS_REPLICAS
    max_runtime_s: float | None = Field(default=None, gt=0, le=MAX_RUNTIME_S)
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    regions: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list, max_length=64
    )
    # node labels the job needs (Kubernetes' nodeSelector); every node carries
    # suanli.io/node=<its name>, so {suanli.io/node: n1} pins a job to node n1
    node_selector: dict[
        Annotated[str, Field(max_length=253)], Annotated[str, Field(max_length=63)]
    ] = Field(default_factory=dict, max_length=64)
    data: DataSpec | None = None
    # run on the capacity a market order of yours leased, and only there (see docs/market.md)
    order: int | None = Field(default=None, ge=1, le=INT32)

    @model_validator(mode="after")
    def _across_fields(self) -> JobSpec:
        if self.resources.fraction is not None and self.resources.devices != 1:
            raise ValueError("resources.fraction: a share is of one device; set devices: 1")
        if self.kind == "serve" and self.gang:
            raise ValueError("gang: services scale by replicas, not gangs")
        if self.min_gang is not None:
            if not self.gang or self.min_gang > self.gang:
                raise ValueError("min_gang: give gang (the most members) and min_gang <= gang")
            if not self.preemptible:
                raise ValueError(
                    "min_gang: an elastic job is resized by stopping it, so it must be "
                    "preemptible (checkpoint on SIGTERM, resume when started again)"
                )
        return self

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        from suanli.run.jobenv import reserved_reason

        if len(v) > MAX_ENV_VARS:
            raise ValueError(f"at most {MAX_ENV_VARS} variables")
        total = 0
        for k, val in v.items():
            if not ENV_NAME.match(k):
                raise ValueError(f"{k[:64]!r}: a name is letters, digits and _, not first a digit")
            why = reserved_reason(k)
            if why:
                raise ValueError(f"{k}: {why}")
            size = len(val.encode())
            if size > MAX_ENV_VALUE_BYTES:
                raise ValueError(f"{k}: value of {size} bytes; at most {MAX_ENV_VALUE_BYTES}")
            total += size + len(k)
        if total > MAX_ENV_BYTES:
            raise ValueError(f"{total} bytes in all; at most {MAX_ENV_BYTES}")
        return v

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
        args = [v] if isinstance(v, str) else v
        if len(args) > MAX_ARGS or sum(len(a.encode()) for a in args) > MAX_COMMAND_BYTES:
            raise ValueError(f"at most {MAX_ARGS} arguments and {MAX_COMMAND_BYTES} bytes")
        return v

    @property
    def argv(self) -> list[str]:
        """The command as an argv list (a string runs through /bin/sh -c)."""
        return (
            list(self.command)
            if isinstance(self.command, list)
            else ["/bin/sh", "-c", self.command]
        )


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
            # a rule across fields names its own (the error's location is the whole spec)
            problems.append(f"{dotted(err['loc'])}: {msg}" if err["loc"] else msg)
        raise JobSpecError(source, problems) from exc
    return spec


MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # values in the document with every alias expanded


def read_yaml(path: str | Path) -> Any:
    """A job file, within limits: at most 1 MiB and 100,000 values once aliases are
    expanded; every problem a one-line `JobSpecError`."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise JobSpecError(str(p), [f"cannot read ({exc.strerror})"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise JobSpecError(str(p), [f"larger than {MAX_FILE_BYTES} bytes; a job spec is small"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobSpecError(str(p), [f"not UTF-8 text ({exc.reason})"]) from exc
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str = "<job>") -> Any:
    """A job spec's YAML text as JSON-shaped data (what the API takes), within the same
    limits as a file: a date, a set or bytes is refused with its path (JSON has none of
    them), and so is a document whose aliases expand past 100,000 values."""
    if len(text) > MAX_FILE_BYTES:
        raise JobSpecError(source, [f"larger than {MAX_FILE_BYTES} bytes; a job spec is small"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(source, [" ".join(f"not valid YAML: {exc}".split())]) from exc
    except RecursionError as exc:
        raise JobSpecError(source, ["nested too deeply"]) from exc
    if expanded_size(data, MAX_NODES) > MAX_NODES:
        raise JobSpecError(source, [f"more than {MAX_NODES} values once its aliases are expanded"])
    foreign = not_json(data)
    if foreign is not None:
        where, kind = foreign
        raise JobSpecError(source, [f"{where or 'the document'}: a YAML {kind}; quote it as text"])
    return data


def load_job_spec(path: str | Path) -> JobSpec:
    return parse_job_spec(read_yaml(path), str(path))
