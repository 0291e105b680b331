"""Edge/cloud split: which layers run on the device, which in the cloud.

As Neurosurgeon (Kang et al., ASPLOS'17) does for DNNs, every layer boundary is
a candidate, including all-edge and all-cloud. For an LLM the split is paid
once for the prompt and again for every generated token: the edge runs its
layers, ships one hidden-state vector per token (fp16, or int8-quantized) up
the link, the cloud runs the rest and the LM head, and the sampled token
comes back — a round trip per token. All-cloud ships only the prompt's token
ids and streams tokens back, so it pays the round trip once.

Edge energy counts the edge's compute at its TDP, the radio while sending
(``radio_w``), and idle draw while it waits for the cloud.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from suanli.catalog.types import ModelArch
from suanli.perf.efficiency import Efficiency, default_efficiency
from suanli.perf.engines import MEASURED_KV_DTYPE, MEASURED_WEIGHT_DTYPES, through
from suanli.perf.serve import decode_parts, prefill_parts, weight_bytes_per_device
from suanli.perf.shape import shape_of
from suanli.perf.system import System
from suanli.plan.common import PlanResult
from suanli.units import BYTES_PER_ELEMENT, GB

TOKEN_ID_BYTES = 4
#: Uplink bandwidths (Mb/s) for the "how does the best split move" table: from a
#: weak cellular link to a wired gigabit one.
BANDWIDTH_TABLE_MBPS = (0.1, 1.0, 5.0, 20.0, 100.0, 1000.0)


@dataclass(frozen=True)
class SplitRequest:
    model: ModelArch
    edge: System
    cloud: System
    uplink_mbps: float
    rtt_ms: float = 20.0
    input_len: int = 128
    output_len: int = 64
    edge_weight_dtype: str = "int4"
    cloud_weight_dtype: str = "bf16"
    radio_w: float = 1.0  # a Wi-Fi/LTE radio while transmitting (order of 1 W)


def _side_times(req: SplitRequest, frac: float, where: str, e: Efficiency) -> tuple[float, float]:
    """(prefill s, decode s per token) for a share ``frac`` of the layers on one side."""
    if frac <= 0 and where == "edge":
        return 0.0, 0.0
    system = req.edge if where == "edge" else req.cloud
    wd = req.edge_weight_dtype if where == "edge" else req.cloud_weight_dtype
    kv = "int8" if wd in ("int8", "int4") else wd
    if system.accelerator.measured_engine:  # as the engine was measured: serve_lm's export
        kv = MEASURED_KV_DTYPE
    head = where == "cloud" or frac >= 1.0
    pre = prefill_parts(
        req.model,
        system,
        tp=1,
        batch=1,
        input_len=req.input_len,
        weight_dtype=wd,
        eff=e,
        layer_frac=frac,
        with_head=head,
    )
    dec = decode_parts(
        req.model,
        system,
        tp=1,
        batch=1,
        context=req.input_len + req.output_len / 2,
        weight_dtype=wd,
        kv_dtype=kv,
        eff=e,
        layer_frac=frac,
        with_head=head,
    )
    return sum(pre.values()), sum(dec.values())


def evaluate_split(
    req: SplitRequest, k: int, act_dtype: str, uplink_mbps: float, e: Efficiency
) -> dict[str, Any]:
    """Latency, edge energy and bytes sent when the edge runs layers 1..k."""
    model = req.model
    layers = model.layers
    bps = uplink_mbps * 1e6 / 8
    rtt = req.rtt_ms / 1e3
    f_edge = k / layers
    e_pre, e_dec = _side_times(req, f_edge, "edge", e)
    c_pre, c_dec = _side_times(req, 1 - f_edge, "cloud", e) if k < layers else (0.0, 0.0)
    n_out = req.output_len
    if k == 0:  # all cloud: prompt ids up once, tokens stream back
        sent = float(req.input_len * TOKEN_ID_BYTES)
        up = sent / bps
        ttft = up + rtt + c_pre
        latency = ttft + (n_out - 1) * c_dec
        edge_compute = 0.0
    elif k == layers:  # all edge
        sent = 0.0
        up = 0.0
        ttft = e_pre + e_dec
        latency = e_pre + n_out * e_dec
        edge_compute = latency
    else:
        per_token = model.hidden * BYTES_PER_ELEMENT[act_dtype]
        sent = (req.input_len + n_out - 1) * per_token
        up_prompt = req.input_len * per_token / bps
        up_token = per_token / bps
        ttft = e_pre + up_prompt + rtt + c_pre
        latency = ttft + (n_out - 1) * (e_dec + up_token + rtt + c_dec)
        up = up_prompt + (n_out - 1) * up_token
        edge_compute = e_pre + (n_out - 1) * e_dec
    acc = req.edge.accelerator
    idle = acc.idle_w if acc.idle_w is not None else 0.3 * acc.tdp_w
    wait = max(0.0, latency - edge_compute - up)
    energy = acc.tdp_w * edge_compute + req.radio_w * up + idle * wait
    return {
        "split_after_layer": k,
        "edge_layers": k,
        "cloud_layers": layers - k,
        "activation_dtype": act_dtype if 0 < k < layers else None,
        "latency_s": latency,
        "ttft_s": ttft,
        "edge_energy_j": energy,
        "transfer_bytes": sent,
        "uplink_s": up,
    }


def edge_engines(req: SplitRequest) -> list[tuple[str | None, SplitRequest]]:
    """The edge as asked, and as it runs through each engine it was measured through
    (`suanli calibrate --engine`): the split then chooses the engine too. Those engines
    serve an fp32 export or int8 weights; a request for other weights takes int8."""
    out: list[tuple[str | None, SplitRequest]] = [(None, req)]
    wd = req.edge_weight_dtype if req.edge_weight_dtype in MEASURED_WEIGHT_DTYPES else "int8"
    for name in req.edge.accelerator.engine_variants or {}:
        edge = through(req.edge, name)
        assert edge is not None
        out.append((name, dataclasses.replace(req, edge=edge, edge_weight_dtype=wd)))
    return out


def plan_split(req: SplitRequest, eff: Efficiency | None = None) -> PlanResult:
    """Every split point, ranked by latency, with the energy-optimal one marked."""
    t0 = time.perf_counter()
    e = eff if eff is not None else default_efficiency()
    model = req.model
    s = shape_of(model)
    rejected: Counter[str] = Counter()
    edge_mem = req.edge.accelerator.memory_gb * GB - e.workspace_gb * GB * 0.25
    options: list[dict[str, Any]] = []
    for engine, sub in edge_engines(req):
        full_edge = weight_bytes_per_device(s, 1, sub.edge_weight_dtype)
        for k in range(model.layers + 1):
            if engine is not None and k == 0:
                continue  # all-cloud runs nothing on the edge: once is enough
            need = full_edge * k / model.layers
            if need > edge_mem:
                rejected["edge memory: its layers' weights do not fit"] += 1
                continue
            for act in ("fp16", "int8") if 0 < k < model.layers else ("fp16",):
                opt = evaluate_split(sub, k, act, req.uplink_mbps, e)
                opt["edge_engine"] = engine
                opt["edge_weight_dtype"] = sub.edge_weight_dtype if k else None
                options.append(opt)
    result = PlanResult(options=[], rejected=rejected, candidates_evaluated=len(options))
    if not options:
        result.infeasible = "no split point fits: the edge cannot hold even one layer"
        result.wall_s = time.perf_counter() - t0
        return result
    by_latency = sorted(options, key=lambda o: o["latency_s"])
    best_energy = min(options, key=lambda o: o["edge_energy_j"])
    result.options = by_latency
    result.notes.append(
        f"lowest latency: split after layer {by_latency[0]['split_after_layer']} "
        f"({by_latency[0]['latency_s']:.3f} s); lowest edge energy: split after layer "
        f"{best_energy['split_after_layer']} ({best_energy['edge_energy_j']:.2f} J)"
        + (
            f"; the edge through {by_latency[0]['edge_engine']} (measured here)"
            if by_latency[0]["edge_engine"]
            else ""
        )
    )
    result.wall_s = time.perf_counter() - t0
    return result


def bandwidth_table(
    req: SplitRequest, eff: Efficiency | None = None, mbps: tuple[float, ...] = BANDWIDTH_TABLE_MBPS
) -> list[dict[str, Any]]:
    """How the best split (for latency and for edge energy) moves with the uplink."""
    e = eff if eff is not None else default_efficiency()
    rows = []
    for bw in (*mbps, req.uplink_mbps):
        res = plan_split(_with_uplink(req, bw), e)
        if not res.options:
            continue
        lat = res.options[0]
        en = min(res.options, key=lambda o: o["edge_energy_j"])
        rows.append(
            {
                "uplink_mbps": bw,
                "best_split_for_latency": lat["split_after_layer"],
                "latency_s": lat["latency_s"],
                "best_split_for_edge_energy": en["split_after_layer"],
                "edge_energy_j": en["edge_energy_j"],
            }
        )
    rows.sort(key=lambda r: r["uplink_mbps"])
    return [
        r for i, r in enumerate(rows) if i == 0 or r["uplink_mbps"] != rows[i - 1]["uplink_mbps"]
    ]


def _with_uplink(req: SplitRequest, mbps: float) -> SplitRequest:
    from dataclasses import replace

    return replace(req, uplink_mbps=mbps)
