"""The planner and simulator pages: forms over ``suanli.plan`` and ``suanli.sim``.

Plans are reads (nothing is stored), so the forms are GETs: a plan's address can be
bookmarked and shared. The work runs in a thread, off the event loop that serves
everyone else's pages and the API.
"""

import functools
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse

from suanli.catalog import get_model
from suanli.catalog.loader import get_accelerator
from suanli.errors import SuanliError
from suanli.perf import make_system
from suanli.plan.pool import pool_from_accelerators
from suanli.plan.serve import ServeRequest, plan_serve
from suanli.plan.split import SplitRequest, bandwidth_table, plan_split
from suanli.plan.train import OBJECTIVES, TrainRequest, plan_train
from suanli.web import views
from suanli.web.render import page

#: plans and simulations at once, in this process: each is seconds of CPU holding the
#: interpreter lock, so a queue of them would slow every other page and the API; past
#: this many the answer is 429, try again
WORKERS = 2
FRONTIER_OPTIONS = 40  # options asked of the planner to draw the cost-vs-time frontier
SHOWN_OPTIONS = 5
MAX_DEVICES = 100_000
SIM_POLICIES = ("best-fit", "dot-product", "gpu-packing", "gpu-clustering", "fgd", "random")
POD_LISTS = ("default", "multigpu50", "gpushare100", "gpuspec33")


def shared_data() -> Path:
    """``../shared/data`` beside the project root, or ``SUANLI_SHARED_DATA``."""
    env = os.environ.get("SUANLI_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def train_plan(
    model: str, tokens: float, chips: list[str], max_devices: int, objective: str
) -> dict[str, Any]:
    arch = get_model(model)
    res = plan_train(
        TrainRequest(
            model=arch,
            tokens=tokens,
            pool=pool_from_accelerators(chips, max_devices),
            max_devices=max_devices,
            objective=objective,
            top=FRONTIER_OPTIONS,
        )
    )
    if not res.options:
        raise PlanProblem(res.infeasible or "no layout fits these chips and limits")
    opts = res.options
    points = [(o["time_to_train_s"] / 3600, o["cost_usd"]) for o in opts]
    keep = set(views.frontier(points))
    shown = opts[:SHOWN_OPTIONS]
    # the parts that take time or memory in some option (a chart of zeros says nothing);
    # dp_comm_total overlaps compute: only its exposed part adds to the step
    parts = sorted(
        {k for o in shown for k, v in o["estimate"]["breakdown_s"].items() if v > 0}
        - {"dp_comm_total"}
    )
    mem_parts = sorted(
        {k for o in shown for k, v in o["estimate"]["memory_gb"].items() if v > 0} - {"total"}
    )
    labels = [f"#{i} {o['pool']} x{o['num_devices']}" for i, o in enumerate(shown, 1)]
    return {
        "options": shown,
        "evaluated": res.candidates_evaluated,
        "wall_s": res.wall_s,
        "notes": res.notes,
        "step_chart": {
            "kind": "stacked",
            "title": "step time (s) by part",
            "labels": labels,
            "series": {p: [o["estimate"]["breakdown_s"].get(p, 0.0) for o in shown] for p in parts},
        },
        "memory_chart": {
            "kind": "stacked",
            "title": "memory per device (GB) by part",
            "labels": labels,
            "series": {
                p: [o["estimate"]["memory_gb"].get(p, 0.0) for o in shown] for p in mem_parts
            },
        },
        "frontier_chart": {
            "kind": "frontier",
            "title": "cost vs time to train",
            "points": [
                {"x": x, "y": y, "label": f"{o['pool']} x{o['num_devices']}", "front": i in keep}
                for i, ((x, y), o) in enumerate(zip(points, opts, strict=True))
            ],
        },
    }


def serve_plan(
    model: str,
    rate: float,
    input_len: int,
    output_len: int,
    chips: list[str],
    ttft: float | None,
    tpot: float | None,
) -> dict[str, Any]:
    res = plan_serve(
        ServeRequest(
            model=get_model(model),
            rate=rate,
            input_len=input_len,
            output_len=output_len,
            pool=pool_from_accelerators(chips, MAX_DEVICES),
            ttft_slo_s=ttft,
            tpot_slo_s=tpot,
            top=SHOWN_OPTIONS,
        )
    )
    if not res.options:
        raise PlanProblem(res.infeasible or "no layout meets these SLOs on these chips")
    labels = [f"#{i} {o['pool']} x{o['num_devices']}" for i, o in enumerate(res.options, 1)]
    return {
        "options": res.options,
        "evaluated": res.candidates_evaluated,
        "wall_s": res.wall_s,
        "notes": res.notes,
        "cost_chart": {
            "kind": "bars",
            "title": "USD per million output tokens",
            "labels": labels,
            "series": {"USD/M": [o["usd_per_million_output_tokens"] for o in res.options]},
        },
    }


