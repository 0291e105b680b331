"""The planner and simulator pages: forms over ``suanli.plan`` and ``suanli.sim``.

Plans are reads (nothing is stored), so the forms are GETs: a plan's address can be
bookmarked and shared. The work runs in a thread, off the event loop that serves
everyone else's pages and the API.
"""

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from suanli.catalog import get_model
from suanli.errors import SuanliError
from suanli.plan.pool import pool_from_accelerators
from suanli.plan.serve import ServeRequest, plan_serve
from suanli.plan.train import OBJECTIVES, TrainRequest, plan_train
from suanli.web import views
from suanli.web.render import page

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


class PlanProblem(SuanliError):
    """The planner found nothing: said on the page, not as an error status."""


def simulate(pods_name: str, policies: list[str], seed: int) -> dict[str, Any]:
    from suanli.sched.policies import PluginContext, build, load_policy
    from suanli.sim.openb import run_openb
    from suanli.sim.traces import read_openb_nodes, read_openb_pods

    data = shared_data()
    nodes_csv, pods_csv = (
        data / "openb_node_list_gpu_node.csv",
        data / f"openb_pod_list_{pods_name}.csv",
    )
    if not nodes_csv.exists() or not pods_csv.exists():
        raise PlanProblem(
            f"the openb traces are not here ({data}): the simulator page replays them from "
            "../shared/data beside the project (or SUANLI_SHARED_DATA)"
        )
    nodes, pods = read_openb_nodes(nodes_csv), read_openb_pods(pods_csv)
    runs = []
    for name in policies:
        config = load_policy(name)
        runs.append(run_openb(nodes, pods, build(config, PluginContext(workload=pods)), name, seed))
    return {
        "nodes": len(nodes),
        "pods": len(pods),
        "runs": [
            {
                "policy": r.policy,
                "allocation_100": r.allocation_ratio["100"],
                "allocation_130": r.allocation_ratio["130"],
                "failed_pods": r.failed_pods,
                "fragmentation": r.fragmentation,
                "wall_s": r.wall_s,
            }
            for r in runs
        ],
        "chart": {
            "kind": "lines",
            "title": "GPU allocation vs load (openb protocol)",
            "x_title": "requested GPUs, % of the cluster",
            "y_title": "allocated GPUs, %",
            "series": {r.policy: [{"x": a, "y": b} for a, b in thin(r.curve)] for r in runs},
        },
    }


def thin(curve: list[tuple[float, float]], points: int = 400) -> list[tuple[float, float]]:
    step = max(1, len(curve) // points)
    return curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])


#: the planner form's numbers: default, lowest, highest, whole, may be blank
NUMBERS: dict[str, tuple[str, float, float, bool, bool]] = {
    "tokens": ("1e11", 1.0, 1e16, False, False),
    "max_devices": ("64", 1, MAX_DEVICES, True, False),
    "rate": ("10", 1e-6, 1e6, False, False),
    "input_len": ("1024", 1, 1e6, True, False),
    "output_len": ("256", 1, 1e6, True, False),
    "ttft_slo_s": ("", 1e-3, 3600, False, True),
    "tpot_slo_s": ("", 1e-4, 60, False, True),
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


def add_planner(app: FastAPI, who_dep: Any) -> None:
    @app.get("/ui/plan", include_in_schema=False)
    async def plan(
        request: Request,
        who: who_dep,
        kind: Annotated[str, Query(pattern="^(train|serve)$")] = "train",
        model: Annotated[str, Query(max_length=127)] = "llama-3.1-8b",
        chips: Annotated[str, Query(max_length=512)] = "h100-sxm, a100-80gb",
        objective: Annotated[str, Query(pattern="^(" + "|".join(OBJECTIVES) + ")$")] = "time",
        run: bool = False,
    ) -> HTMLResponse:
        """The numbers come as text and are read here, so that a typo is said on the form
        beside the others rather than as a bare 422."""
        q = request.query_params
        form = {
            "model": model,
            "chips": chips,
            "objective": objective,
            **{k: q.get(k, default) for k, (default, *_) in NUMBERS.items()},
        }
        result: dict[str, Any] | None = None
        problems: list[str] = []
        values = {k: number(k, str(form[k]), problems) for k in NUMBERS} if run else {}
        if run and not problems:
            try:
                if kind == "train":
                    result = await run_in_threadpool(
                        train_plan,
                        model,
                        values["tokens"] or 0,
                        chips_of(chips),
                        int(values["max_devices"] or 1),
                        objective,
                    )
                else:
                    result = await run_in_threadpool(
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
        run: bool = False,
    ) -> HTMLResponse:
        chosen = [p for p in (policy or ["fgd", "best-fit"]) if p in SIM_POLICIES]
        result, problems = None, []
        if run:
            if not chosen:
                problems = [f"policy: choose one or more of {', '.join(SIM_POLICIES)}"]
            else:
                try:
                    result = await run_in_threadpool(simulate, pods, chosen, seed)
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
            result=result,
            problems=problems,
        )
