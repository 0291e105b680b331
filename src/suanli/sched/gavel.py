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

import contextlib
import contextvars
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import highspy
import numpy as np
from scipy import sparse

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
    deadline_left_s: np.ndarray | None = None  # until each job's SLO (inf: none)

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


def _base(
    p: AllocationProblem, extra: int, count: np.ndarray | None = None
) -> tuple[sparse.csr_array, np.ndarray, Bounds]:
    """Inequalities A x <= b shared by all policies; ``extra`` trailing free variables.

    Sparse: with hundreds of active jobs the dense form spent more time building
    rows in Python than HiGHS spent solving. With ``count``, row ``j`` stands for
    ``count[j]`` identical jobs (see `_classes`): its variables are their summed shares.
    """
    jobs, types = p.shape
    n = jobs * types + extra
    var = np.arange(jobs * types)
    job_rows = var // types
    type_rows = jobs + var % types
    a = sparse.csr_array(
        (
            np.concatenate([np.ones(jobs * types), np.repeat(p.scale.astype(float), types)]),
            (np.concatenate([job_rows, type_rows]), np.concatenate([var, var])),
        ),
        shape=(jobs + types, n),
    )
    n_of = np.ones(jobs) if count is None else count.astype(float)
    b = np.concatenate([n_of, p.capacity.astype(float)])
    upper = np.where(p.throughput > 0, n_of[:, None], 0.0).ravel()
    bounds: Bounds = [(0.0, float(u)) for u in upper]
    bounds += [(None, None)] * extra
    return a, b, bounds


def _per_job_rows(coef: np.ndarray, extra_col: float | None) -> sparse.csr_array:
    """One row per job with ``coef[j]`` on its own variables (and ``extra_col`` on the last)."""
    jobs, types = coef.shape
    n = jobs * types + (1 if extra_col is not None else 0)
    rows = np.repeat(np.arange(jobs), types)
    cols = np.arange(jobs * types)
    vals = coef.ravel()
    if extra_col is not None:
        rows = np.concatenate([rows, np.arange(jobs)])
        cols = np.concatenate([cols, np.full(jobs, n - 1)])
        vals = np.concatenate([vals, np.full(jobs, extra_col)])
    return sparse.csr_array((vals, (rows, cols)), shape=(jobs, n))


_banner_shown = False
_Bases = dict[
    tuple[str, int, int], Any
]  # (family, cols, rows) -> basis; (family, -1, -1) -> solver
_warm_bases: contextvars.ContextVar[_Bases | None] = contextvars.ContextVar(
    "suanli_lp_warm_bases", default=None
)


@contextlib.contextmanager
def warm_starts(bases: _Bases | None = None) -> Iterator[None]:
    """Within this block, each LP starts from the last optimal basis of its kind.

    ``bases`` (a dict the caller keeps, empty at first) belongs to one scheduler
    or one simulation run, so results do not depend on what else the process
    solved before: a run repeated gives the same numbers to the last bit.
    """
    token = _warm_bases.set({} if bases is None else bases)
    try:
        yield
    finally:
        _warm_bases.reset(token)


def _highs() -> highspy.Highs:
    """A silent solver. highspy prints a banner from C++ on the first construction in
    a process, before any option can be set; it would land in ``--json`` output, so
    standard output is closed for that one call."""
    global _banner_shown
    if _banner_shown:
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()  # type: ignore[no-untyped-call]
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _banner_shown = True
    h.setOptionValue("output_flag", False)
    return h


