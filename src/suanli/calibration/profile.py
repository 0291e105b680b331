"""Measured device profiles: saved by ``suanli calibrate --save``, read as ``NAME@measured``.

A profile becomes an accelerator record the perf model uses in place of the
data sheet: its "peaks" are the measured rates divided by the fraction of peak
the perf model assumes software reaches (``gemm_eff_max``, ``mem_bw_eff``,
``link_eff``), so that the model's achieved rate *is* the measured one and
nothing else in the model changes. Everything the benchmarks did not measure
(power, price, NIC) comes from the catalog record of the same chip, if there
is one, else is left unknown (zero power: no energy figure).

Profiles live in ``<data-dir>/profiles/<name>.json``; a CPU's name carries the
thread count it was measured with (``amd-epyc-2t``), because a CPU "device" is
as fast as the cores it is given.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path
from typing import Any

import psutil

from suanli.calibration.overheads import PROBE_ATTENTION_PAIRS
from suanli.catalog.types import Accelerator
from suanli.errors import SuanliError
from suanli.paths import default_data_dir
from suanli.perf.efficiency import Efficiency, default_efficiency

SUFFIX = "@measured"


class ProfileError(SuanliError):
    """A profile file that is missing or unreadable."""


def profiles_dir(data_dir: Path | None = None) -> Path:
    return (data_dir or default_data_dir()) / "profiles"


def profile_name(profile: dict[str, Any]) -> str:
    """The catalog chip for a GPU if the name matches one, else a slug of the device name."""
    from suanli.catalog.loader import accelerators
    from suanli.run.devices import catalog_name

    name = str(profile["device_name"])
    if str(profile["device"]).startswith("cuda"):
        match = catalog_name(name, "nvidia")
        if match in accelerators():
            return match
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"
    if profile["device"] != "cpu":
        return slug
    # one of N processes sharing the CPU is another device than the CPU alone
    shared = f"-{profile['processes']}p" if int(profile.get("processes") or 1) > 1 else ""
    return f"{slug}-{profile['threads']}t{shared}"


def save(profile: dict[str, Any], data_dir: Path | None = None) -> Path:
    """Write the profile atomically; returns its path."""
    d = profiles_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{profile_name(profile)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    tmp.replace(path)
    return path


def load(name: str, data_dir: Path | None = None) -> dict[str, Any]:
    d = profiles_dir(data_dir)
    key = name.removesuffix(SUFFIX)
    path = d / f"{key}.json"
    if not path.exists():
        saved = sorted(p.stem + SUFFIX for p in d.glob("*.json")) if d.exists() else []
        have = ", ".join(saved) if saved else "none"
        raise ProfileError(
            f"no measured profile {name!r} in {d} (saved: {have}); run suanli calibrate --save"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProfileError(
            f"{path}: unreadable profile ({exc}); run suanli calibrate --save"
        ) from exc
    return data


def best_gemm_tflops(profile: dict[str, Any]) -> dict[str, float]:
    return {dt: max(by_size.values()) for dt, by_size in profile["gemm_tflops"].items() if by_size}


def median_profile(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """One profile out of several calibrations of the same device: each measured figure
    the median of its values, anything else (names, dtypes, versions) the first's; a
    figure some calibrations lack (a probe a budget skipped) from those that have it.
    On a shared host a calibration can meet a slow spell: on a 2-core EPYC two quick
    calibrations differed by 15% in a DDP rank's GEMM rate and 26% in the elementwise
    rate (`benchmarks/closing_loop.py` calibrates once a pass and keeps the median)."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in profiles for k in p):
        values = [p[key] for p in profiles if key in p]
        value = values[0]
        if isinstance(value, dict) and all(isinstance(v, dict) for v in values):
            out[key] = median_profile(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)
        else:
            out[key] = value
    return out


