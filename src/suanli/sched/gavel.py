"""Whole-cluster policies as optimisation over an allocation matrix (Gavel, OSDI'20).

``X[j, k]`` is the share of time job ``j`` runs on accelerator type ``k``;
heterogeneity enters only through the throughput matrix ``T[j, k]`` (steps/s
of job ``j``, at its scale factor, on type ``k``). Every policy has the same
signature — ``policy(problem) -> X`` — and is a linear programme solved with
HiGHS (SciPy) under the same two constraints:

* a job runs at most all the time: ``sum_k X[j, k] <= 1``;
* a type is not over-committed: ``sum_j scale_j X[j, k] <= capacity_k``.

A job's effective throughput is ``sum_k T[j, k] X[j, k]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from suanli.errors import SuanliError


class PolicyError(SuanliError, ValueError):
    """An allocation problem that cannot be solved as posed."""


@dataclass(frozen=True)
class AllocationProblem:
    throughput: np.ndarray  # jobs x types, steps/s (0 = cannot run there)
    scale: np.ndarray  # devices each job needs
    capacity: np.ndarray  # devices per type
    weights: np.ndarray | None = None  # priority weights (default 1)
    remaining_steps: np.ndarray | None = None
    elapsed_s: np.ndarray | None = None  # since arrival (finish-time fairness)
    price_usd_per_hour: np.ndarray | None = None  # per device of each type

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.throughput.shape
        return int(rows), int(cols)


def equal_share(p: AllocationProblem) -> np.ndarray:
    """Every job an equal time share of every type it can use (the fairness yardstick)."""
    can = p.throughput > 0
    share = np.minimum(1.0, p.capacity / max(1.0, float(p.scale.sum())))
    x = can * share[None, :]
    rows = x.sum(axis=1, keepdims=True)
    return np.where(rows > 1, x / np.maximum(rows, 1e-12), x)


Bounds = list[tuple[float | None, float | None]]


def _base(p: AllocationProblem, extra: int) -> tuple[np.ndarray, np.ndarray, Bounds]:
    """Inequalities A x <= b shared by all policies; ``extra`` trailing free variables."""
    jobs, types = p.shape
    n = jobs * types + extra
    rows = []
    b = []
    for j in range(jobs):
        r = np.zeros(n)
        r[j * types : (j + 1) * types] = 1
        rows.append(r)
        b.append(1.0)
    for k in range(types):
        r = np.zeros(n)
        r[k : jobs * types : types] = p.scale
        rows.append(r)
        b.append(float(p.capacity[k]))
    bounds: Bounds = [(0.0, 1.0 if t > 0 else 0.0) for t in p.throughput.ravel()]
    bounds += [(None, None)] * extra
    return np.array(rows), np.array(b), bounds


def _solve(
    c: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    bounds: Bounds,
    a_eq: np.ndarray | None = None,
    b_eq: np.ndarray | None = None,
) -> np.ndarray:
    res = linprog(c, A_ub=a, b_ub=b, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:
        raise PolicyError(f"allocation LP failed: {res.message}")
    return np.asarray(res.x)


def _maxmin(p: AllocationProblem, t: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """maximise z s.t. (sum_k t[j,k] X[j,k]) / (w_j norm_j) >= z for every job."""
    jobs, types = p.shape
    if jobs == 0:
        return np.zeros(p.shape)
    w = p.weights if p.weights is not None else np.ones(jobs)
    a, b, bounds = _base(p, 1)
    rows = []
    for j in range(jobs):
        r = np.zeros(jobs * types + 1)
        r[j * types : (j + 1) * types] = -t[j] / (w[j] * max(norm[j], 1e-12))
        r[-1] = 1.0
        rows.append(r)
    c = np.zeros(jobs * types + 1)
    c[-1] = -1.0
    x = _solve(c, np.vstack([a, rows]), np.concatenate([b, np.zeros(jobs)]), bounds)
    return _polish(p, x[:-1].reshape(jobs, types), t)


def _polish(p: AllocationProblem, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Hand leftover capacity to whoever gains most (max-min leaves slack on the table)."""
    jobs, types = p.shape
    a, b, bounds = _base(p, 0)
    # keep every job at least at its max-min throughput, then maximise the total
    floor = (t * x).sum(axis=1) * (1 - 1e-6)
    rows = []
    for j in range(jobs):
        r = np.zeros(jobs * types)
        r[j * types : (j + 1) * types] = -t[j]
        rows.append(r)
    c = -(t / np.maximum(t.max(axis=1, keepdims=True), 1e-12)).ravel()
    try:
        y = _solve(c, np.vstack([a, rows]), np.concatenate([b, -floor]), bounds)
    except PolicyError:
        return x
    return y.reshape(jobs, types)


