"""Named policies and policy files: a list of actions and tiers of plugins, as configuration.

A policy file (YAML), in the manner of Volcano's scheduler configuration::

    actions: [enqueue, allocate, preempt, backfill]
    tie_break: random            # or first
    device_picker: best-fit-gpu  # or random-gpu, frag-gpu
    tiers:
      - plugins:
          - {name: priority}
          - {name: gang}
      - plugins:
          - {name: resource-fit}
          - {name: frag-aware, weight: 1}

Filters and scorers are recognised by name; a plugin with a ``weight`` scores.
Every problem in a file is reported with its path, and nothing runs from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from suanli.cluster.task import Task
from suanli.cluster.wan import Wan
from suanli.errors import SuanliError
from suanli.sched.framework import Framework
from suanli.sched.plugins_fit import (
    BestFitGpu,
    NodeSelector,
    RandomGpu,
    RegionConstraint,
    ResourceFit,
)
from suanli.sched.plugins_openb import (
    BestFitScore,
    DotProductScore,
    FragAwareScore,
    FragmentationGpu,
    FragmentationScore,
    GpuClusteringScore,
    GpuPackingScore,
    typical_pods,
)
from suanli.sched.plugins_score import (
    BinPack,
    EnergyAware,
    LoadAware,
    PerfAffinity,
    Spread,
    Topology,
)
from suanli.sched.plugins_sites import DataLocality, DataRegion, PowerCost, SiteCost, SiteWait
from suanli.sched.round_action import MODES, ROUND_POLICIES, RoundsConfig


class PolicyFileError(SuanliError, ValueError):
    """A policy name or file that cannot be used; names every problem."""


ACTIONS = ("enqueue", "allocate", "backfill", "preempt", "reclaim", "rounds")
FILTERS = ("resource-fit", "region", "node-selector", "data-region", "site-wait")
SCORERS = (
    "random",
    "best-fit",
    "dot-product",
    "gpu-packing",
    "gpu-clustering",
    "fgd",
    "frag-aware",
    "binpack",
    "spread",
    "topology",
    "perf-affinity",
    "load-aware",
    "energy-aware",
    "power-cost",
    "data-locality",
    "site-cost",
)
ORDERING = ("priority", "gang", "drf", "proportion", "fifo")
PICKERS = ("best-fit-gpu", "random-gpu", "frag-gpu")


@dataclass
class PolicyConfig:
    name: str
    actions: list[str]
    filters: list[str]
    scorers: list[tuple[str, float]]
    ordering: list[str] = field(default_factory=list)
    device_picker: str = "best-fit-gpu"
    tie_break: str = "random"
    rounds: RoundsConfig | None = None  # the ``rounds`` action's settings


#: Named policies (what ``--policy NAME`` means).
NAMED: dict[str, PolicyConfig] = {
    "random": PolicyConfig(
        "random", ["allocate"], ["resource-fit"], [("random", 1)], device_picker="random-gpu"
    ),
    # The FGD paper's baselines break ties by node order (its simulator randomises the
    # order per seed), which is what "first" does over a shuffled node list.
    "best-fit": PolicyConfig(
        "best-fit", ["allocate"], ["resource-fit"], [("best-fit", 1)], tie_break="first"
    ),
    "dot-product": PolicyConfig(
        "dot-product", ["allocate"], ["resource-fit"], [("dot-product", 1)], tie_break="first"
    ),
    "gpu-packing": PolicyConfig(
        "gpu-packing", ["allocate"], ["resource-fit"], [("gpu-packing", 1)], tie_break="first"
    ),
    "gpu-clustering": PolicyConfig(
        "gpu-clustering", ["allocate"], ["resource-fit"], [("gpu-clustering", 1)], tie_break="first"
    ),
    "fgd": PolicyConfig(
        "fgd",
        ["allocate"],
        ["resource-fit"],
        [("fgd", 1)],
        device_picker="frag-gpu",
        tie_break="first",
    ),
    "frag-aware": PolicyConfig(
        "frag-aware",
        ["allocate"],
        ["resource-fit"],
        [("frag-aware", 1)],
        device_picker="frag-gpu",
        tie_break="first",
    ),
    "fifo": PolicyConfig(
        "fifo", ["enqueue", "allocate"], ["resource-fit"], [("best-fit", 1)], ordering=["fifo"]
    ),
    "priority": PolicyConfig(
        "priority",
        ["enqueue", "allocate", "preempt"],
        ["resource-fit"],
        [("best-fit", 1)],
        ordering=["priority", "gang"],
    ),
    "drf": PolicyConfig(
        "drf",
        ["enqueue", "allocate", "reclaim"],
        ["resource-fit"],
        [("best-fit", 1)],
        ordering=["drf", "gang"],
    ),
    # Gavel's heterogeneity-aware max-min, realised in 6-minute time slices (jobs
    # take turns); placement within a chip type by best fit
    "gavel-rounds": PolicyConfig(
        "gavel-rounds",
        ["enqueue", "rounds", "allocate", "backfill"],
        ["resource-fit"],
        [("best-fit", 1)],
        ordering=["priority", "gang"],
        rounds=RoundsConfig(),
    ),
    # comparative advantage without time slices: Gavel's max-total-throughput shares
    # choose each job's chip type; jobs run on and move when the move pays
    "hetero": PolicyConfig(
        "hetero",
        ["enqueue", "rounds", "allocate", "backfill"],
        ["resource-fit"],
        [("best-fit", 1)],
        ordering=["priority", "gang"],
        rounds=RoundsConfig(policy="gavel-max-throughput", mode="moves"),
    ),
    # the same, with max-min fair shares
    "hetero-fair": PolicyConfig(
        "hetero-fair",
        ["enqueue", "rounds", "allocate", "backfill"],
        ["resource-fit"],
        [("best-fit", 1)],
        ordering=["priority", "gang"],
        rounds=RoundsConfig(policy="gavel-max-min", mode="moves"),
    ),
    # Site choice (issue 17's comparison): where the data is, only; the cheapest work,
    # wherever the data is; and ours, cost and carbon per unit of work against the
    # time to move the data there and to queue for a busy site, in dollars (carbon and
    # fit break near-ties)
    "nearest-site": PolicyConfig(
        "nearest-site",
        ["enqueue", "allocate", "backfill"],
        ["resource-fit", "region", "data-region"],
        [("power-cost", 10), ("best-fit", 1)],  # the cheapest work there, as the others
        ordering=["priority", "gang"],
    ),
    "cheapest-site": PolicyConfig(
        "cheapest-site",
        ["enqueue", "allocate", "backfill"],
        ["resource-fit", "region"],
        [("power-cost", 10), ("best-fit", 1)],
        ordering=["priority", "gang"],
    ),
    "site-aware": PolicyConfig(
        "site-aware",
        ["enqueue", "allocate", "backfill"],
        ["resource-fit", "region", "site-wait"],
        [("site-cost", 10), ("energy-aware", 1), ("best-fit", 1)],
        ordering=["priority", "gang"],
    ),
    "perf-affinity": PolicyConfig(
        "perf-affinity",
        ["enqueue", "allocate"],
        ["resource-fit"],
        [("perf-affinity", 10), ("best-fit", 1)],
        ordering=["priority", "gang"],
    ),
}


@dataclass
class PluginContext:
    """What plugin factories may need: the workload (FGD), throughput tables, chip power."""

    workload: list[Task] = field(default_factory=list)
    throughput: dict[tuple[str, str], float] = field(default_factory=dict)
    power_w: dict[str, float] = field(default_factory=dict)
    type_vendor: dict[str, str] = field(default_factory=dict)
    type_memory_gb: dict[str, float] = field(default_factory=dict)
    wan: Wan = field(default_factory=Wan)  # between regions, for data-locality


class _Random:
    name = "random"

    def score(self, state: Any, task: Any, nodes: Any, cycle: Any) -> Any:
        import numpy as np

        return np.zeros(nodes.size)  # all tie: the framework picks uniformly


def build(config: PolicyConfig, ctx: PluginContext | None = None) -> Framework:
    """A `Framework` for a policy configuration."""
    ctx = ctx or PluginContext()
    filters: list[Any] = []
    fit = ResourceFit(
        type_vendor=ctx.type_vendor or None, type_memory_gb=ctx.type_memory_gb or None
    )
    for name in config.filters:
        if name == "resource-fit":
            filters.append(fit)
        elif name == "site-wait":
            filters.append(
                SiteWait(
                    power_w=dict(ctx.power_w),
                    throughput=dict(ctx.throughput),
                    wan=ctx.wan,
                )
            )
        elif name == "region":
            filters.append(RegionConstraint())
        elif name == "data-region":
            filters.append(DataRegion())
        else:
            filters.append(NodeSelector())
    for f in filters:  # the wait compares only the places the other filters allow
        if isinstance(f, SiteWait):
            f.others = [g for g in filters if g is not f]
    scorers: list[tuple[Any, float]] = []
    listeners: list[Any] = []
    frag: FragmentationScore | None = None
    for name, weight in config.scorers:
        plugin: Any
        if name == "random":
            plugin = _Random()
        elif name == "best-fit":
            plugin = BestFitScore()
        elif name == "dot-product":
            plugin = DotProductScore()
        elif name == "gpu-packing":
            plugin = GpuPackingScore()
        elif name == "gpu-clustering":
            plugin = GpuClusteringScore()
            listeners.append(plugin)
        elif name in ("fgd", "frag-aware"):
            frag = FragmentationScore(typical_pods(ctx.workload))
            plugin = frag if name == "fgd" else FragAwareScore(frag)
        elif name == "binpack":
            plugin = BinPack()
        elif name == "spread":
            plugin = Spread()
        elif name == "topology":
            plugin = Topology()
        elif name == "perf-affinity":
            plugin = PerfAffinity(throughput=dict(ctx.throughput))
        elif name == "load-aware":
            plugin = LoadAware()
        elif name == "energy-aware":
            plugin = EnergyAware(power_w=dict(ctx.power_w), throughput=dict(ctx.throughput))
        elif name == "power-cost":
            plugin = PowerCost(power_w=dict(ctx.power_w), throughput=dict(ctx.throughput))
        elif name == "data-locality":
            plugin = DataLocality(wan=ctx.wan)
        elif name == "site-cost":
            plugin = SiteCost(
                power_w=dict(ctx.power_w), throughput=dict(ctx.throughput), wan=ctx.wan
            )
        else:
            raise PolicyFileError(f"unknown scorer {name!r}; one of {', '.join(SCORERS)}")
        scorers.append((plugin, weight))
    picker: Any
    if config.device_picker == "frag-gpu":
        if frag is None:
            raise PolicyFileError("device_picker frag-gpu needs the fgd or frag-aware scorer")
        picker = FragmentationGpu(scorer=frag)
    elif config.device_picker == "random-gpu":
        picker = RandomGpu()
    else:
        picker = BestFitGpu()
    return Framework(filters, scorers, picker, tie_break=config.tie_break, listeners=listeners)


def load_policy(name_or_path: str) -> PolicyConfig:
    """A named policy, or a policy YAML file (module docstring)."""
    if name_or_path in NAMED:
        return NAMED[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise PolicyFileError(
            f"unknown policy {name_or_path!r}: give one of {', '.join(NAMED)} or a YAML file"
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # one line, even for YAML's multi-line errors
        raise PolicyFileError(f"{path}: cannot read policy ({reason})") from exc
    return parse_policy(doc, str(path))


def parse_policy(doc: Any, source: str = "<policy>") -> PolicyConfig:
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise PolicyFileError(f"{source}: expected a mapping with actions and tiers")
    unknown_keys = set(doc) - {"name", "actions", "tiers", "tie_break", "device_picker", "rounds"}
    problems += [f"{k}: unknown key" for k in sorted(unknown_keys)]
    actions = doc.get("actions") or ["allocate"]
    if not isinstance(actions, list):
        problems.append("actions: must be a list, e.g. [enqueue, allocate]")
        actions = []
    for i, a in enumerate(actions):
        if a not in ACTIONS:
            problems.append(f"actions[{i}]: unknown action {a!r}; one of {', '.join(ACTIONS)}")
    filters: list[str] = []
    scorers: list[tuple[str, float]] = []
    ordering: list[str] = []
    tiers = doc.get("tiers") or []
    if not isinstance(tiers, list):
        problems.append("tiers: must be a list of {plugins: [...]}")
        tiers = []
    for t, tier in enumerate(tiers):
        plugins = tier.get("plugins") if isinstance(tier, dict) else None
        if not isinstance(plugins, list):
            problems.append(f"tiers[{t}]: expected a mapping with a list of plugins")
            continue
        for p, plugin in enumerate(plugins):
            where = f"tiers[{t}].plugins[{p}]"
            if not isinstance(plugin, dict) or "name" not in plugin:
                problems.append(f"{where}: expected a mapping with a name")
                continue
            name = plugin["name"]
            weight = plugin.get("weight")
            if name in FILTERS and weight is None:
                filters.append(name)
            elif name in ORDERING:
                ordering.append(name)
            elif name in SCORERS:
                try:
                    w = float(1 if weight is None else weight)
                except (TypeError, ValueError):
                    problems.append(f"{where}.weight: must be a number")
                    continue
                if w < 0:
                    problems.append(f"{where}.weight: must be >= 0")
                scorers.append((name, w))
            else:
                problems.append(
                    f"{where}.name: unknown plugin {name!r}; one of "
                    f"{', '.join(FILTERS + ORDERING + SCORERS)}"
                )
    picker = doc.get("device_picker", "best-fit-gpu")
    if picker not in PICKERS:
        problems.append(f"device_picker: one of {', '.join(PICKERS)}")
    tie = doc.get("tie_break", "random")
    if tie not in ("random", "first"):
        problems.append("tie_break: random or first")
    if not scorers:
        problems.append("tiers: at least one scoring plugin is needed")
    if "resource-fit" not in filters:
        filters.insert(0, "resource-fit")  # fitting is not optional
    rounds = _rounds_config(doc.get("rounds"), "rounds" in actions, problems)
    if problems:
        raise PolicyFileError(f"{source}: " + "; ".join(problems))
    return PolicyConfig(
        doc.get("name", Path(source).stem),
        list(actions),
        filters,
        scorers,
        ordering,
        picker,
        tie,
        rounds,
    )


def _rounds_config(raw: Any, wanted: bool, problems: list[str]) -> RoundsConfig | None:
    """``rounds: {policy: gavel-max-min, round_s: 360, reset_every_s: 1920}``."""
    from suanli.sched.gavel import POLICIES

    if raw is None:
        return RoundsConfig() if wanted else None
    if not wanted:
        problems.append("rounds: settings given, but 'rounds' is not among the actions")
    if not isinstance(raw, dict):
        problems.append("rounds: expected a mapping {policy, round_s, reset_every_s}")
        return None
    keys = ("policy", "round_s", "reset_every_s", "mode")
    extra = set(raw) - set(keys)
    problems += [f"rounds.{k}: unknown key ({', '.join(keys)})" for k in sorted(extra)]
    policy = raw.get("policy", RoundsConfig.policy)
    if policy not in ROUND_POLICIES:
        why = "needs each job's deadline; " if policy in POLICIES else ""
        problems.append(
            f"rounds.policy: {policy!r} {why or 'unknown; '}one of {', '.join(ROUND_POLICIES)}"
        )
    mode = raw.get("mode", RoundsConfig.mode)
    if mode not in MODES:
        problems.append(f"rounds.mode: unknown {mode!r}; one of {', '.join(MODES)}")
    seconds = {}
    for key in ("round_s", "reset_every_s"):
        value = raw.get(key, getattr(RoundsConfig, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"rounds.{key}: a number of seconds >= 0")
        else:
            seconds[key] = float(value)
    if seconds.get("round_s") == 0:
        problems.append("rounds.round_s: must be > 0")
    return RoundsConfig(
        str(policy),
        seconds.get("round_s", RoundsConfig.round_s),
        seconds.get("reset_every_s", RoundsConfig.reset_every_s),
        str(mode),
    )
