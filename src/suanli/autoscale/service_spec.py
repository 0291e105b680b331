"""A service's spec (``suanli serve SPEC.yaml``, ``POST /v1/services``) and the command
line each engine's replica runs.

::

    name: chat
    model: tiny-llama-40m           # serve_lm: a catalog name or a HF config.json;
                                    # vllm/sglang: what their --model takes (an HF id)
    engine: serve_lm                # serve_lm | vllm | sglang
    engine_args: [--quantize, int8]
    slo: {ttft_s: 2.0, tpot_s: 0.1}   # optimizer: attainment (default 1.0) it plans for
    replicas: {min: 0, max: 3}
    resources: {accelerator: cpu, cpu: 1, memory_gb: 2}   # each replica, as a job's
    autoscaler: {policy: kpa, target_concurrency: 4}
    queue: default
    priority: 10                    # replicas may preempt best-effort (preemptible) jobs
    router: {buffer: 64, wait_s: 120}
    budget_usd_per_hour: 20         # optional: replicas x price never above it
    spot: {order: 12, base_ondemand: 1, fallback: true}   # optional: see SpotSpec
"""

from __future__ import annotations

import shlex
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suanli.jobs.spec import NAME, Resources
from suanli.perf.batching import MAX_SEQS
from suanli.run.executor import NODE_ADDRESS_ENV

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
ENGINES = ("serve_lm", "vllm", "sglang")
POLICIES = ("static", "hpa", "kpa", "predictive")


class Slo(BaseModel):
    model_config = STRICT
    ttft_s: float = Field(default=2.0, gt=0, le=3600)
    tpot_s: float = Field(default=0.1, gt=0, le=60)
    #: the share of requests the optimizer plans within the SLO; the rest it may send
    #: where they miss it (Mélange keeps it for >= 0.995). Only ``optimizer`` reads it
    attainment: float = Field(default=1.0, ge=0.5, le=1.0)


class ReplicaBounds(BaseModel):
    model_config = STRICT
    min: int = Field(default=1, ge=0, le=256)
    max: int = Field(default=4, ge=1, le=256)

    @model_validator(mode="after")
    def _order(self) -> ReplicaBounds:
        if self.min > self.max:
            raise ValueError(f"replicas: min {self.min} is above max {self.max}")
        return self


class AutoscalerSpec(BaseModel):
    """``static`` holds ``replicas.min``; ``hpa``/``kpa`` scale on requests in flight per
    replica (``target_concurrency``); ``predictive`` forecasts arrivals and needs what one
    replica serves (``capacity_rps``) and how long one takes to start (``cold_start_s``);
    ``optimizer`` chooses the cheapest mix of the chips ``resources.accelerators`` allows
    for the recent request sizes (Mélange), each chip's capacity from perf."""

    model_config = STRICT
    policy: Literal["static", "hpa", "kpa", "predictive", "optimizer"] = "hpa"
    target_concurrency: float = Field(default=4.0, gt=0, le=4096)
    capacity_rps: float | None = Field(default=None, gt=0, le=1e6)
    cold_start_s: float = Field(default=60.0, ge=0, le=3600)
    period_s: float | None = Field(default=None, gt=0, le=3600)  # default: the policy's own
    down_window_s: float = Field(default=300.0, ge=0, le=86_400)
    stable_window_s: float = Field(default=60.0, gt=0, le=3600)  # KPA's
    scale_to_zero_grace_s: float = Field(default=30.0, ge=0, le=86_400)
    #: optimizer: plan the rate observed now at this share of the replicas' SLO capacity
    #: (the forecast peak is planned at the capacity: it carries its own confidence)
    utilization: float = Field(default=0.7, gt=0, le=1)

    @model_validator(mode="after")
    def _needs(self) -> AutoscalerSpec:
        if self.policy == "predictive" and self.capacity_rps is None:
            raise ValueError(
                "autoscaler.capacity_rps: predictive scaling needs what one replica serves "
                "(requests/s within the SLO; `suanli simulate serve` prints it per chip)"
            )
        return self


class SpotSpec(BaseModel):
    """Replicas on spot capacity: the leases of one of the owner's spot market orders
    (``suanli market order --mode spot``), SkyServe's spot policy on our market.

    ``base_ondemand`` replicas always run on demand, so that a reclaim never takes the
    whole service (SkyServe's ``base_ondemand_fallback_replicas``). With ``fallback``
    (SkyServe's ``dynamic_ondemand_fallback``), what the order's live leases cannot hold
    runs on demand: a replica whose lease is reclaimed is replaced on demand at once,
    within the lease's notice, and when the order wins a lease again a spot replica
    starts and the on-demand one it replaces is drained once the spot one is ready.
    Without it, replicas wait for spot capacity."""

    model_config = STRICT
    order: int = Field(ge=1, le=2**31 - 1)
    base_ondemand: int = Field(default=0, ge=0, le=256)
    fallback: bool = True


class RouterSpec(BaseModel):
    model_config = STRICT
    #: requests held while no replica is ready (scale from zero); beyond: 429
    buffer: int = Field(default=64, ge=0, le=100_000)
    wait_s: float = Field(default=300.0, gt=0, le=3600)  # how long one may wait for a replica


