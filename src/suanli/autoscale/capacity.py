"""How many requests per second one replica serves within a TPOT SLO, by request size.

The steady state of a continuously batched replica serving requests of ``I`` prompt
and ``O`` output tokens with ``B`` of them in flight: every step decodes ``B`` tokens
and, on average, prefills ``B / O`` prompts (each request is prefilled once per ``O``
steps), so a step lasts ``decode(B, B (I + O/2)) + B / O × prefill(I)`` on average,
and the replica serves ``B / (O × step)`` requests/s. A client's TPOT is the steps
after its first token: they carry the other ``B - 1`` requests' prefills, not its own
(that one is in its TTFT), so TPOT is ``decode + (B - 1) / O × prefill(I)``. The
largest ``B`` whose TPOT meets the SLO and whose caches fit gives the throughput.
This is how Mélange profiles a GPU per request size (Griggs et al. 2024, Sec. 5.2:
the highest load meeting the TPOT SLO), here from perf's roofline instead of a
profiling run.
"""

from __future__ import annotations

from suanli.perf.batching import MAX_SEQS, StepTime


def prefill_s(steps: StepTime, input_len: float) -> float:
    return steps.step_s(0, 0.0, max(1, round(input_len)))


def step_s(steps: StepTime, batch: int, input_len: float, output_len: float) -> float:
    """A step's mean length with ``batch`` requests in flight: the decode, and the
    prefills that fall to it on average."""
    return steps.decode_s(batch, batch * (input_len + output_len / 2)) + (
        batch / max(output_len, 1.0)
    ) * prefill_s(steps, input_len)


def tpot_s(steps: StepTime, batch: int, input_len: float, output_len: float) -> float:
    """The time between a client's tokens with ``batch`` requests in flight: the decode
    and the other requests' prefills."""
    return steps.decode_s(batch, batch * (input_len + output_len / 2)) + (
        (batch - 1) / max(output_len, 1.0)
    ) * prefill_s(steps, input_len)


def slo_batch(
    steps: StepTime,
    input_len: float,
    output_len: float,
    tpot_slo_s: float,
    ttft_slo_s: float | None = None,
) -> int:
    """The most requests of this size one replica keeps in flight within the TPOT SLO
    (and fitting its cache); 0 when even one misses it or does not fit. With
    ``ttft_slo_s``, a prompt whose prefill alone takes more than half of it (the rest is
    for queueing) also rules the size out."""
    kv = steps.kv_capacity_tokens()
    most = min(MAX_SEQS, int(kv // max(1.0, input_len + output_len)))
    if most < 1 or tpot_s(steps, 1, input_len, output_len) > tpot_slo_s:
        return 0
    if ttft_slo_s is not None and prefill_s(steps, input_len) > ttft_slo_s / 2:
        return 0
    lo, hi = 1, most
    while lo < hi:  # tpot grows with the batch: the largest batch meeting the SLO
        mid = (lo + hi + 1) // 2
        if tpot_s(steps, mid, input_len, output_len) <= tpot_slo_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def capacity_rps(
    steps: StepTime,
    input_len: float,
    output_len: float,
    tpot_slo_s: float,
    ttft_slo_s: float | None = None,
) -> float:
    """Requests/s one replica sustains at the SLO: its `slo_batch`'s throughput; 0
    when no batch meets the SLO."""
    b = slo_batch(steps, input_len, output_len, tpot_slo_s, ttft_slo_s)
    return b / (output_len * step_s(steps, b, input_len, output_len)) if b else 0.0


def best_effort_rps(steps: StepTime, input_len: float, output_len: float) -> float:
    """Requests/s one at a time, SLO or not (a size no replica serves within the SLO is
    still served, and misses it); 0 when it does not fit at all."""
    if input_len + output_len > steps.kv_capacity_tokens():
        return 0.0
    return 1.0 / (output_len * step_s(steps, 1, input_len, output_len))


def mix_capacity_rps(
    steps: StepTime, sizes: list[tuple[float, float, float]], tpot_slo_s: float
) -> float:
    """Requests/s for a mix of ``(input, output, share)``: a replica serving each size in
    its share saturates when the shares' busy times add to one second. A size that
    misses the SLO even alone counts at its one-at-a-time rate; one that does not fit
    makes the replica unusable for the mix (0)."""
    busy = 0.0
    for i, o, share in sizes:
        cap = capacity_rps(steps, i, o, tpot_slo_s) or best_effort_rps(steps, i, o)
        if cap <= 0:
            return 0.0
        busy += share / cap
    return 1.0 / busy if busy else 0.0


def concurrency_at(steps: StepTime, input_len: float, output_len: float, rps: float) -> float:
    """Requests in flight on one replica serving ``rps`` of this size: the smallest batch
    whose throughput ``B / (O × TPOT(B))`` reaches it. A concurrency target for the HPA
    and KPA that means a load, where the SLO's batch would mean the edge of the SLO."""
    if rps <= 0:
        return 0.0
    for b in range(1, MAX_SEQS + 1):
        if b / (output_len * step_s(steps, b, input_len, output_len)) >= rps:
            return float(b)
    return float(MAX_SEQS)
