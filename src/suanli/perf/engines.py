"""Serving engines as an input of the performance model (``data/engines.yaml``).

The same chip and model serve at very different speeds under different engines and
versions: before TensorRT-LLM's XQA kernel (v0.7) a GQA model's decode read each KV
head once per *query* head, several times the KV traffic of an engine that reads it
once per group. So an estimate names its engine, ``NAME[@VERSION]``, and takes from
the engine's profile what the model computes with (GQA reuse, KV and weight
precisions) and what it refuses (a precision the engine has no kernels for, a chip of
a vendor it does not run on). A capability no source states is not assumed: the
estimate keeps the idealised engine's behaviour for it and says so in its notes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from suanli.catalog.types import Accelerator
from suanli.errors import SuanliError
from suanli.perf.system import System

DATA = Path(__file__).parent / "data" / "engines.yaml"


class EngineError(SuanliError):
    """An engine that is not known, a version before its first profile, or a request
    the engine cannot serve (a weight precision without kernels, another vendor's chip)."""


class Profile(BaseModel):
    """What one engine can do from version ``since`` on, and where that is stated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    since: str
    gqa_kv_reuse: bool | None = None
    kv_dtypes: tuple[str, ...] | None = None
    weight_dtypes: tuple[str, ...]
    paged_kv_block: int | None = None
    chunked_prefill: bool | None = None
    graph_capture: bool | None = None
    host_scheduling: bool | None = None
    custom_all_reduce: bool | None = None
    head_split: bool | None = None
    head_quantized: bool | None = None
    published: tuple[str, ...] = ()
    source: str


class EngineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    vendors: tuple[str, ...]
    default_for: tuple[str, ...] = ()
    versions: tuple[Profile, ...]


class EngineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engines: list[EngineEntry]


VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)")


def version_key(v: str) -> tuple[int, ...]:
    """``0.7``, ``v0.4.2``, ``0.4.0rc1`` or ``0.4.post1`` as numbers (a suffix is the
    release it leads to or follows: its profile is the same)."""
    m = VERSION.match(v.strip())
    if m is None:
        raise EngineError(f"version {v!r}: give numbers separated by dots, e.g. 0.7")
    return tuple(int(p) for p in m.group(1).split("."))


@functools.cache
def engines() -> dict[str, EngineEntry]:
    data = EngineFile.model_validate(yaml.safe_load(DATA.read_text()))
    return {e.name: e for e in data.engines}


@dataclass(frozen=True, slots=True)
class Decoding:
    """What an engine's decode step does that perf costs, one object through every
    estimate (`perf.serve.decode_parts`, `perf.batching.StepTime`, the planners):
    ``gqa_kv_reuse``, a KV head read once per group of query heads (else once per query
    head); ``graph_capture``, the step replayed as a captured graph, so no
    tensor-parallel all-reduce is launched from the host on its own
    (`Efficiency.tp_launch_us`); ``host_scheduling``, the host schedules each step while
    the device waits (`Efficiency.sched_step_us`); ``custom_all_reduce``, a
    tensor-parallel all-reduce inside an NVLink node is the engine's own peer-to-peer
    kernel where that is quicker than NCCL's (`Efficiency.peer_ar_us`); ``head_split``,
    the output projection and the embedding split over the tensor-parallel ranks (else
    every rank holds both whole and reads all of the projection each step);
    ``head_quantized``, int8/int4 weights quantize the output projection too (else it
    stays 16-bit, as quantized checkpoints keep it)."""

    gqa_kv_reuse: bool = True
    graph_capture: bool = False
    host_scheduling: bool = False
    custom_all_reduce: bool = False
    head_split: bool = True
    head_quantized: bool = False

    def head_ranks(self, tp: int) -> int:
        """Ranks the output projection (and embedding) is split over."""
        return tp if self.head_split else 1

    def quantizes_head(self, weight_dtype: str) -> bool:
        """Whether the output projection is held and read at ``weight_dtype``."""
        return self.head_quantized and weight_dtype in ("int8", "int4")

    def prefill(self) -> Decoding:
        """The same engine's prefill pass: its all-reduce kernel, where it keeps the head
        and whether the host schedules the step are the engine's, but its all-reduces are
        launched one by one. ``graph_capture`` is stated of the decode step; no profile
        states a captured prefill (gpt-fast's generate.py compiles prefill with dynamic
        shapes, without reduce-overhead; vLLM's V0 engine, whose host scheduling the
        profile states, captures decode batch sizes only and runs prefill eagerly)."""
        return dataclasses.replace(self, graph_capture=False)


#: the idealised engine's decode, where no engine is named
IDEALISED = Decoding()


def decoding_of(engine: Engine | None) -> Decoding:
    """``engine``'s decode, or the idealised engine's where there is none."""
    return IDEALISED if engine is None else engine.decoding()


@dataclass(frozen=True)
class Engine:
    """One engine at one version (``version`` None: its newest profile)."""

    name: str
    version: str | None
    profile: Profile
    vendors: tuple[str, ...]
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def label(self) -> str:
        return self.name + (f"@{self.version}" if self.version else "")

    def decoding(self) -> Decoding:
        """What its decode does, as stated; where no source states a capability, what
        `IDEALISED` does (GQA reuse; kernels launched one by one; no host scheduling;
        NCCL's all-reduce; a split, 16-bit output projection)."""
        stated = {
            f.name: getattr(self.profile, f.name)
            for f in dataclasses.fields(Decoding)
            if getattr(self.profile, f.name) is not None
        }
        return dataclasses.replace(IDEALISED, **stated)

    def default_kv(self, weight_dtype: str, accelerator: Accelerator | None = None) -> str:
        """The KV cache follows the weights (`kv_follows`) where the engine keeps KV in
        that precision (fp8 weights, fp8 KV), else bf16, else the engine's first KV
        precision; on a device measured through it, what serve_lm's export keeps (fp32)."""
        if accelerator is not None and self.measured_on(accelerator):
            return MEASURED_KV_DTYPE
        follow = kv_follows(weight_dtype, accelerator)
        allowed = self.profile.kv_dtypes
        if allowed is None or follow in allowed:
            return follow
        return "bf16" if "bf16" in allowed else allowed[0]

    def measured_on(self, accelerator: Accelerator) -> bool:
        """Whether ``accelerator`` is a device as measured running this engine."""
        return accelerator.measured_engine == self.name

    def runs_on(self, accelerator: Accelerator) -> bool:
        """A chip of a vendor it supports, or a device it was measured running on."""
        return accelerator.vendor.lower() in self.vendors or self.measured_on(accelerator)

    def check(self, accelerator: Accelerator, weight_dtype: str, kv_dtype: str | None) -> None:
        p = self.profile
        vendor = accelerator.vendor.lower()
        if not self.runs_on(accelerator):
            raise EngineError(
                f"--engine {self.label} runs on {', '.join(self.vendors)} chips, not "
                f"{accelerator.name} ({vendor}); see `suanli catalog list engines`"
            )
        if self.measured_on(accelerator):  # what was measured: serve_lm's export
            if weight_dtype not in MEASURED_WEIGHT_DTYPES or kv_dtype not in (
                None,
                MEASURED_KV_DTYPE,
            ):
                raise EngineError(
                    f"{accelerator.name} was measured through {self.name} serving fp32 or "
                    f"int8 weights with an fp32 KV cache; pick --weight-dtype fp32 or int8"
                )
            return
        if weight_dtype not in p.weight_dtypes:
            raise EngineError(
                f"--engine {self.label} has no {weight_dtype} weight kernels "
                f"(it has {', '.join(p.weight_dtypes)}); pick one with --weight-dtype"
            )
        if kv_dtype is not None and p.kv_dtypes is not None and kv_dtype not in p.kv_dtypes:
            raise EngineError(
                f"--engine {self.label} keeps no {kv_dtype} KV cache "
                f"(it keeps {', '.join(p.kv_dtypes)}); pick one with --kv-dtype"
            )

    def caveats(self, accelerator: Accelerator, tp: int = 1) -> list[str]:
        """What the estimate cannot take from this engine's profile, in words (``tp``:
        the tensor parallelism, where the graph capture matters)."""
        out = []
        if self.profile.gqa_kv_reuse is None:
            out.append(
                f"{self.label}: no source states whether its decode reads a KV head once per "
                "group; assumed it does (the idealised engine)"
            )
        if self.profile.graph_capture is None and tp > 1:
            out.append(
                f"{self.label}: no source states whether it replays decode as a captured "
                "graph; its tensor-parallel all-reduces are costed as launched one by one"
            )
        if self.profile.custom_all_reduce is None and tp > 1:
            out.append(
                f"{self.label}: no source states whether it reduces tensor-parallel "
                "activations with its own peer-to-peer kernel; costed as NCCL's all-reduce"
            )
        if self.measured_on(accelerator):
            out.append(
                f"{self.label}'s decode rates measured on this device by `suanli calibrate "
                f"--engine {self.name}`; prefill takes the device's own GEMM rates"
            )
        elif accelerator.name not in self.profile.published:
            out.append(
                f"no published throughput of {self.label} on {accelerator.name}: the model's "
                "efficiency is fitted to other engines' figures (see `suanli calibrate`)"
            )
        return out


def kv_follows(weight_dtype: str, accelerator: Accelerator | None = None) -> str:
    """The KV precision that goes with ``weight_dtype``: the weights' own where they are
    floats; beside integer weights, the precision the activations compute in, which is
    fp32 on a device measured to compute in fp32 (a CPU without bf16 instructions, where
    serve_lm keeps an fp32 cache) and bf16 elsewhere: a bf16 cache there would count half
    the K/V bytes its int8 decode reads."""
    if weight_dtype in ("fp32", "fp16", "bf16", "fp8"):
        return weight_dtype
    fp32 = accelerator is not None and accelerator.compute_dtype == "fp32"
    return "fp32" if fp32 else "bf16"


#: the engines serve_lm runs its ONNX export through, so `suanli calibrate` can measure them
EXPORT_ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
#: what a device measured through an engine was measured serving (serve_lm's ONNX export)
MEASURED_WEIGHT_DTYPES = ("fp32", "int8")
MEASURED_KV_DTYPE = "fp32"


def through(system: System, engine: str) -> System | None:
    """``system`` as measured running ``engine`` (`suanli calibrate --engine`), or None
    where it was not."""
    measured = (system.accelerator.engine_variants or {}).get(engine)
    return None if measured is None else dataclasses.replace(system, accelerator=measured)


def get_engine(spec: str) -> Engine:
    """``NAME`` (its newest profile) or ``NAME@VERSION`` (the profile in force then)."""
    name, at, version = (part.strip() for part in spec.strip().lower().partition("@"))
    if at and not version:
        raise EngineError(f"--engine {spec!r}: a version after @, or none (its newest)")
    entry = engines().get(name)
    if entry is None:
        raise EngineError(f"unknown engine {name!r}; known: {', '.join(sorted(engines()))}")
    profiles = sorted(entry.versions, key=lambda p: version_key(p.since))
    if not version:
        return Engine(name, None, profiles[-1], entry.vendors)
    asked = version_key(version)
    fit = [p for p in profiles if version_key(p.since) <= asked]
    if not fit:
        raise EngineError(
            f"{name}@{version}: the first profile of {name} is from {profiles[0].since}"
        )
    return Engine(name, version, fit[-1], entry.vendors)


def default_engine(accelerator: Accelerator) -> Engine | None:
    """The engine users of this chip's vendor run first, or None (the idealised one)."""
    vendor = accelerator.vendor.lower()
    for entry in engines().values():
        if vendor in entry.default_for:
            return get_engine(entry.name)
    return None


def usual_engine(
    accelerator: Accelerator, weight_dtype: str, kv_dtype: str | None
) -> Engine | None:
    """The engine a catalog chip is planned and simulated under where none is named: its
    vendor's `default_engine` where that has kernels for these precisions, else None (the
    idealised engine); None on a device measured here, whose measured rates are its own
    engine's."""
    usual = None if accelerator.measured_engine else default_engine(accelerator)
    return usual if usual is not None and fits(usual, accelerator, weight_dtype, kv_dtype) else None


def fits(engine: Engine, accelerator: Accelerator, weight_dtype: str, kv_dtype: str | None) -> bool:
    """Whether ``engine`` has kernels for these precisions on this chip (`Engine.check`)."""
    try:
        engine.check(accelerator, weight_dtype, kv_dtype)
    except EngineError:
        return False
    return True


def for_estimate(
    spec: str | None, accelerator: Accelerator, weight_dtype: str, kv_dtype: str | None
) -> tuple[Engine | None, list[str]]:
    """The engine an estimate uses: the one named (checked strictly: a precision it has no
    kernels for is an error), else the chip's default engine where the request fits it,
    else the idealised engine, with a note that says which and why."""
    if spec:
        return get_engine(spec), []
    engine = default_engine(accelerator)
    if engine is None:
        return None, [
            f"no engine named and none is the default for {accelerator.vendor} chips: "
            "the idealised engine (name one with --engine)"
        ]
    try:
        engine.check(accelerator, weight_dtype, kv_dtype)
    except EngineError as exc:
        return None, [f"the default engine does not fit ({exc}): the idealised engine"]
    return engine, [f"engine {engine.label}: the default for {accelerator.vendor} chips"]
