"""Calibration: fit a few physical factors of the cluster profile to measured runs, and test them on held-out runs.

The factors (each says what the profile got wrong about training on this cluster):

    compute_scale     training compute runs this many times the profiled time (contention, cache effects): scales
                      the measured compute tables and the optimizer rate, divides the matmul/attention/memory
                      efficiencies
    comm_scale        communication takes this many times the profiled time: scales the measured collective times
                      and link latencies, divides the comm_intra/comm_inter efficiencies
    pass_overhead_s   framework time per forward and per backward action of each stage and micro-batch (Python,
                      the pipelining runtime's send/recv bookkeeping, FSDP and autograd hooks)
    step_overhead_s   fixed time per optimizer step (gradient-norm and loss all-reduces, clipping, zero_grad, data)

The first two are expressed as a profile with scaled numbers. The overheads are named entries of `efficiency`
("pass_overhead_s", "step_overhead_s") that the cost model adds to every forward and backward(-input) pass and to
every step.

Fit: the predicted time is piecewise linear and homogeneous of degree one in the factors (every cost the
simulation adds or maxes scales with one of them), so Gauss-Newton on the finite-difference Jacobian solves a
linear least-squares problem in relative error at each step, factors kept >= 0 (active sets enumerated), with a
weak prior pulling the scales towards 1 so that a factor the runs cannot identify stays where the profile put it.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from autoconf.cost import estimate as cost_estimate
from autoconf.spec.cluster import ClusterProfile, Link
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import Plan
from autoconf.validate.stats import median_abs_error, spearman

FACTORS = ("compute_scale", "comm_scale", "pass_overhead_s", "step_overhead_s")
# Successful runs a calibration needs: one more than the factors it fits, so one is left to check them.
MIN_CALIBRATION_RUNS = len(FACTORS) + 1
NEUTRAL = {"compute_scale": 1.0, "comm_scale": 1.0, "pass_overhead_s": 0.0, "step_overhead_s": 0.0}
PRIOR_WEIGHT = 0.05  # weight of (scale - 1) against one run's relative error
COMPUTE_EFFICIENCIES = ("matmul", "attention", "memory")
COMM_EFFICIENCIES = ("comm_intra", "comm_inter")


# ---- the calibrated profile ---------------------------------------------------------------------------------------
def calibrated_profile(cluster: ClusterProfile, factors: dict, note: str = "") -> ClusterProfile:
    """`cluster` with the factors applied (see the module docstring). Neutral factors return an equal profile."""
    f = {**NEUTRAL, **factors}
    a, c = float(f["compute_scale"]), float(f["comm_scale"])
    why = f" (calibrated{': ' + note if note else ''})"
    efficiency = {k: dict(v) for k, v in cluster.efficiency.items()}
    for name in COMPUTE_EFFICIENCIES:
        if name in efficiency and a != 1.0:
            efficiency[name] = {"value": efficiency[name]["value"] / a,
                                "why": f"{efficiency[name].get('why', '')}; divided by compute_scale {a:.4g}{why}"}
    for name in COMM_EFFICIENCIES:
        if name in efficiency and c != 1.0:
            efficiency[name] = {"value": efficiency[name]["value"] / c,
                                "why": f"{efficiency[name].get('why', '')}; divided by comm_scale {c:.4g}{why}"}
    for name, what in (("pass_overhead_s", "framework seconds per forward and per backward action of a stage "
                                           "and micro-batch"),
                       ("step_overhead_s", "framework seconds per optimizer step")):
        value = float(f[name]) + float(cluster.efficiency.get(name, {}).get("value", 0.0))
        if value:
            efficiency[name] = {"value": value, "why": what + why}
    compute = cluster.compute
    if compute and a != 1.0:
        compute = dict(compute)
        compute["entries"] = [{**e, **{k: float(e[k]) * a for k in ("forward_s", "backward_input_s",
                                                                     "backward_weight_s") if k in e}}
                              for e in compute.get("entries", [])]
        if compute.get("optimizer_s_per_param"):
            compute["optimizer_s_per_param"] = float(compute["optimizer_s_per_param"]) * a
    collectives = cluster.collectives
    intra, inter = cluster.intra_node, cluster.inter_node
    intra_m, inter_m = cluster.intra_node_matrix, cluster.inter_node_matrix
    if c != 1.0:
        collectives = {op: {scope: [{**p, "time_s": float(p["time_s"]) * c} for p in points]
                            for scope, points in scopes.items()} for op, scopes in collectives.items()}

        def slow(link: Link) -> Link:
            return Link(link.latency_s * c, link.bandwidth_Bps)

        intra, inter = slow(intra), slow(inter)
        intra_m = None if intra_m is None else tuple(tuple(slow(x) for x in row) for row in intra_m)
        inter_m = None if inter_m is None else tuple(tuple(slow(x) for x in row) for row in inter_m)
    return dataclasses.replace(cluster, efficiency=efficiency, compute=compute, collectives=collectives,
                               intra_node=intra, inter_node=inter, intra_node_matrix=intra_m,
                               inter_node_matrix=inter_m)


# ---- prediction ---------------------------------------------------------------------------------------------------
def predict_time(model: ModelSpec, cluster: ClusterProfile, plan: Plan) -> float:
    """Predicted iteration time of `plan` (its partition and placement) on `cluster`: the full simulation, as
    `estimate` reports it, including the profile's pass_overhead_s / step_overhead_s entries."""
    c = plan.config.check(model, cluster.world_size)
    mesh = np.asarray(plan.placement["mesh"])
    return cost_estimate.estimate(model, cluster, c, partition=plan.partition, mesh=mesh,
                                  detail=True).prediction["iteration_time_s"]