class ServiceSpec(BaseModel):
    model_config = STRICT
    name: str = Field(max_length=63, pattern=NAME.pattern)
    model: str = Field(min_length=1, max_length=512, pattern=r"^[^\s;&|$`]+$")
    engine: Literal["serve_lm", "vllm", "sglang"] = "serve_lm"
    engine_args: list[str] = Field(default_factory=list, max_length=64)
    slo: Slo = Field(default_factory=Slo)
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds)
    resources: Resources = Field(default_factory=Resources)
    autoscaler: AutoscalerSpec = Field(default_factory=AutoscalerSpec)
    queue: str = Field(default="default", max_length=63)
    priority: int = Field(default=0, ge=-(2**31 - 1), le=2**31 - 1)
    router: RouterSpec = Field(default_factory=RouterSpec)
    budget_usd_per_hour: float | None = Field(default=None, gt=0, le=1e7)
    tp: int = Field(default=1, ge=1, le=64)
    spot: SpotSpec | None = None

    def chips(self) -> list[str]:
        """The catalog chips a replica may run on (empty: any, or a CPU)."""
        r = self.resources
        return list(r.accelerators or ([r.accelerator] if r.accelerator else []))

    @model_validator(mode="after")
    def _mix(self) -> ServiceSpec:
        if self.autoscaler.policy == "optimizer":
            r = self.resources
            if not self.chips() or r.accelerator == "cpu":
                raise ValueError(
                    "autoscaler.policy optimizer chooses among catalog chips: list them in "
                    "resources.accelerators (e.g. [a10, a100-80gb])"
                )
            if r.devices != self.tp:
                # the optimizer prices and sizes a replica as tp devices of one chip, as
                # the market bills its leases by the replica's devices: the two must agree
                raise ValueError(
                    f"autoscaler.policy optimizer: resources.devices ({r.devices}) must equal "
                    f"tp ({self.tp}), the devices one replica runs on"
                )
        return self

    @model_validator(mode="after")
    def _args(self) -> ServiceSpec:
        for a in self.engine_args:
            if not a or len(a) > 512 or any(c in a for c in "\n\r\0"):
                raise ValueError("engine_args: each a non-empty single-line string")
            if a.split("=")[0] in OWNED_FLAGS:
                raise ValueError(
                    f"engine_args: {a.split('=')[0]} is set by suanli "
                    "(port, host, name, model, key)"
                )
        return self


#: flags the controller sets itself: a spec cannot point a replica elsewhere
OWNED_FLAGS = {
    "--port",
    "--host",
    "--served-model-name",
    "--model",
    "--model-path",
    "--tensor-parallel-size",
    "--tp",
    "--api-key",
}


def replica_command(spec: ServiceSpec, port: int, token_budget: int | None = None) -> list[str]:
    """The command one replica runs, listening on ``port`` under the service's name
    (what clients put in ``model``). Every replica listens on its node's address (the
    executor gives it as ``SUANLI_NODE_ADDRESS``), so a replica on another site's node
    is reached there; vLLM takes it only as ``--host``, so a POSIX shell adds it. vLLM
    and SGLang start their own OpenAI servers (``vllm serve``, ``sglang.launch_server``)
    where they are installed. SGLang takes its key only as ``--api-key``, which on the
    command line any local user could read: `suanli.workloads.sglang_keyed` starts it
    with the key (and the host) added after the exec.

    ``token_budget`` (vLLM): ``--max-num-batched-tokens`` sized to the TPOT SLO for the
    replica's chip (`suanli.autoscale.kinds.token_budget`), the budget the simulator
    plans with, and ``--max-num-seqs`` as the simulator has it (256): vLLM refuses a
    budget below its sequences, whose default is 1,024 on an H100. What the spec's own
    ``engine_args`` set wins; a budget below the sequences they ask for is raised to
    them."""
    if spec.engine == "serve_lm":
        head = [sys.executable, "-m", "suanli.workloads.serve_lm", "--model", spec.model]
        head += ["--max-queue", str(max(1, spec.router.buffer))]
    elif spec.engine == "vllm":
        on_node = f'exec "$@" --host "${{{NODE_ADDRESS_ENV}:-127.0.0.1}}"'
        head = ["sh", "-c", on_node, "vllm-on-node", "vllm", "serve", spec.model]
        head += ["--tensor-parallel-size", str(spec.tp)]
        if token_budget is not None:
            head += _budget_flags(spec.engine_args, token_budget)
    else:
        head = [sys.executable, "-m", "suanli.workloads.sglang_keyed"]
        head += ["--model-path", spec.model, "--tp", str(spec.tp)]
    return [
        *head,
        "--port",
        str(port),
        "--served-model-name",
        spec.name,
        *spec.engine_args,
    ]


def _budget_flags(args: list[str], budget: int) -> list[str]:
    """vLLM's ``--max-num-batched-tokens`` and ``--max-num-seqs`` for ``budget``, less what
    ``args`` already set (``--flag=value`` or ``--flag value``)."""
    given: dict[str, str] = {}
    for i, a in enumerate(args):
        flag, eq, value = a.partition("=")
        if flag.startswith("--"):
            given[flag] = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    seqs = MAX_SEQS
    if "--max-num-seqs" in given:
        try:
            seqs = int(given["--max-num-seqs"])
        except ValueError:
            return []  # vLLM will say what is wrong with it
    out = [] if "--max-num-seqs" in given else ["--max-num-seqs", str(seqs)]
    if "--max-num-batched-tokens" not in given:
        out += ["--max-num-batched-tokens", str(max(budget, seqs))]
    return out


def command_line(cmd: list[str]) -> str:
    return shlex.join(cmd)