def split_plan(
    model: str,
    edge: str,
    cloud: str,
    uplink_mbps: float,
    rtt_ms: float,
    input_len: int,
    output_len: int,
) -> dict[str, Any]:
    req = SplitRequest(
        model=get_model(model),
        edge=make_system(get_accelerator(edge)),
        cloud=make_system(get_accelerator(cloud)),
        uplink_mbps=uplink_mbps,
        rtt_ms=rtt_ms,
        input_len=input_len,
        output_len=output_len,
    )
    res = plan_split(req)
    if not res.options:
        raise PlanProblem(res.infeasible or "no split fits the edge device")
    by_layer = sorted(res.options, key=lambda o: o["split_after_layer"])
    return {
        "options": res.options[:SHOWN_OPTIONS],
        "evaluated": res.candidates_evaluated,
        "wall_s": res.wall_s,
        "notes": res.notes,
        "bandwidth": bandwidth_table(req),
        "latency_chart": {
            "kind": "bars",
            "title": "latency (s) by the layer the model is split after",
            "labels": [str(o["split_after_layer"]) for o in by_layer],
            "series": {
                "edge-to-cloud latency s": [o["latency_s"] for o in by_layer],
                "time to first token s": [o["ttft_s"] for o in by_layer],
            },
        },
    }


class PlanProblem(SuanliError):
    """The planner found nothing: said on the page, not as an error status."""


def simulate(pods_name: str, policies: list[str], seed: int, mode: str) -> dict[str, Any]:
    """``allocation``: the openb protocol (GPU allocation as load rises to 130%);
    ``jct``: the pods replayed for their run times, and the CDF of their completion times."""
    from suanli.sched.policies import PluginContext, build, load_policy
    from suanli.sim.openb import run_openb
    from suanli.sim.replay import replay_policy

    data = shared_data()
    nodes_csv = data / "openb_node_list_gpu_node.csv"
    pods_csv = data / f"openb_pod_list_{pods_name}.csv"
    if not nodes_csv.exists() or not pods_csv.exists():
        raise PlanProblem(
            f"the openb traces are not here ({data}): the simulator page replays them from "
            "../shared/data beside the project (or SUANLI_SHARED_DATA)"
        )
    nodes, pods = traces(nodes_csv, pods_csv)
    out: dict[str, Any] = {"nodes": len(nodes), "pods": len(pods), "mode": mode, "runs": []}
    series: dict[str, list[dict[str, float]]] = {}
    if mode == "jct" and not any(p.duration_s for p in pods):
        raise PlanProblem(
            f"the {pods_name} pod list has no run times, so it cannot be replayed for "
            "completion times: choose another, or the allocation protocol"
        )
    for name in policies:
        config = load_policy(name)
        if mode == "allocation":
            r = run_openb(nodes, pods, build(config, PluginContext(workload=pods)), name, seed)
            out["runs"].append(
                {
                    "policy": name,
                    "allocation_100": r.allocation_ratio["100"],
                    "allocation_130": r.allocation_ratio["130"],
                    "failed_pods": r.failed_pods,
                    "fragmentation": r.fragmentation,
                    "wall_s": r.wall_s,
                }
            )
            series[name] = [{"x": a, "y": b} for a, b in thin(r.curve)]
        else:
            res, _ = replay_policy(nodes, pods, config, seed)
            summary = res.summary()
            jct = sorted(res.jct_s)
            out["runs"].append(
                {"policy": name, **summary["jct_s"], "makespan_s": summary["makespan_s"]}
            )
            cdf = [(max(j, 1.0), (i + 1) / len(jct)) for i, j in enumerate(jct)]
            series[name] = [{"x": a, "y": b} for a, b in thin(cdf)]
    out["chart"] = (
        {
            "kind": "lines",
            "title": "GPU allocation vs load (openb protocol)",
            "x_title": "requested GPUs, % of the cluster",
            "y_title": "allocated GPUs, %",
            "series": series,
        }
        if mode == "allocation"
        else {
            "kind": "lines",
            "x_log": True,
            "title": "job completion time, CDF",
            "x_title": "completion time (s, log scale)",
            "y_title": "share of pods",
            "series": series,
        }
    )
    return out


@functools.lru_cache(maxsize=4)
def traces(nodes_csv: Path, pods_csv: Path) -> tuple[list[Any], list[Any]]:
    """The openb files, read once per process (the simulation copies what it changes)."""
    from suanli.sim.traces import read_openb_nodes, read_openb_pods

    return read_openb_nodes(nodes_csv), read_openb_pods(pods_csv)


def thin(curve: list[tuple[float, float]], points: int = 400) -> list[tuple[float, float]]:
    step = max(1, len(curve) // points)
    return curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])


#: the planner form's numbers: default, lowest, highest, whole, may be blank
NUMBERS: dict[str, tuple[str, float, float, bool, bool]] = {
    "tokens": ("1e11", 1.0, 1e16, False, False),
    "max_devices": ("64", 1, 16_384, True, False),
    "rate": ("10", 1e-6, 1e6, False, False),
    "input_len": ("1024", 1, 1e6, True, False),
    "output_len": ("256", 1, 1e6, True, False),
    "ttft_slo_s": ("", 1e-3, 3600, False, True),
    "tpot_slo_s": ("", 1e-4, 60, False, True),
    "uplink_mbps": ("20", 1e-3, 1e6, False, False),
    "rtt_ms": ("20", 0, 1e5, False, False),
}