def measured_accelerator(
    profile: dict[str, Any], base: Accelerator | None = None, eff: Efficiency | None = None
) -> Accelerator:
    """An accelerator record whose achievable rates are the measured ones (module docstring)."""
    e = eff or default_efficiency()
    name = profile_name(profile) + SUFFIX
    processes = int(profile.get("processes") or 1)
    when = (
        f"suanli calibrate on {profile.get('measured_on', '?')} "
        f"(torch {profile.get('torch_version', '?')}, {profile.get('threads', '?')} threads"
        + (f", one of {processes} processes sharing the CPU" if processes > 1 else "")
        + ")"
    )
    peaks = {dt: tf / e.gemm_eff_max for dt, tf in best_gemm_tflops(profile).items()}
    bus = max(profile.get("allreduce_gbs", {}).values(), default=0.0)
    is_cpu = profile["device"] == "cpu"
    compute = str(profile.get("compute_dtype") or "bf16")  # profiles before it: bf16
    gemv16 = (profile.get("gemv_gbs") or {}).get(compute)  # serve_lm's weights: compute dtype
    memory_gb = psutil.virtual_memory().total / 1e9 if is_cpu else (base.memory_gb if base else 0.0)
    acc = Accelerator(
        name=name,
        display_name=f"{profile['device_name']} (measured)",
        vendor=base.vendor if base else ("cpu" if is_cpu else "unknown"),
        kind="cpu" if is_cpu else (base.kind if base else "gpu"),
        peak_tflops=peaks,
        # the peaks above are the best GEMM measured here: the whole of each is reachable
        matmul_fraction={dt: 1.0 for dt in peaks},
        memory_gb=memory_gb,
        memory_bandwidth_gbs=profile["memory_bandwidth_gbs"] / e.mem_bw_eff,
        memory_type=base.memory_type if base else ("DRAM" if is_cpu else "?"),
        intra_node_link=base.intra_node_link if base and bus == 0 else "measured all-reduce",
        intra_node_link_gbs=2 * bus / e.link_eff
        if bus
        else (base.intra_node_link_gbs if base else 1.0),
        devices_per_node=base.devices_per_node if base else 2,
        # no NIC is measured: across nodes, the local all-reduce rate stands in (Gb/s)
        nic_gbps=base.nic_gbps if base else max(8 * bus, 1.0),
        tdp_w=base.tdp_w if base else 0.0,
        visible_devices_env=base.visible_devices_env if base else "",
        k8s_resource=base.k8s_resource if base else "cpu",
        sources={
            "peak_tflops": f"best measured GEMM / gemm_eff_max, {when}",
            "matmul_fraction": f"1: the peaks are the best GEMM measured, {when}",
            "memory_bandwidth_gbs": f"measured copy bandwidth / mem_bw_eff, {when}",
            "intra_node_link_gbs": f"2 x measured all-reduce bus bandwidth / link_eff, {when}",
            "gemv_bandwidth_gbs": f"measured 8-token bf16 GEMM weight rate / mem_bw_eff, {when}",
            "loss_logits_per_s": f"measured fp32 cross-entropy, forward + backward, {when}",
            "gemv_bandwidth_by_k": f"measured decode GEMMs, distinct matrices / mem_bw_eff, {when}",
            "layer_overhead_us": f"measured serve_lm decode, 6- minus 2-layer probe / 4, {when}",
            "step_overhead_us": f"measured serve_lm decode, 2-layer probe minus its layers, {when}",
            "weight_overhead_us": f"the same two probes with serve_lm's int8 weights, {when}",
            "decode_attention_gbs": f"measured serve_lm decode attention, K/V read, {when}",
            "decode_attention_row_us": f"measured serve_lm decode attention, 4 less 1 seqs, {when}",
            "attention_train_tflops": f"measured fused SDPA, {compute} fwd + bwd, {when}",
            "gemm_tflops_by_size": f"measured training-layer GEMMs by size, {when}",
            "lm_head_tflops": f"measured vocabulary-wide projection, {compute} fwd + bwd, {when}",
            "train_elementwise_gbs": f"measured train_lm layer, non-GEMM operators, {when}",
            **({k: f"catalog {base.name}: {v}" for k, v in base.sources.items()} if base else {}),
        },
        price_usd_per_hour=base.price_usd_per_hour if base else None,
        gemv_bandwidth_gbs=(gemv16 / e.mem_bw_eff if gemv16 else None),
        idle_w=base.idle_w if base else None,
        loss_logits_per_s=profile.get("loss_logits_per_s") or None,
        **_decode_figures(profile, e),
        gemm_tflops_by_size={
            dt: {int(size): tf for size, tf in by_size.items()}
            for dt, by_size in profile["gemm_tflops"].items()
            if by_size
        }
        or None,
        train_elementwise_gbs=profile.get("train_elementwise_gbs") or None,
        lm_head_tflops={int(h): tf for h, tf in (profile.get("lm_head_tflops") or {}).items()}
        or None,
        attention_train_tflops={
            int(seq): r["train_tflops"]
            for seq, r in (profile.get("attention") or {}).get("by_seq", {}).items()
            if r.get("train_tflops")
        }
        or None,
        compute_dtype=compute,
        emulated_dtypes=tuple(profile.get("emulated_dtypes") or ()),
        notes="a measured profile, not a data sheet"
        + (
            f"; {', '.join(profile['emulated_dtypes'])} emulated here "
            f"({profile.get('precision_why', '')}): training and decode measured in {compute}"
            if profile.get("emulated_dtypes")
            else ""
        ),
    )
    return _engine_variants(acc, profile, e)