def _solve(
    c: np.ndarray,
    a: sparse.csr_array | np.ndarray,
    b: np.ndarray,
    bounds: Bounds,
    a_eq: np.ndarray | None = None,
    b_eq: np.ndarray | None = None,
    warm: str = "",
) -> np.ndarray:
    """min c x s.t. a x <= b, a_eq x = b_eq, bounds; HiGHS called directly.

    ``warm`` names a family of LPs solved again and again with small changes (one
    per scheduling round): the last optimal basis of the same family and shape
    starts the next solve, so the simplex needs a few pivots instead of a cold start.

    Round-based scheduling solves thousands of these; SciPy's ``linprog`` wrapper
    spent four times as long checking and converting the inputs as HiGHS spent
    solving (profiled on Gavel's protocol), so the model goes to highspy as is.
    """
    a_all = sparse.csc_array(a if a_eq is None else sparse.vstack([a, a_eq]))
    n_ub = a.shape[0]
    upper = np.asarray(b, dtype=float)
    lower = np.full(n_ub, -highspy.kHighsInf)
    if b_eq is not None:
        upper = np.concatenate([upper, np.asarray(b_eq, dtype=float)])
        lower = np.concatenate([lower, np.asarray(b_eq, dtype=float)])
    lp = _lp(
        np.asarray(c, dtype=float),
        np.array([-highspy.kHighsInf if lo is None else lo for lo, _ in bounds]),
        np.array([highspy.kHighsInf if hi is None else hi for _, hi in bounds]),
        lower,
        upper,
        (a_all.indptr, a_all.indices, a_all.data),
    )
    return _run(lp, warm)