def max_min_fairness(p: AllocationProblem) -> np.ndarray:
    """Heterogeneity-aware max-min fairness (Gavel's LAS): normalised by the equal share."""
    norm = (p.throughput * equal_share(p)).sum(axis=1)
    return _maxmin(p, p.throughput, norm)


def max_min_agnostic(p: AllocationProblem) -> np.ndarray:
    """The same fairness objective blind to chip types: every type counts as equally fast.

    A type-blind scheduler cannot prefer one type for a job, so each job's time
    share is spread over the types it can use in proportion to their capacity
    (what random placement does on average).
    """
    ones = (p.throughput > 0).astype(float)
    norm = (ones * equal_share(p)).sum(axis=1)
    x = _maxmin(p, ones, norm)
    share = x.sum(axis=1, keepdims=True)
    spread = ones * p.capacity[None, :]
    spread /= np.maximum(spread.sum(axis=1, keepdims=True), 1e-12)
    return share * spread


def max_throughput(p: AllocationProblem) -> np.ndarray:
    """Maximise the sum of throughputs, each normalised by the job's best type."""
    jobs, types = p.shape
    a, b, bounds = _base(p, 0)
    c = -(p.throughput / np.maximum(p.throughput.max(axis=1, keepdims=True), 1e-12)).ravel()
    return _solve(c, a, b, bounds).reshape(jobs, types)


def min_makespan(p: AllocationProblem) -> np.ndarray:
    """Minimise the time until the last job ends: maximise z with thr_j >= remaining_j * z."""
    if p.remaining_steps is None:
        raise PolicyError("min-makespan needs remaining steps per job")
    return _maxmin(p, p.throughput, p.remaining_steps)


def finish_time_fairness(p: AllocationProblem) -> np.ndarray:
    """Themis-style: equalise (time so far + time left) / (time on an equal share).

    Linearised as in Gavel: maximise z with thr_j >= z * remaining_j / budget_j,
    where budget_j is the time the job would still have under its equal share,
    extended by how long it has already waited.
    """
    if p.remaining_steps is None:
        raise PolicyError("finish-time fairness needs remaining steps per job")
    eq = (p.throughput * equal_share(p)).sum(axis=1)
    elapsed = p.elapsed_s if p.elapsed_s is not None else np.zeros(p.shape[0])
    budget = p.remaining_steps / np.maximum(eq, 1e-12) + elapsed
    return _maxmin(p, p.throughput, p.remaining_steps / np.maximum(budget, 1e-12))


def cost_normalized_throughput(p: AllocationProblem) -> np.ndarray:
    """Maximise normalised throughput per dollar (Charnes-Cooper form of the ratio)."""
    if p.price_usd_per_hour is None:
        raise PolicyError("cost-normalised throughput needs a price per device type")
    jobs, types = p.shape
    n = jobs * types
    a, b, bounds = _base(p, 1)  # trailing variable: the Charnes-Cooper scale s >= 0
    a[:, -1] = -b  # A y <= b s
    bounds[-1] = (0.0, None)
    bounds[:n] = [(0.0, None if t > 0 else 0.0) for t in p.throughput.ravel()]
    cap = np.zeros((n, n + 1))  # y_jk <= s
    cap[np.arange(n), np.arange(n)] = 1.0
    cap[:, -1] = -1.0
    eq = np.zeros((1, n + 1))
    eq[0, :n] = (p.scale[:, None] * p.price_usd_per_hour[None, :]).ravel()
    c = np.zeros(n + 1)
    c[:n] = -(p.throughput / np.maximum(p.throughput.max(axis=1, keepdims=True), 1e-12)).ravel()
    y = _solve(
        c,
        np.vstack([a, cap]),
        np.concatenate([np.zeros(len(b)), np.zeros(n)]),
        bounds,
        eq,
        np.array([1.0]),
    )
    s = y[-1]
    return (y[:n] / s).reshape(jobs, types) if s > 1e-12 else np.zeros(p.shape)


POLICIES: dict[str, Callable[[AllocationProblem], np.ndarray]] = {
    "gavel-max-min": max_min_fairness,
    "gavel-max-min-agnostic": max_min_agnostic,
    "gavel-max-throughput": max_throughput,
    "gavel-min-makespan": min_makespan,
    "gavel-finish-time-fairness": finish_time_fairness,
    "gavel-cost-throughput": cost_normalized_throughput,
}