def _decode_figures(figures: dict[str, Any], e: Efficiency) -> dict[str, Any]:
    """The decode fields of an accelerator record from a profile's (or an engine's)
    measured figures: weight rates by K (divided by ``mem_bw_eff``, which perf
    multiplies back), K/V rate, and the fixed costs (with int8 weights too, where
    measured), a measured 0 µs kept as 0."""
    row_us = float(figures.get("decode_attention_row_us") or 0.0)
    # the fixed-cost probe's attention pairs are charged by perf with the model's own: the
    # per-layer fixed cost is what is left of the probe's layer without them
    pairs_us = PROBE_ATTENTION_PAIRS * row_us

    def less_pairs(costs: dict[str, float] | None) -> dict[str, float]:
        costs = dict(costs or {})
        if "layer" in costs and pairs_us:
            costs["layer"] = round(max(0.0, costs["layer"] - pairs_us), 1)
        return costs

    fixed = less_pairs(figures.get("fixed_us"))
    by_weight = {dt: less_pairs(c) for dt, c in (figures.get("fixed_us_by_weight") or {}).items()}
    by_k = {
        dt: {int(k): v / e.mem_bw_eff for k, v in rates.items()}
        for dt, rates in (figures.get("gemv_gbs_by_k") or {}).items()
    }
    return {
        "gemv_bandwidth_by_k": by_k or None,
        "decode_attention_gbs": figures.get("decode_attention_gbs") or None,
        "decode_attention_row_us": row_us or None,
        "layer_overhead_us": fixed.get("layer"),
        "step_overhead_us": fixed.get("step"),
        "weight_overhead_us": by_weight or None,
    }


def _engine_variants(acc: Accelerator, profile: dict[str, Any], e: Efficiency) -> Accelerator:
    """``acc`` with a variant per engine measured through `suanli calibrate --engine`: the
    decode figures replaced by the engine's (fp32 and int8 weights; it computes in fp32)."""
    figures = profile.get("engines") or {}
    if not figures:
        return acc
    variants = {}
    for engine, fig in figures.items():
        when = f"suanli calibrate --engine {engine} ({engine} {fig.get('version', '?')})"
        variants[engine] = dataclasses.replace(
            acc,
            name=f"{acc.name}+{engine}",
            display_name=f"{acc.display_name} through {engine}",
            gemv_bandwidth_gbs=None,
            compute_dtype="fp32",
            **_decode_figures(fig, e),
            sources={
                **acc.sources,
                "gemv_bandwidth_by_k": f"measured decode GEMMs through {engine}, {when}",
                "decode_attention_gbs": f"measured gather + attention through {engine}, {when}",
                "decode_attention_row_us": f"the same, 4 less 1 sequences, {when}",
                "layer_overhead_us": f"serve_lm decode through {engine}, 6- minus 2-layer, {when}",
                "step_overhead_us": f"serve_lm decode through {engine}, 2-layer probe, {when}",
                "weight_overhead_us": f"the same through {engine}, int8 weights, {when}",
            },
            engine_variants=None,
            measured_engine=engine,
        )
    return dataclasses.replace(acc, engine_variants=variants)


def get_measured(name: str, data_dir: Path | None = None) -> Accelerator:
    """``NAME@measured``: the saved profile of NAME as an accelerator record."""
    from suanli.catalog.loader import accelerators

    profile = load(name, data_dir)
    base = accelerators().get(profile_name(profile))
    return measured_accelerator(profile, base)


def resolve_accelerator(name: str, data_dir: Path | None = None) -> Accelerator:
    """A catalog chip by name, or a saved profile as ``NAME@measured``: what the command
    line, pool files and simulator specs accept wherever they name a chip."""
    from suanli.catalog.loader import get_accelerator

    if name.strip().lower().endswith(SUFFIX):
        return get_measured(name.strip().lower(), data_dir)
    return get_accelerator(name)