def _lp(
    cost: np.ndarray,
    col_lower: np.ndarray,
    col_upper: np.ndarray,
    row_lower: np.ndarray,
    row_upper: np.ndarray,
    csc: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> highspy.HighsLp:
    lp = highspy.HighsLp()
    lp.num_col_ = len(cost)
    lp.num_row_ = len(row_lower)
    lp.col_cost_ = cost
    lp.col_lower_ = col_lower
    lp.col_upper_ = col_upper
    lp.row_lower_ = row_lower
    lp.row_upper_ = row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = csc[0]
    lp.a_matrix_.index_ = csc[1]
    lp.a_matrix_.value_ = csc[2]
    return lp


def _run(lp: highspy.HighsLp, warm: str) -> np.ndarray:
    bases = _warm_bases.get() if warm else None
    if bases is None:
        h = _highs()
    else:  # one solver per family and scope: constructing one costs as much as a solve
        h = bases.get((warm, -1, -1)) or _highs()
        bases[(warm, -1, -1)] = h
    h.passModel(lp)
    key = (warm, lp.num_col_, lp.num_row_)
    basis = bases.get(key) if bases is not None else None
    if basis is not None:
        h.setBasis(basis)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal and basis is not None:
        h.clearSolver()  # a stale basis that misled the solver: start cold once
        h.run()
        status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise PolicyError(f"allocation LP failed: {h.modelStatusToString(status)}")
    if bases is not None:
        if len(bases) > 64:
            bases.clear()
            bases[(warm, -1, -1)] = h
        bases[key] = h.getBasis()
    return np.asarray(h.getSolution().col_value)


def _classes(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jobs that are alike in every column: (one row of each class, class of each job, sizes).

    Max-min fairness and total throughput are symmetric in identical jobs, so an
    optimum can give them equal shares and the LP needs one row per class: Gavel's
    26 job types instead of hundreds of jobs. That is exact, not an approximation
    (average any optimum over the permutations of a class: it stays feasible and
    keeps its objective).
    """
    key = np.column_stack(
        [np.asarray(c, dtype=float).reshape(len(columns[0]), -1) for c in columns]
    )
    # a 1-D fingerprint sorts far faster than rows; should two different rows share
    # one (checked, not assumed), the rows themselves are compared
    weights = 1.0 + 0.6180339887498949 * np.arange(key.shape[1])
    _, reps, inverse, counts = np.unique(
        key @ weights, return_index=True, return_inverse=True, return_counts=True
    )
    if not np.array_equal(key[reps][inverse], key):
        _, reps, inverse, counts = np.unique(
            key, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
    return reps, inverse.ravel(), counts


def _reduced(p: AllocationProblem, reps: np.ndarray) -> AllocationProblem:
    return replace(
        p,
        throughput=p.throughput[reps],
        scale=p.scale[reps],
        weights=None if p.weights is None else p.weights[reps],
        remaining_steps=None,
        elapsed_s=None,
    )


def _class_lp(
    q: AllocationProblem,
    cnt: np.ndarray,
    row_coef: np.ndarray,
    row_upper: np.ndarray,
    cost: np.ndarray,
    with_z: bool,
) -> highspy.HighsLp:
    """The per-class LP built straight in column form (scipy.sparse cost more than HiGHS).

    Variable ``(c, k)`` appears in three rows: its class's time (<= count), type
    ``k``'s capacity (scale) and its class's objective row (``row_coef[c, k]``);
    the optional last variable ``z`` has 1 in every objective row.
    """
    classes, types = q.shape
    n = classes * types
    var = np.arange(n)
    cls = var // types
    index = np.stack([cls, classes + var % types, classes + types + cls], axis=1).ravel()
    value = np.stack(
        [np.ones(n), np.repeat(q.scale.astype(float), types), row_coef.ravel()], axis=1
    ).ravel()
    start = np.arange(0, 3 * n + 1, 3)
    col_lower = np.zeros(n)
    col_upper = np.where(q.throughput > 0, cnt[:, None].astype(float), 0.0).ravel()
    if with_z:
        index = np.concatenate([index, classes + types + np.arange(classes)])
        value = np.concatenate([value, np.ones(classes)])
        start = np.append(start, 3 * n + classes)
        col_lower = np.append(col_lower, -highspy.kHighsInf)
        col_upper = np.append(col_upper, highspy.kHighsInf)
    rows = 2 * classes + types
    upper = np.concatenate([cnt.astype(float), q.capacity.astype(float), row_upper])
    return _lp(
        cost,
        col_lower,
        col_upper,
        np.full(rows, -highspy.kHighsInf),
        upper,
        (start.astype(np.int32), index.astype(np.int32), value),
    )


def _maxmin(
    p: AllocationProblem, t: np.ndarray, norm: np.ndarray, *, polish: bool = True
) -> np.ndarray:
    """maximise z s.t. (sum_k t[j,k] X[j,k]) / (w_j norm_j) >= z for every job."""
    jobs, types = p.shape
    if jobs == 0:
        return np.zeros(p.shape)
    w = p.weights if p.weights is not None else np.ones(jobs)
    reps, inv, cnt = _classes(t, p.throughput > 0, p.scale, w, norm)
    q = _reduced(p, reps)
    t_c = t[reps]
    classes = len(reps)
    best = t_c.argmax(axis=1)
    demand = np.bincount(best, weights=cnt * q.scale, minlength=types)
    if polish and (t_c.max(axis=1) > 0).all() and (demand <= q.capacity + 1e-9).all():
        # every job can run all the time on its fastest type at once: that is the
        # optimum of both LPs (no job can do better), found without solving them
        x = np.zeros((classes, types))
        x[np.arange(classes), best] = cnt
        return x[inv] / cnt[inv, None]
    c = np.zeros(classes * types + 1)
    c[-1] = -1.0
    coef = -t_c / (w[reps] * np.maximum(norm[reps], 1e-12) * cnt)[:, None]
    y = _run(_class_lp(q, cnt, coef, np.zeros(classes), c, True), "maxmin")
    x = y[:-1].reshape(classes, types)
    # polishing maximises the total of each job's throughput over its best; when every
    # job already runs all the time at its best rate there is nothing left to gain
    at_best = (t_c * x).sum(axis=1) >= cnt * t_c.max(axis=1) * (1 - 1e-9)
    if polish and not at_best.all():
        x = _polish(q, x, t_c, cnt)
    return x[inv] / cnt[inv, None]


def _polish(p: AllocationProblem, x: np.ndarray, t: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Hand leftover capacity to whoever gains most (max-min leaves slack on the table)."""
    jobs, types = p.shape
    # keep every job at least at its max-min throughput, then maximise the total
    floor = (t * x).sum(axis=1) * (1 - 1e-6)
    c = -(t / np.maximum(t.max(axis=1, keepdims=True), 1e-12)).ravel()
    try:
        y = _run(_class_lp(p, cnt, -t, -floor, c, False), "polish")
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
    if jobs == 0:
        return np.zeros(p.shape)
    reps, inv, cnt = _classes(p.throughput, p.scale)
    q = _reduced(p, reps)
    a, b, bounds = _base(q, 0, cnt)
    c = -(q.throughput / np.maximum(q.throughput.max(axis=1, keepdims=True), 1e-12)).ravel()
    x = _solve(c, a, b, bounds).reshape(len(reps), types)
    return x[inv] / cnt[inv, None]


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
    """Maximise normalised work per dollar: Gavel's ThroughputNormalizedByCostSum.

    The objective is the sum over jobs and types of (throughput over the job's
    best) / price, linear in the shares: each job leans to the type where its
    work is cheapest, and every device is used where some job still gains. (A
    ratio of total work to total cost instead would be met by one job on one
    cheap device: it does not grow with the allocation, and in rounds it starved
    every other job.)
    """
    if p.price_usd_per_hour is None:
        raise PolicyError("cost-normalised throughput needs a price per device type")
    return _per_dollar(p, np.zeros(p.shape[0]))


def min_cost_slo(p: AllocationProblem) -> np.ndarray:
    """Gavel's "minimise cost subject to SLOs" (its ThroughputNormalizedByCostSum_PerfSLOs).

    A job with a deadline must get at least the rate that finishes its remaining
    steps by then (at most its best type's rate: a late job asks for full speed);
    within that, time goes where it buys the most normalised work per dollar, as
    in `cost_normalized_throughput`, so deadline jobs sit on the cheapest types
    that still meet their deadlines. Where the deadlines cannot all be met, Gavel
    drops them all; here every deadline job instead gets the same largest
    attainable fraction of its required rate.
    """
    if p.price_usd_per_hour is None:
        raise PolicyError("min cost under SLOs needs a price per device type")
    if p.remaining_steps is None:
        raise PolicyError("min cost under SLOs needs remaining steps per job")
    best = p.throughput.max(axis=1)
    left = (
        np.full(p.shape[0], np.inf)
        if p.deadline_left_s is None
        else np.asarray(p.deadline_left_s, dtype=float)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(left > 0, p.remaining_steps / left, np.inf)
    return _per_dollar(p, np.where(np.isfinite(left), np.minimum(need, best), 0.0))


def _per_dollar(p: AllocationProblem, need: np.ndarray) -> np.ndarray:
    """Max normalised work per dollar with job ``j`` at >= ``z * need[j]`` steps/s.

    ``z`` (at most 1) is maximised first, by one LP, when some job needs a rate;
    the cost objective is then optimised at that ``z`` by a second.
    """
    assert p.price_usd_per_hour is not None
    jobs, types = p.shape
    if jobs == 0:
        return np.zeros(p.shape)
    t = p.throughput
    slo = np.flatnonzero(need > 0)
    n = jobs * types
    a_base, b, bounds = _base(p, 1)
    # per job with a need: need_j * z - sum_k t[j, k] x[j, k] <= 0
    rows = np.repeat(np.arange(len(slo)), types)
    cols = (slo[:, None] * types + np.arange(types)[None, :]).ravel()
    a_need = sparse.csr_array(
        (
            np.concatenate([-t[slo].ravel(), need[slo]]),
            (
                np.concatenate([rows, np.arange(len(slo))]),
                np.concatenate([cols, np.full(len(slo), n)]),
            ),
        ),
        shape=(len(slo), n + 1),
    )
    a = sparse.vstack([a_base, a_need]).tocsr()
    b_all = np.concatenate([b, np.zeros(len(slo))])
    z = 0.0
    if len(slo):
        c = np.zeros(n + 1)
        c[-1] = -1.0
        bounds[-1] = (0.0, 1.0)
        z = max(0.0, float(_solve(c, a, b_all, bounds, warm="need-z")[-1]) * (1 - 1e-7))
    bounds[-1] = (z, z)
    value = t / np.maximum(t.max(axis=1), 1e-12)[:, None]
    value = value / np.maximum(p.price_usd_per_hour, 1e-12)[None, :]
    y = _solve(np.append(-value.ravel(), 0.0), a, b_all, bounds, warm="per-dollar")
    return y[:n].reshape(jobs, types)


POLICIES: dict[str, Callable[[AllocationProblem], np.ndarray]] = {
    "gavel-max-min": max_min_fairness,
    "gavel-max-min-agnostic": max_min_agnostic,
    "gavel-max-throughput": max_throughput,
    "gavel-min-makespan": min_makespan,
    "gavel-finish-time-fairness": finish_time_fairness,
    "gavel-cost-throughput": cost_normalized_throughput,
    "gavel-min-cost-slo": min_cost_slo,
}