def number(name: str, text: str, problems: list[str]) -> float | None:
    """A form field as a number in its range, or a problem that says what to give."""
    _, lo, hi, whole, blank = NUMBERS[name]
    text = text.strip()
    if not text and blank:
        return None
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not lo <= v <= hi or (whole and not v.is_integer()):
        kind = "a whole number" if whole else "a number"
        problems.append(f"{name}: {text!r}; give {kind} from {lo:g} to {hi:g}")
        return None
    return v


def chips_of(text: str) -> list[str]:
    return [c.strip().lower() for c in text.replace(" ", ",").split(",") if c.strip()]


class Busy(Exception):
    """Every planner worker is taken: said as a 429 page with Retry-After."""


async def in_worker(limiter: anyio.CapacityLimiter, fn: Any, *args: Any) -> Any:
    if limiter.available_tokens < 1:
        raise Busy()
    return await to_thread.run_sync(fn, *args, limiter=limiter)


def add_planner(app: FastAPI, who_dep: Any) -> None:
    limiter = anyio.CapacityLimiter(WORKERS)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> HTMLResponse:
        out = page(
            request,
            "error.html",
            429,
            who=None,
            title="Busy",
            problems=[f"{WORKERS} plans or simulations are running; try again in a few seconds"],
        )
        out.headers["Retry-After"] = "5"
        return out

    @app.get("/ui/plan", include_in_schema=False)
    async def plan(
        request: Request,
        who: who_dep,
        kind: Annotated[str, Query(pattern="^(train|serve|split)$")] = "train",
        model: Annotated[str, Query(max_length=127)] = "llama-3.1-8b",
        chips: Annotated[str, Query(max_length=512)] = "h100-sxm, a100-80gb",
        objective: Annotated[str, Query(pattern="^(" + "|".join(OBJECTIVES) + ")$")] = "time",
        edge: Annotated[str, Query(max_length=127)] = "jetson-agx-orin-64gb",
        cloud: Annotated[str, Query(max_length=127)] = "a100-80gb",
        run: bool = False,
    ) -> HTMLResponse:
        """The numbers come as text and are read here, so that a typo is said on the form
        beside the others rather than as a bare 422."""
        q = request.query_params
        form = {
            "model": model,
            "chips": chips,
            "objective": objective,
            "edge": edge,
            "cloud": cloud,
            **{k: q.get(k, default) for k, (default, *_) in NUMBERS.items()},
        }
        result: dict[str, Any] | None = None
        problems: list[str] = []
        values = {k: number(k, str(form[k]), problems) for k in NUMBERS} if run else {}
        if run and not problems:
            try:
                if kind == "train":
                    result = await in_worker(
                        limiter,
                        train_plan,
                        model,
                        values["tokens"] or 0,
                        chips_of(chips),
                        int(values["max_devices"] or 1),
                        objective,
                    )
                elif kind == "split":
                    result = await in_worker(
                        limiter,
                        split_plan,
                        model,
                        edge,
                        cloud,
                        values["uplink_mbps"] or 1,
                        values["rtt_ms"] or 0.0,
                        int(values["input_len"] or 1),
                        int(values["output_len"] or 1),
                    )
                else:
                    result = await in_worker(
                        limiter,
                        serve_plan,
                        model,
                        values["rate"] or 0,
                        int(values["input_len"] or 1),
                        int(values["output_len"] or 1),
                        chips_of(chips),
                        values["ttft_slo_s"],
                        values["tpot_slo_s"],
                    )
            except (SuanliError, KeyError, ValueError) as exc:
                problems = [str(exc).strip("'\"")]
        return page(
            request,
            "plan.html",
            400 if problems else 200,
            who=who,
            title="Planner",
            kind=kind,
            form=form,
            objectives=OBJECTIVES,
            result=result,
            problems=problems,
        )

    @app.get("/ui/simulate", include_in_schema=False)
    async def simulator(
        request: Request,
        who: who_dep,
        pods: Annotated[str, Query(pattern="^(" + "|".join(POD_LISTS) + ")$")] = "default",
        policy: Annotated[list[str] | None, Query(max_length=len(SIM_POLICIES))] = None,
        seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 42,
        mode: Annotated[str, Query(pattern="^(allocation|jct)$")] = "allocation",
        run: bool = False,
    ) -> HTMLResponse:
        chosen = [p for p in (policy or ["fgd", "best-fit"]) if p in SIM_POLICIES]
        result, problems = None, []
        if run:
            if not chosen:
                problems = [f"policy: choose one or more of {', '.join(SIM_POLICIES)}"]
            else:
                try:
                    result = await in_worker(limiter, simulate, pods, chosen, seed, mode)
                except SuanliError as exc:
                    problems = [str(exc)]
        return page(
            request,
            "simulate.html",
            400 if problems else 200,
            who=who,
            title="Simulator",
            pods=pods,
            pod_lists=POD_LISTS,
            policies=SIM_POLICIES,
            chosen=chosen,
            seed=seed,
            mode=mode,
            result=result,
            problems=problems,
        )