# ---- fitting ------------------------------------------------------------------------------------------------------
def _predictions(model, cluster, plans, factors) -> np.ndarray:
    calibrated = calibrated_profile(cluster, factors)
    return np.array([predict_time(model, calibrated, p) for p in plans])


def fit(model: ModelSpec, cluster: ClusterProfile, plans: list[Plan], measured: list[float],
        factors: tuple[str, ...] = FACTORS, iterations: int = 8) -> dict:
    """Factors minimising the squared relative error of the predicted times of `plans` against `measured`."""
    y = np.asarray(measured, dtype=float)
    theta = {k: NEUTRAL[k] for k in factors}
    scales = [i for i, k in enumerate(factors) if k.endswith("_scale")]
    for _ in range(iterations):
        base = _predictions(model, cluster, plans, theta)
        jac = np.zeros((len(plans), len(factors)))
        for i, k in enumerate(factors):
            h = 1e-3 * max(theta[k], 1.0) if k.endswith("_scale") else 1e-4
            jac[:, i] = (_predictions(model, cluster, plans, {**theta, k: theta[k] + h}) - base) / h
        # Homogeneous degree one: base = jac @ theta + (what the fitted factors do not touch).
        rest = base - jac @ np.array([theta[k] for k in factors])
        new = _nonnegative_lstsq(jac / y[:, None], (y - rest) / y, scales, len(factors))
        if new is None:
            break
        step = max(abs(new[i] - theta[k]) / max(abs(theta[k]), 1e-3) for i, k in enumerate(factors))
        theta = {k: float(new[i]) for i, k in enumerate(factors)}
        if step < 1e-4:
            break
    return theta


def _nonnegative_lstsq(a: np.ndarray, b: np.ndarray, scales: list[int], n: int) -> np.ndarray | None:
    """min |a x - b|^2 + PRIOR_WEIGHT^2 * sum over scales (x_i - 1)^2 with x >= 0, by enumerating which of the
    non-scale factors are free (few factors, so every active set is tried); scales must come out positive."""
    prior = np.zeros((len(scales), n))
    for row, i in enumerate(scales):
        prior[row, i] = PRIOR_WEIGHT
    a_full = np.vstack([a, prior])
    b_full = np.concatenate([b, PRIOR_WEIGHT * np.ones(len(scales))])
    others = [i for i in range(n) if i not in scales]
    best, best_cost = None, np.inf
    for r in range(len(others) + 1):
        for free_others in itertools.combinations(others, r):
            free = sorted(scales + list(free_others))
            x = np.zeros(n)
            sol, *_ = np.linalg.lstsq(a_full[:, free], b_full, rcond=None)
            x[free] = sol
            if (x[free] <= 0).any():
                continue
            cost = float(((a_full @ x - b_full) ** 2).sum())
            if cost < best_cost - 1e-15:
                best, best_cost = x, cost
    return best


def folds(n: int, max_folds: int = 12) -> list[list[int]]:
    """Held-out index sets: leave-one-out up to `max_folds` runs, else `max_folds` interleaved folds."""
    k = min(n, max_folds)
    return [[i for i in range(n) if i % k == j] for j in range(k)]


def cross_validate(model: ModelSpec, cluster: ClusterProfile, plans: list[Plan], measured: list[float],
                   factors: tuple[str, ...] = FACTORS) -> dict:
    """Fits on all but each fold and predicts the fold; the before/after errors are over held-out runs only."""
    n = len(plans)
    before = [predict_time(model, cluster, p) for p in plans]
    after = [0.0] * n
    fitted = []
    for held in folds(n):
        train = [i for i in range(n) if i not in held]
        theta = fit(model, cluster, [plans[i] for i in train], [measured[i] for i in train], factors)
        fitted.append(theta)
        calibrated = calibrated_profile(cluster, theta)
        for i in held:
            after[i] = predict_time(model, calibrated, plans[i])
    return {"scheme": "leave-one-out" if len(folds(n)) == n else f"{len(folds(n))}-fold",
            "held_out": [{"run": i, "measured_s": measured[i], "predicted_before_s": before[i],
                          "predicted_after_s": after[i]} for i in range(n)],
            "before": {"median_abs_error": median_abs_error(before, measured), "spearman": spearman(before, measured)},
            "after": {"median_abs_error": median_abs_error(after, measured), "spearman": spearman(after, measured)},
            "fold_factors": fitted}
