"""The planner: enumerate legal layouts, prune with cheap bounds, simulate the survivors, refine the best.

    1. space.candidates          every legal config honouring --fix
    2. bounds                    per candidate, closed-form lower bounds of peak memory and of iteration time
                                 (busiest rank's compute + the schedule's textbook bubble + optimizer)
    3. branch and bound          candidates in order of their time bound; a candidate whose memory bound exceeds the
                                 device is pruned; once the K-th best simulated time is below the next bound, the
                                 rest are pruned; survivors get the full critical-path simulation (cost/estimate.py)
    4. refinement (top K)        CP-SAT stage partition and GPU placement, then a detailed estimate; the refined
                                 layout replaces the uniform one only where it is predicted faster and fits

Deterministic: the same inputs visit candidates in the same order and the solvers are seeded and single-threaded.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import math
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from autoconf.cost.compute import accumulates_unsharded_grads
from autoconf.cost.cp_ring import recompute_leaves_ring, torch_ring
from autoconf.cost.estimate import (EXTRAPOLATION_MARGIN, Execution, default_mesh, default_partition, estimate,
                                    predict, step_floor)
from autoconf.cost.offload import check_offload, plans_offload
from autoconf.errors import UserError
from autoconf.files import gib_figures
from autoconf.spec.support import (candidate_unsupported_reason, dtype_unsupported_reason, schedule_model_reason,
                                   unsupported_reason)
from autoconf.solve.bounds import BoundCache
from autoconf.solve.fit import headroom_advice, smallest_fitting_change
from autoconf.solve.placement import host_chain_order, tp_cp_domain
from autoconf.solve.recompute import fewest_counts, fewest_recomputed, rebalanced
from autoconf.solve.space import CP_MIN_SEQ_LEN, candidates, cp_choices, normalise_fixed, pin_text, replaced
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.frameworks import selective_policy
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import OFFLOADS, ParallelConfig, Plan, cp_split_problem, node_blocks
from autoconf.spec.schedules import SCHEDULES, schedule_spec

# Every config field but grad_reduce: what the time bound reads (`search` shares one bound between twins).
_BOUND_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig) if f.name != "grad_reduce"))
# Every config field but grad_reduce and the recompute mode and policy: what the time bound reads of a candidate that
# recomputes no layer yet (`search`: each recomputed layer's term is 0 x its time) and does not offload activations.
_UNFITTED_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ParallelConfig)
                                         if f.name not in ("grad_reduce", "recompute", "selective_recompute")))
# The fields a family of candidates shares (`space.candidates` varies the levers innermost: ZeRO, recompute,
# sequence parallelism, grad_reduce, the CP exchange, the expert degrees); the walk bounds a family before it
# builds its members' entries (`search`).
_FAMILY_FIELDS = operator.attrgetter("tp", "cp", "pp", "dp", "vpp", "micro_batch_size", "schedule", "seq_chunks",
                                     "seq_split")
# How far the walk has fitted a recompute candidate's per-stage counts (`search`'s walk); FAMILY marks a family's
# entry, whose members are not yet in the heap.
# OFFLOAD_PARENT marks the entry of a candidate that did not fit, standing for its offloading twins.
OFFLOAD_PARENT, FAMILY, UNFITTED, RANK0_FITTED, FITTED = -2, -1, 0, 1, 2


@dataclass
class SearchResult:
    plans: list[Plan]
    stats: dict = field(default_factory=dict)
    closest: tuple[float, ParallelConfig] | None = None  # (bytes over the limit, config) when nothing fits


# The most candidates `_conflicting_pin` reads in search of a layout honouring the other pins with nothing against it.
WITNESS_SCAN = 4096
# Candidates the search refines (CP-SAT partition and placement) at the least, whatever number of plans it returns.
REFINED_AT_LEAST = 5


def search(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
           attention: str = "flash", fixed: dict | None = None, top_k: int = 5,
           execution: Execution = Execution(), refine: bool = True, partition_time_s: float = 1.0,
           placement_time_s: float = 5.0, launchable_only: bool | None = None,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """The best `top_k` plans that fit, fastest first, with search statistics. `progress`, where given, is called
    with a line saying how far the search has gone, at most every PROGRESS_EVERY_S seconds. At least REFINED_AT_LEAST
    candidates are refined whatever `top_k` asks, so the plans returned are the first of the same ranking (CP-SAT's
    partition can move a candidate ahead of a faster-looking one: with fewer refined, #1 depended on `top_k`).

    With `launchable_only`, layouts the bundled executor refuses (spec/support.py) are left out and counted; by
    default only when planning for the executor (`Execution.is_executor`): another framework's plans are exported,
    not launched, so its search weighs what that framework runs (Megatron-Core's FP8 with TP, which the executor
    does not run).

    On nodes whose per-pair links differ, the search runs on the cluster with each node's devices renumbered along
    its fastest links (`placement.host_chain_order`), so that every candidate is estimated and bounded with its
    groups in the fast islands (on the profile's own numbering a layout's default order may straddle them all, and
    only the few refined candidates would have been placed well); the plans' meshes name the profile's devices.

    Below CP_MIN_SEQ_LEN tokens context parallelism is weighed only where nothing fits without it (a second pass,
    `short_cp`, unless --fix pins cp): a short sequence split over ranks can still be what lets a model fit.
    """
    order = host_chain_order(cluster)
    options = (global_batch, seq_len, dtype, attention, fixed, top_k, execution, refine, partition_time_s,
               placement_time_s, launchable_only, progress)
    searched = cluster if order is None else cluster.with_local_order(order)
    result = _search(model, searched, *options)
    if not result.plans and _splits_short_sequences(searched, seq_len, attention, fixed):
        again = _search(model, searched, *options, short_cp=True)
        if again.plans:
            again.stats["short_cp"] = True
            result = again
    if order is None:
        return result
    g = cluster.gpus_per_node
    for plan in result.plans:
        mesh = np.asarray(plan.placement["mesh"])
        plan.placement["mesh"] = ((mesh // g) * g + np.asarray(order)[mesh % g]).tolist()
    return result


def _splits_short_sequences(cluster: ClusterProfile, seq_len: int, attention: str, fixed: dict | None) -> bool:
    """Whether `search`'s second pass may add context parallelism: a sequence below CP_MIN_SEQ_LEN that some cp > 1
    of the devices splits (`space.cp_choices` at any length), flash attention, and no pinned cp."""
    pinned_cp = {"cp", "cp_comm"} & normalise_fixed(fixed or {}).keys()
    return (seq_len < CP_MIN_SEQ_LEN and attention == "flash" and not pinned_cp
            and len(cp_choices(cluster.world_size, seq_len, short=True)) > 1)


def _search(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
            attention: str, fixed: dict | None, top_k: int, execution: Execution, refine: bool,
            partition_time_s: float, placement_time_s: float, launchable_only: bool | None,
            progress: Callable[[str], None] | None, short_cp: bool = False) -> SearchResult:
    """`search` on `cluster` as it numbers its devices (`short_cp`: its second pass)."""
    start = reported = time.perf_counter()

    def tick(text: Callable[[], str]) -> None:
        """Calls `progress` with `text()` and the seconds so far, if PROGRESS_EVERY_S have passed since the last."""
        nonlocal reported
        now = time.perf_counter()
        if progress is not None and now - reported >= PROGRESS_EVERY_S:
            reported = now
            progress(f"{text()} ({now - start:.0f} s so far)")

    if launchable_only is None:
        launchable_only = execution.is_executor
    shown, top_k = top_k, max(top_k, REFINED_AT_LEAST)
    fixed = normalise_fixed(fixed or {})
    if model.context_problem(seq_len):
        raise UserError(model.context_problem(seq_len))
    limit = cluster.usable_memory_bytes
    cache = BoundCache(model, cluster, execution)
    launchable = 0
    bound_of: dict[ParallelConfig, float] = {}
    bound_by_fields: dict[tuple, float] = {}
    seen = unlaunchable = 0
    refused = None  # why the executor refused the first layout it refused
    # Unless the user pins the recompute mode, a selective or full candidate recomputes only the fewest layers of
    # each stage that fit (solve/recompute.py), found when the walk reaches it: until then it is bounded as if it
    # recomputed none, then put back with the bound of its counts. (A pinned selective policy pins the mode,
    # `normalise_fixed`: every layer recomputes under it, as under a pinned mode.)
    per_stage = "recompute" not in fixed
    # Selective candidates run the framework's own policy and, where it runs others, each of them (the per-op policy
    # saves more and recomputes less than the attention core, or the reverse: the estimate decides).
    others = [p for p in execution.selective_policies if p != execution.selective_recompute]
    policies = (None, *others)
    # A lever pinned on (--fix offload_activations=true) is searched as the unpinned levers are: the space yields
    # layouts without it, which only stand for their offloading twins (every lever combination --fix leaves open),
    # so a pinned lever weighs the other lever and the twins' refitted recompute as an open one does.
    pinned_on = tuple(name for name in OFFLOADS if fixed.get(name) is True)
    check_offload(cluster, pinned_on)
    refused = next(filter(None, map(execution.lever_problem, pinned_on)), None)
    if refused:
        raise UserError(refused)
    space_fixed = {name: value for name, value in fixed.items() if name not in pinned_on}
    # A family's bound is at most each member's: the least bound of its members without recompute, which is at most
    # the bound of their twins that recompute (bounded with no layer recomputed: the same time bound, plus each
    # rank's own layers where it reads per-stage counts; tests/test_search.py checks it). Not so where activations
    # are offloaded (their copies shrink with recompute): there every member counts; nor for a member whose
    # selective policy takes context-parallel attention off torch's ring (`bound_of_fields`' note).
    relaxed = per_stage and not fixed.get("offload_activations")
    # family fields -> [bound, [(order, config, its own bound where the family's read it, else None) of each
    # launchable member]]
    families: dict[tuple, list] = {}
    # What the user chose and the executor does not run is costed all the same, its plans marked not launchable.
    refusal = executor_refusal(model, fixed, dtype) if launchable_only else None

    def bound_of_fields(config: ParallelConfig) -> float:
        """The time bound a candidate enters the walk with (shared by the twins it does not read)."""
        # The bound does not read grad_reduce (reducing every micro-batch only adds to the step), so a layout and
        # its twin that reduces every micro-batch share one. Nor, while no layer recomputes, the recompute mode or
        # policy: their recompute time enters only times a count of 0, and without offloaded activations (whose
        # copies the policy sizes) the twins in selective and full recompute share one bound.
        unfitted = per_stage and config.recompute != "none" and not config.offload_activations
        # (under cp the policy also decides whether the attention runs torch's ring: `cp_ring.torch_ring`)
        fields = ((True, _UNFITTED_FIELDS(config), torch_ring(model, config, execution)) if unfitted
                  else _BOUND_FIELDS(config))
        bound = bound_by_fields.get(fields)
        if bound is None:
            bound = cache.time_bound(_bounded(config, per_stage and config.recompute != "none"))
            bound_by_fields[fields] = bound
        return bound

    honoured = not pinned_on  # (whether some layout takes the pinned levers; else the pins conflict)
    for config in framework_candidates(model, cluster, global_batch, seq_len, dtype, attention, space_fixed,
                                       execution, policies, short_cp):
        seen += 1
        tick(lambda: f"bounded {seen:,} candidate layouts")
        if not honoured:
            twin = replaced(config, **dict.fromkeys(pinned_on, True))
            honoured = not twin.problems(model, cluster.world_size) and not execution.offload_problem(twin)
        family = families.setdefault(_FAMILY_FIELDS(config), [math.inf, []])
        # (launchable or not: the bound reads neither); a recompute member is bounded apart where its policy takes
        # context-parallel attention off torch's ring, which its twin without recompute runs
        bound = None
        if not relaxed or config.recompute == "none" or (config.cp > 1 and not torch_ring(model, config, execution)):
            bound = bound_of_fields(config)
            family[0] = min(family[0], bound)
        reason = refusal(config) if refusal is not None else None
        if reason:
            unlaunchable += 1
            refused = refused or reason
            continue
        family[1].append((launchable, config, bound))
        launchable += 1
    if not launchable or not honoured:
        if refused and launchable == 0:
            raise UserError(f"every legal layout is one the executor cannot run: {refused}")
        raise UserError(no_candidate_message(model, cluster, global_batch, seq_len, fixed, dtype, attention,
                                             execution))
    # A family enters the walk with its bound, the shared part of its members' keys (a proper prefix: smaller than
    # each of them) and its first member's order, so it leaves the heap before any of its members would have: the
    # walk pops the candidates in the same order as if every one had been in the heap from the start.
    scored = [(bound, ranking_key(members[0][1])[:_KEY_HEAD], members[0][0], members, FAMILY)
              for bound, members in families.values() if members]
    heapq.heapify(scored)  # by bound, then key; a candidate put back after fitting its recompute keeps its key

    def entries(members: list) -> list:
        """The walk's entries of a family's members: (bound, key, order, config, how far fitted)."""
        return [(bound_of_fields(config) if bound is None else bound, ranking_key(config), order, config,
                 UNFITTED if per_stage and config.recompute != "none" else FITTED)
                for order, config, bound in members]

    best: list[tuple[float, tuple, ParallelConfig, dict]] = []  # the K best extrapolated times: a max-heap (negated)
    near: list[tuple[float, tuple, ParallelConfig, dict]] = []  # every fitting candidate, with its (extrapolated) time
    pruned_memory = pruned_time = simulated = 0
    # (bytes over the limit, whether exact, config) of every candidate that does not fit, in walk order: exact where
    # they are the layout's own peak (every rank's memory), else at most that (rank 0's `memory_bound`, or the cheap
    # `state_bound` below it), worked out if nothing fits.
    misses: list[tuple[float, bool, ParallelConfig]] = []
    # Reducing every micro-batch costs time and saves memory: it is only worth simulating where its twin that
    # reduces once per step (sorted just before it: same bound, smaller key) did not fit, or where that twin sums
    # every micro-batch's whole gradient (`accumulates_unsharded_grads`), which reducing every micro-batch skips.
    fitting_once = set()
    # Offload costs time and saves memory: it is weighed after the walk, for the candidates that did not fit and
    # those that fit only by recomputing layers, which offloading may let recompute fewer (`_offload_parents`).
    parents: list[tuple[float, tuple, ParallelConfig, Callable[[], dict]]] = []
    levers = _offload_levers(cluster, fixed, execution)
    offloading = plans_offload(cluster)
    twins = 0  # offloading twins that joined the walk
    weighed_twins = 0  # offloading twins of the parents that entered the second walk (`_candidates_of`)
    same = 0  # recompute candidates whose fewest counts are none: their twin without recompute

    def does_not_fit(over: float, time_bound: float, key: tuple, config: ParallelConfig,
                     memory: Callable[[], dict], exact: bool = True,
                     floor: Callable[[bool, bool], float] | None = None) -> None:
        """Records a candidate `over` bytes beyond the limit (its busiest rank's, or at least that many without
        `exact`): a miss (the closest is the advice when nothing fits) and, where the cluster plans offload, the
        parent of offloading twins with its memory entry (`memory()`, asked only for the parents `_offload_twins`
        weighs) and, where given, a lower bound of what stays of that entry under each lever
        (`floor(activations, optimizer)`). An offloading twin that does not fit the device is a miss, never a
        parent (one beyond only its host's memory neither)."""
        if config.offloads and over <= 0:
            return
        misses.append((over, exact, config))
        if offloading and not config.offloads:
            parents.append((time_bound, key, config, memory, floor))

    def memory_pruned(time_bound: float, key: tuple, config: ParallelConfig) -> bool:
        """Whether rank 0 of `config` exceeds the device: the cheap `state_bound` and `known_floor` first,
        `memory_bound` where they do not decide; a candidate that exceeds is recorded (`does_not_fit`)."""
        nonlocal pruned_memory
        # Lower bounds that cost no `stage_memory` call, each asked only where the one before does not decide: the
        # state bound, then the floor a twin in ZeRO stage / grad_reduce left (None where none has an entry).
        for lower_bound in (cache.state_bound, cache.known_floor):
            floor = lower_bound(config)
            if floor is not None and floor > limit:
                pruned_memory += 1
                does_not_fit(floor - limit, time_bound, key, config, functools.partial(cache.rank0_memory, config),
                             exact=False, floor=functools.partial(cache.offload_floor, config))
                return True
        entry = cache.rank0_memory(config)  # `memory_bound`'s entry
        if entry["total"] > limit:
            pruned_memory += 1
            does_not_fit(entry["total"] - limit, time_bound, key, config, lambda: entry, exact=False)
            return True
        return False

    def consider(time_bound: float, key: tuple, config: ParallelConfig) -> None:
        """Memory bound, then the (extrapolated) simulation; the K best that fit are kept."""
        nonlocal pruned_memory, pruned_time, simulated
        if memory_pruned(time_bound, key, config):  # only for the candidates the walk reaches
            return
        if cache.beyond_host(config):
            pruned_memory += 1
            return  # (beyond its host's memory: no miss; `does_not_fit` records the twins short of the device)
        # Every rank's memory, the simulation's own (`layout_memory`): a layout that does not fit is recorded as the
        # simulation would have recorded it, without simulating it.
        memory = cache.layout_memory(config)
        peak = max(entry["total"] for entry in memory)
        if peak > limit:
            pruned_memory += 1
            does_not_fit(peak - limit, time_bound, key, config,
                         functools.partial(max, memory, key=operator.itemgetter("total")))
            return
        # A twin reducing every micro-batch shares its bound with the twin that reduces once, which its DP comm stream
        # may far outlast (DeepSeek-V3 on 256 H800: steps of 2,000-3,000 s simulated at 7,680 micro-batches): its
        # own floor, above the K-th best (extrapolated, so at or above its full time), rules it out unsimulated.
        if config.grad_reduce != "step" and len(best) >= top_k and step_floor(
                model, cluster, config, execution=execution) > -best[0][0]:
            pruned_time += 1
            return
        p = predict(model, cluster, config, execution=execution, detail=False, extrapolate=True)[3]
        simulated += 1
        if not p["fits"]:
            does_not_fit(p["peak_memory_bytes"] - limit, time_bound, key, config,
                         functools.partial(max, p["memory_per_stage"], key=operator.itemgetter("total")))
            return
        if config.grad_reduce == "step":
            fitting_once.add(key[:-1])
        # Every fitting candidate may come back: one simulated in full can tie (to the last bit) with an
        # extrapolated one that the heap kept on its key and whose full time is that bit longer.
        near.append((p["iteration_time_s"], key, config, p))
        item = (-p["iteration_time_s"], _negated(key), config, p)
        if len(best) < top_k:
            heapq.heappush(best, item)
        elif item > best[0]:
            heapq.heapreplace(best, item)

    def walk(heap: list) -> None:
        """Pops (bound, key, order, config, fitted) in bound order and `consider`s each until the K-th best time is
        below the next bound. A recompute candidate not yet fitted (`fitted` < FITTED) first gets the fewest
        recomputed layers of pipeline rank 0 (solve/recompute.py: a rank's count reads its own memory only, so
        these are its final counts and a lower bound of the others), and goes back with the bound of those counts
        (RANK0_FITTED); then the fewest of every rank, and goes back with the bound of all its counts (FITTED)."""
        nonlocal pruned_time, pruned_memory, twins, weighed_twins, unlaunchable, same
        weighed_twins += sum(_candidates_of(e) for e in heap if e[4] == OFFLOAD_PARENT)
        while heap:
            tick(lambda: f"of {seen:,} candidates, simulated {simulated:,} the bounds leave"
                         + (f"; fastest so far {min(-item[0] for item in best):.4g} s per step" if best else ""))
            time_bound, key, order, config, fitted = heapq.heappop(heap)
            # Extrapolated times are at or above the full simulation, so the K-th best of them is at or above the
            # K-th best full time: a bound beyond it rules a candidate out.
            if len(best) >= top_k and time_bound >= -best[0][0]:
                pruned_time += sum(_candidates_of(e) for e in [*heap, (time_bound, key, order, config, fitted)])
                break
            if fitted == FAMILY:
                for entry in entries(config):
                    heapq.heappush(heap, entry)
                continue
            if fitted == OFFLOAD_PARENT:
                skipped = {"time": 0, "memory": 0, "unlaunchable": 0}
                for entry in _offload_twins(cache, refusal, (time_bound, key, order, config, fitted), limit,
                                            -best[0][0] if len(best) >= top_k else math.inf, bound_of, skipped,
                                            per_stage):
                    heapq.heappush(heap, entry)
                    twins += 1
                pruned_time += skipped["time"]
                pruned_memory += skipped["memory"]
                unlaunchable += skipped["unlaunchable"]
                continue
            if pinned_on and not all(getattr(config, name) for name in pinned_on):  # (a base of pinned twins)
                parents.append((bound_of_fields(config), key, config, functools.partial(cache.rank0_memory, config),
                                functools.partial(cache.offload_floor, config)))
                continue
            if (config.grad_reduce != "step" and key[:-1] in fitting_once
                    and not accumulates_unsharded_grads(replaced(config, grad_reduce="step"), execution)):
                pruned_time += 1
                continue
            if fitted == UNFITTED:
                if memory_pruned(time_bound, key, config):  # rank 0 recomputing every layer: then no count fits
                    continue
                rank0 = fewest_counts(model, cluster, config, default_partition(model, config), execution, [0])
                if rank0 is not None and any(rank0):
                    tighter = cache.time_bound(replaced(config, recompute_layers=rank0))
                    if tighter > time_bound:
                        heapq.heappush(heap, (tighter, key, order, config, RANK0_FITTED))
                        continue
            if fitted != FITTED:
                counted = fewest_recomputed(model, cluster, config, default_partition(model, config), execution)
                if counted is None:
                    # Some rank does not fit even recomputing every layer: the estimate's own memory of the layout
                    # (every rank, the in-flight counts of its order) says so without a simulation.
                    pruned_memory += 1
                    memory = cache.memory(config)
                    largest = max(memory, key=operator.itemgetter("total"))
                    does_not_fit(largest["total"] - limit, time_bound, key, config,
                                 functools.partial(max, memory, key=operator.itemgetter("total")))
                    continue
                if counted.recompute == "none":
                    same += 1
                    continue  # needs no recompute: the same layout as its twin without recompute
                if offloading and not config.offloads:  # fits by recomputing: its twins may recompute fewer layers
                    parents.append((bound_of_fields(config), key, config,
                                    functools.partial(cache.rank0_memory, config), None))
                config = counted
                tighter = cache.time_bound(config)
                if tighter > time_bound:
                    heapq.heappush(heap, (tighter, key, order, config, FITTED))
                    continue
            consider(time_bound, key, config)

    walk(scored)
    # Offload is weighed after the walk, for the candidates that did not fit or fit only by recomputing, so the walk
    # over the others is unchanged: a second walk over their offloading twins, each parent's asked only when the
    # walk reaches it.
    walk(_offload_parents(cache, levers, parents, -best[0][0] if len(best) >= top_k else math.inf, per_stage))
    chosen = _ranked_by_full_simulation(model, cluster, execution, best, near, top_k)
    search_seconds = time.perf_counter() - start
    if refine:
        ranked = []
        for i, (full_time, config) in enumerate(chosen):
            tick(lambda: f"refining the partition and placement of the {len(chosen)} best ({i} done)")
            ranked.append(_refine(model, cluster, config, execution, partition_time_s, placement_time_s, full_time,
                                  per_stage))
        ranked.sort(key=lambda plan: (plan.prediction["iteration_time_s"], ranking_key(plan.config)))
        ranked = _distinct(ranked)
    else:
        ranked = [estimate(model, cluster, config, execution=execution) for _, config in chosen]
    closest = None  # the miss whose busiest rank is least over (an offloading one within its host's memory)
    for over, exact, config in sorted(misses, key=operator.itemgetter(0)) if not ranked else ():
        if closest is not None and over >= closest[0]:
            break  # (an inexact miss is at least `over` bytes over, and so is every one after it)
        # (an offloading miss beyond its host's memory is no advice: the estimate's host bytes, unsimulated)
        if cache.beyond_host(config, every_rank=True):
            continue
        over = over if exact else cache.layout_peak(config) - limit
        if closest is None or over < closest[0]:
            closest = (over, config)
    stats = {"candidates": seen, "unlaunchable": unlaunchable, "pruned_memory": pruned_memory,
             "pruned_time": pruned_time, "simulated": simulated, "feasible": len(ranked),
             "seconds": round(time.perf_counter() - start, 3),
             "search_seconds": round(search_seconds, 3), **({"offload_candidates": twins} if twins else {}),
             **({"offload_weighed": weighed_twins} if weighed_twins else {}),
             **({"same_as_another": same} if same else {})}
    ranked = ranked[:shown]
    for plan in ranked:  # (`estimate` marks those the executor refuses, with the reason)
        plan.prediction.setdefault("launchable", True)
    if ranked and ranked[0].config.recompute_layers is not None:
        ranked[0].prediction["recompute_per_stage"] = every_layer_comparison(model, cluster, ranked[0], execution)
    return SearchResult(ranked, stats, closest if not ranked else None)


def _distinct(plans: list[Plan]) -> list[Plan]:
    """`plans` without any plan equal to an earlier one in config, partition and placement. Two candidates can refine
    to one plan: a layout recomputing every layer whose per-stage counts come out at zero is its twin without
    recompute. So a search may return fewer plans than asked for, each of them different."""
    seen, out = set(), []
    for plan in plans:
        key = json.dumps([plan.config.to_dict(), plan.partition, plan.placement], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(plan)
    return out


def every_layer_comparison(model: ModelSpec, cluster: ClusterProfile, plan: Plan, execution: Execution) -> dict:
    """What recomputing per stage bought the plan: its counts, and the step time and peak memory of the same layout
    recomputing every layer (all or nothing per layer, as before per-stage counts). Where the counts also take the
    attention off torch's context-parallel ring (`cp_ring.recompute_leaves_ring`), also the layout recomputing no
    layer, which runs the ring ("torch_ring_iteration_time_s" and "torch_ring_peak_memory_bytes"): what the switch
    bought."""
    c = plan.config
    mesh = np.asarray(plan.placement["mesh"])

    def prediction(config: ParallelConfig) -> dict:
        return predict(model, cluster, config, partition=plan.partition, mesh=mesh, execution=execution,
                       detail=False)[3]

    p = prediction(dataclasses.replace(c, recompute_layers=None))
    out = {"layers": list(c.recompute_layers), "every_layer_iteration_time_s": p["iteration_time_s"],
           "every_layer_peak_memory_bytes": p["peak_memory_bytes"]}
    if recompute_leaves_ring(model, c, execution):
        ring = prediction(dataclasses.replace(c, recompute_layers=(0,) * c.num_stages))
        out.update(torch_ring_iteration_time_s=ring["iteration_time_s"],
                   torch_ring_peak_memory_bytes=ring["peak_memory_bytes"])
    return out


def _ranked_by_full_simulation(model: ModelSpec, cluster: ClusterProfile, execution: Execution, best: list,
                               near: list, top_k: int) -> list[tuple[float, ParallelConfig]]:
    """The K best (full time, config), fastest first, from the K best extrapolated candidates of the walk: each of them
    simulated in full, and so is every other candidate whose extrapolated time comes within EXTRAPOLATION_MARGIN of
    the K-th best full time (an extrapolation exceeds the full simulation by at most that margin, so no candidate
    outside can be faster). The result is the K best by the full simulation whatever K is."""
    def full(config: ParallelConfig, prediction: dict | None = None) -> tuple[float, ParallelConfig]:
        if prediction is None or prediction.get("extrapolated"):
            prediction = predict(model, cluster, config, execution=execution, detail=False)[3]
        return prediction["iteration_time_s"], config

    ranked = sorted((full(config, p) for _, _, config, p in best), key=lambda it: (it[0], ranking_key(it[1])))
    chosen = {ranking_key(config) for _, config in ranked}
    for extrapolated, key, config, prediction in sorted(near, key=lambda it: (it[0], it[1])):
        if len(ranked) >= top_k and extrapolated >= ranked[-1][0] * (1 + EXTRAPOLATION_MARGIN):
            break
        if key in chosen:
            continue
        ranked.append(full(config, prediction))
        ranked.sort(key=lambda it: (it[0], ranking_key(it[1])))
        del ranked[top_k:]
        chosen = {ranking_key(config) for _, config in ranked}
    return ranked


def ranking_key(config: ParallelConfig) -> tuple:
    """How plans of equal predicted time are ordered (the same in the search, validate and the tests)."""
    return (config.tp, config.pp, config.dp, config.vpp, config.micro_batch_size, config.schedule,
            config.zero_stage, config.recompute, config.selective_recompute or "", config.sequence_parallel, config.ep,
            config.etp, config.offload_activations, config.offload_optimizer, config.seq_chunks, config.seq_split,
            config.cp, config.cp_comm,
            config.grad_reduce != "step")  # grad_reduce last: the search finds a layout's twin by key[:-1]


# How many leading fields of `ranking_key` are family fields (`_FAMILY_FIELDS`): a family's entry in the walk carries
# this head of its members' keys.
_KEY_HEAD = 6


def framework_candidates(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
                         attention: str, fixed: dict, execution: Execution,
                         policies: tuple[str | None, ...] = (None,),
                         short_cp: bool = False) -> Iterator[ParallelConfig]:
    """`space.candidates` on `cluster`'s devices under `execution`'s own rules: the ZeRO stages it searches (those
    worth telling apart: the executor runs ZeRO-1 exactly as ZeRO-2, one of them is enough unless pinned), its
    gradient reductions, pipeline runtime and schedules, whether it splits experts with biases over expert TP, and
    its K/V exchanges and pipelines of tied embeddings (`Execution.layout_problem`); selective candidates under each
    of `policies`; with `short_cp`, context parallelism at any sequence length."""
    space = candidates(model, cluster.world_size, cluster.devices_per_domain, global_batch, seq_len, dtype, attention,
                       fixed, execution.zero_searched, policies, tp_cp_domain(cluster), execution.grad_reductions,
                       execution.pipeline_runtime, execution.schedules, execution.expert_tp_biases, short_cp)
    if not execution.restricts_layouts():
        return space
    return (config for config in space if not execution.layout_problem(config, model))


def _offload_levers(cluster: ClusterProfile, fixed: dict, execution: Execution) -> list[tuple[bool, bool]]:
    """The (offload_activations, offload_optimizer) combinations the search weighs beside a layout's own (neither):
    those --fix leaves open of the levers the framework runs (`Execution.runs_lever`), none where the cluster plans
    no offload (cost/offload.py `plans_offload`)."""
    if not plans_offload(cluster):
        return []
    activations, optimizer = ([fixed[name]] if name in fixed else [False, True] if execution.runs_lever(name)
                              else [False] for name in OFFLOADS)
    return [(a, o) for a in activations for o in optimizer if a or o]


def _bounded(config: ParallelConfig, relaxed: bool) -> ParallelConfig:
    """The config a walk entry's time bound is taken of: its twin reducing once per step (the bound does not read
    grad_reduce: reducing every micro-batch only adds to the step) and, `relaxed`, recomputing no layer yet (a
    candidate whose per-stage counts the walk fits when it reaches it)."""
    changes = {"grad_reduce": "step"} if config.grad_reduce != "step" else {}
    if relaxed:
        changes["recompute_layers"] = (0,) * config.num_stages
    return replaced(config, **changes) if changes else config


def _offload_parents(cache: BoundCache, levers: list[tuple[bool, bool]], parents: list,
                     cutoff: float, per_stage: bool = False) -> list[tuple]:
    """The walk's entries of the candidates that did not fit or fit only by recomputing layers (`parents`, in walk
    order, each with its bound, recomputing no layer where it fits by recomputing, and a call giving its memory
    entry) whose own bound is below `cutoff` (the K-th best time of the first walk): one entry per
    parent, standing for its offloading twins (each lever combination of `levers` the layout allows:
    offload_optimizer needs FSDP, and the framework's `offload_problem` none) until the walk pops it
    (`_offload_twins`). It enters with its own work on its
    busiest rank (`busy_bound`: at most each twin's, which offload_optimizer does not change and offloaded
    activations only lengthen with their copies, and below each twin's time bound) and its own key (below each
    twin's: the same fields but the offload levers, all off), so it leaves the heap before any of its twins would
    have, and the walk pops the twins in the same order as if every one had been in the heap from the start; a
    parent the walk never pops costs no memory entry and no time bound. Under `per_stage` a recompute parent is
    bounded recomputing no layer, as its twins that keep their activations are before their counts are fitted
    (`_offload_twins`)."""
    out = []
    unsharded = [(activations, optimizer) for activations, optimizer in levers if not optimizer]
    for index, record in enumerate(parents if levers else ()):
        parent_bound, key, config = record[:3]
        if parent_bound >= cutoff:
            continue
        allowed = [(activations, optimizer) for activations, optimizer in (levers if config.zero_sharded else unsharded)
                   if not cache.execution.offload_problem(replaced(config, offload_activations=activations,
                                                                   offload_optimizer=optimizer))]
        if allowed:
            refits = per_stage and config.recompute != "none"
            out.append((cache.busy_bound(config, recomputing_none=refits), key, index, (record, allowed),
                        OFFLOAD_PARENT))
    heapq.heapify(out)
    return out


def executor_refusal(model: ModelSpec, fixed: dict, dtype: str) -> Callable[[ParallelConfig], str | None]:
    """The search's reading of the executor's rules (spec/support.py `candidate_unsupported_reason`): a function
    giving why the executor refuses a candidate, but None where the first rule it breaks is what the user chose
    (`fixed`'s schedule or the dtype: a pinned dualpipe, seq1f1b of an MoE model, another framework's precision
    recipe), whose plans are costed all the same and marked not launchable. The rules of the config come before
    the model's (`layout_unsupported_reason`), so an excused choice never hides a rule the layout breaks."""
    schedule = fixed.get("schedule")
    chosen = {schedule_spec(schedule).executor_note if schedule else None,
              schedule_model_reason(schedule, model) if schedule else None,
              dtype_unsupported_reason(fixed.get("dtype", dtype))} - {None}

    def refusal(config: ParallelConfig) -> str | None:
        reason = candidate_unsupported_reason(config, model)
        return None if reason in chosen else reason

    return refusal


def _offload_twins(cache: BoundCache, refusal: Callable[[ParallelConfig], str | None] | None, entry: tuple,
                   limit: float, cutoff: float, bound_of: dict, skipped: dict[str, int],
                   per_stage: bool) -> list[tuple]:
    """The walk's entries (time bound, key, order, config, how far fitted) of a parent's offloading twins worth walking
    (`entry`: its `_offload_parents` entry): each lever combination the layout allows whose twin can move enough off
    the device (at most the activations, or the weights, gradients and optimizer states), whose host can hold what
    it moves there at least (`BoundCache.host_floor`), and whose bound is below
    `cutoff` (the K-th best time of the walk so far: nothing at or beyond it can enter the K best). A twin's work on
    its busiest rank (`busy_bound`, below its time bound) is checked first, as it is cheaper, then the parent's floor
    of what stays on the device where it has one (`BoundCache.offload_floor`); the parent's memory entry is asked
    only then; then the executor's rules (`refusal`, `executor_refusal`; None: not asked). Each twin left out is
    counted in `skipped` by why: "time", "memory" or "unlaunchable". Under
    `per_stage` a twin that recomputes and keeps its activations on the device enters UNFITTED, bounded as
    recomputing no layer, so the walk fits its fewest recomputed layers as it does its parent's (the parent did not
    fit, or fit only by recomputing layers the twin may not need); one that offloads activations keeps every layer
    recomputed (its copies shrink with recompute, so no count's bound is below the others')."""
    parent_busy, _, index, ((_, _, config, parent_memory, floor), allowed), _ = entry
    out = []
    memory = None
    busy = {False: parent_busy}  # the twins' busy bound by offload_activations (it does not read offload_optimizer)
    for activations, optimizer in allowed:
        if activations not in busy:
            busy[activations] = cache.busy_bound(replaced(config, offload_activations=activations))
        if busy[activations] >= cutoff:
            skipped["time"] += 1
            continue
        twin = replaced(config, offload_activations=activations, offload_optimizer=optimizer)
        if memory is None:
            if floor is not None and floor(activations, optimizer) > limit:
                skipped["memory"] += 1
                continue  # what stays is at least the floor
            memory = parent_memory()
        movable = (memory["activations"] if activations else 0.0) + (
            memory["params"] + memory["grads"] + memory["optimizer"] if optimizer else 0.0)
        if memory["total"] - movable > limit or cache.host_floor(twin) > cache.cluster.host["memory_bytes"]:
            skipped["memory"] += 1
            continue
        if refusal is not None and refusal(twin):
            skipped["unlaunchable"] += 1
            continue
        refit = per_stage and twin.recompute != "none" and not activations
        if refit:
            twin = replaced(twin, recompute_layers=None)
        once = _bounded(twin, refit)
        if once not in bound_of:
            bound_of[once] = cache.time_bound(once)
        if bound_of[once] < cutoff:
            out.append((bound_of[once], ranking_key(twin), index, twin, UNFITTED if refit else FITTED))
        else:
            skipped["time"] += 1
    return out


def _candidates_of(entry: tuple) -> int:
    """How many candidates a walk entry stands for: a family its members, an offload parent the twins its levers
    allow (`_offload_parents`), any other one."""
    if entry[4] == FAMILY:
        return len(entry[3])
    if entry[4] == OFFLOAD_PARENT:
        return len(entry[3][1])
    return 1


def _negated(key: tuple) -> tuple:
    """Reverses tuple order for the max-heap so that ties keep the smallest key."""
    return tuple(-x if isinstance(x, (int, float)) else tuple(-ord(ch) for ch in x) for x in key)


def _refine(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, execution: Execution,
            partition_time_s: float, placement_time_s: float, default_time: float, per_stage: bool = False) -> Plan:
    """The detailed estimate of `config` with the CP-SAT placement and partition, each kept only where the (fast)
    estimate predicts it faster than the default and the plan still fits. `default_time` is the fast estimate of the
    default layout (the search's full simulation of a fitting config). With `per_stage`, each partition tried
    recomputes the fewest layers per stage that fit it (`fewest_recomputed`), and the chosen one's recomputed layers
    then move between a rank's stages where that shortens the step (`rebalanced`, on pipelines of at most
    POLISH_MAX_STAGES virtual stages)."""
    from autoconf.solve.refine import POLISH_MAX_STAGES, refined_mesh, refined_partition_by_estimate

    def fast(partition=None, mesh=None) -> float:
        p = predict(model, cluster, config, partition=partition, mesh=mesh, execution=execution, detail=False)[3]
        return p["iteration_time_s"] if p["fits"] else float("inf")

    best_time, best_mesh, best_partition = default_time, None, None
    mesh = refined_mesh(model, cluster, config, execution, time_limit_s=placement_time_s)
    launchable = mesh is not None and node_blocks(mesh.flatten().tolist(), cluster.gpus_per_node) is not None
    if launchable and not np.array_equal(mesh, default_mesh(config)):
        t = fast(mesh=mesh)
        if t < best_time:
            best_time, best_mesh = t, mesh
    # With several stages per rank CP-SAT rarely improves on its greedy hint after the first fraction of a second.
    limit = partition_time_s if config.vpp == 1 else min(partition_time_s, 0.3)
    every = dataclasses.replace(config, recompute_layers=None) if per_stage else config
    best_partition, best_time = refined_partition_by_estimate(model, cluster, every, execution, best_mesh,
                                                              best_time, time_limit_s=limit, per_stage=per_stage)
    if per_stage and best_partition is not None:
        config = fewest_recomputed(model, cluster, every, best_partition, execution)
    if per_stage and config.num_stages <= POLISH_MAX_STAGES:  # (as the partition's polish, the same sweeps)
        config = rebalanced(model, cluster, config, best_partition or default_partition(model, config), best_mesh,
                            execution)
    return estimate(model, cluster, config, partition=best_partition, mesh=best_mesh, execution=execution)


# How often a search says how far it has gone, where its caller asks (`search`'s `progress`).
PROGRESS_EVERY_S = 10.0

_DEVICE_DEGREES = ("tp", "pp", "dp", "cp", "ep", "etp")  # each a divisor of the devices (ep x etp of a pipeline rank's)


def no_candidate_message(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int,
                         fixed: dict, dtype: str = "bf16", attention: str = "flash",
                         execution: Execution = Execution()) -> str:
    """Why no layout honours `fixed`: a pinned degree that cannot divide the devices, named with the degrees that
    can (cp: those that also split the sequence); a pinned cp that cannot split the sequence (`cp_split_problem`);
    a pin that no layout honouring the others can take (`_conflicting_pin`); else the pins and the global batch to
    change."""
    world = cluster.world_size
    pinned = {k: v for k, v in normalise_fixed(fixed).items() if k in _DEVICE_DEGREES and isinstance(v, int)}

    def usable(name: str, rest: int = 1) -> str:
        """The values of degree `name` whose product with `rest` divides the devices (cp: that split the sequence)."""
        return ", ".join(str(d) for d in range(1, world + 1)
                         if world % (rest * d) == 0 and (name != "cp" or not cp_split_problem(seq_len, d)))

    for name, value in pinned.items():
        if world % value:
            return f"--fix {name}={value}: {name} must divide the {world} devices (use {name} in {usable(name)})"
    product = math.prod(pinned.get(k, 1) for k in ("tp", "pp", "dp", "cp"))
    if world % product:
        named = [k for k in ("tp", "pp", "dp", "cp") if k in pinned]
        pins = " ".join(f"{k}={pinned[k]}" for k in named)
        last = named[-1]  # (what the others leave it: its values whose product with theirs divides the devices)
        values = usable(last, product // pinned[last])
        others = " ".join(f"{k}={pinned[k]}" for k in named[:-1])
        hint = f" (with {others}, use {last} in {values})" if values else ""
        return f"--fix {pins}: tp x pp x dp x cp = {product} must divide the {world} devices{hint}"
    split = cp_split_problem(seq_len, pinned.get("cp", 1), world)
    if split:
        return f"--fix cp={pinned['cp']}: {split}"
    conflict = _conflicting_pin(model, cluster, global_batch, seq_len, normalise_fixed(fixed), dtype, attention,
                                execution)
    if conflict:
        return conflict
    hints = []
    pins = " ".join(pin_text(k, v) for k, v in fixed.items())
    if fixed:
        hints.append(f"drop or change --fix {pins}")
    micro_batch = normalise_fixed(fixed).get("micro_batch_size")
    step = pinned.get("dp", 1) * (micro_batch if isinstance(micro_batch, int) else 1)
    what = " x ".join(name for name, given in (("micro_batch_size", isinstance(micro_batch, int)),
                                               ("dp", "dp" in pinned)) if given)
    if what and global_batch % step:
        hints.append(f"use a global batch divisible by {what} = {step}")
    else:
        hints.append(f"use a global batch divisible by micro_batch_size x dp of a layout the {cluster.world_size} "
                     f"devices allow")
    return (f"no legal layout of {model.name} on {cluster.world_size} devices with global batch {global_batch}"
            + (f" and --fix {pins}" if fixed else "") + "; " + "; or ".join(hints))


def layout_problem(model: ModelSpec, world: int, execution: Execution, layout: ParallelConfig) -> str | None:
    """The first rule `layout` breaks on `world` devices: the config's, the executor's (planning for it) or the
    framework's; None when it breaks none."""
    executor = unsupported_reason(layout, model) if execution.is_executor else None
    return (layout.problems(model, world) or [executor or execution.problem(layout, model)])[0]


def first_legal_layout(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, dtype: str,
                       attention: str, fixed: dict, execution: Execution) -> tuple[ParallelConfig | None, str | None]:
    """(the first layout of the search's space honouring `fixed` that breaks no rule (`layout_problem`), None), or
    where none of the first WITNESS_SCAN does (a few thousand are enough to find one), (None, the first rule
    broken, None if the space was empty). Raises UserError where the space refuses `fixed` itself."""
    world, first_problem = cluster.world_size, None
    for layout in itertools.islice(framework_candidates(model, cluster, global_batch, seq_len, dtype, attention,
                                                        fixed, execution), WITNESS_SCAN):
        problem = layout_problem(model, world, execution, layout)
        if problem is None:
            return layout, None
        first_problem = first_problem or problem
    return None, first_problem


def _conflicting_pin(model: ModelSpec, cluster: ClusterProfile, global_batch: int, seq_len: int, fixed: dict,
                     dtype: str, attention: str, execution: Execution) -> str | None:
    """The first pin that no layout honouring the other pins can take, with the rule it breaks: the first such
    layout with the pin put back, and what `ParallelConfig.problems` (or the executor, or the framework) says of
    it. None when every pin alone is to blame for nothing (then the batch or several pins together are)."""
    if not fixed:
        return None
    world = cluster.world_size

    def against(layout: ParallelConfig) -> str | None:
        return layout_problem(model, world, execution, layout)

    for key, value in fixed.items():
        rest = {k: v for k, v in fixed.items() if k != key}
        try:
            # a layout honouring the other pins that has nothing against it itself, so that what goes wrong with
            # the pin put back is the pin's doing
            witness = first_legal_layout(model, cluster, global_batch, seq_len, dtype, attention, rest, execution)[0]
        except UserError:
            continue
        if witness is None:
            continue
        others = " ".join(pin_text(k, v) for k, v in rest.items())
        changes = {key: value}
        if key in ("tp", "pp", "cp") and "dp" not in fixed:  # the data-parallel degree fills the devices again
            rest_degrees = math.prod(value if k == key else getattr(witness, k) for k in ("tp", "pp", "cp"))
            if world % rest_degrees:
                continue
            changes["dp"] = world // rest_degrees
        if key == "dp" and "pp" not in fixed:  # the pipeline fills the devices again
            rest_degrees = value * witness.tp * witness.cp
            if world % rest_degrees:
                continue
            changes["pp"] = world // rest_degrees
            if changes["pp"] == 1 and "schedule" not in fixed and "vpp" not in fixed:  # (one stage, one chunk)
                changes.update(vpp=1, schedule="1f1b")
        if key == "cp_comm" and "cp" not in fixed and witness.cp == 1:  # (read only under context parallelism)
            if "dp" in fixed or world % (witness.tp * witness.pp * 2):
                continue
            changes.update(cp=2, dp=world // (witness.tp * witness.pp * 2))
        if key == "schedule" and "vpp" not in fixed and value in SCHEDULES:  # the chunks per rank it runs with
            changes["vpp"] = schedule_spec(value).chunks[0]
        try:
            probe = dataclasses.replace(witness, **changes)
        except (TypeError, ValueError):
            if not rest:
                return None
            return (f"--fix {pin_text(key, value)} cannot be taken together with --fix {others}; drop or change one "
                    f"of them")
        why = against(probe)
        if not why and probe.pp == 1 and not schedule_spec(probe.schedule).single_chunk:  # (`space`'s rule)
            single = ", ".join(n for n in SCHEDULES if schedule_spec(n).single_chunk)
            why = (f"{probe.schedule} runs chunks over a pipeline; with pp 1 (plain gradient accumulation) only a "
                   f"one-chunk schedule goes ({single}), or pin pp >= 2")
        if why and probe.global_batch_size % (probe.micro_batch_size * probe.dp) and len(
                probe.problems(model, world)) == 1:
            return None  # the batch alone is to blame: the caller's line says so
        if why and key in ("ep", "etp") and probe.ranks_per_stage % (probe.ep * probe.etp):
            # (the expert degrees need room that only the attention layout's degrees make)
            why = (f"{why}; a pipeline rank's ranks are tp x cp x dp (here {probe.tp} x {probe.cp} x {probe.dp}, "
                   f"{probe.label()}): pin tp, cp or dp so that their product is a multiple of ep x etp (the search "
                   f"takes cp > 1 only from {CP_MIN_SEQ_LEN} tokens unless pinned)")
        if not rest:  # a pin alone: the rule it breaks on a layout that is legal without it
            return f"--fix {pin_text(key, value)}: {why}" if why else None
        return (f"--fix {pin_text(key, value)} cannot be taken together with --fix {others}"
                + (f": {why}" if why else "; drop or change one of them"))
    return None


def explain_infeasible(model: ModelSpec, cluster: ClusterProfile, result: SearchResult, global_batch: int,
                       seq_len: int, dtype: str, attention: str, fixed: dict,
                       execution: Execution = Execution()) -> str:
    """One line: the closest candidate's shortfall, and the smallest change that makes some layout fit."""
    fixed = normalise_fixed(fixed)
    if result.closest is None:  # (no candidate was weighed at all)
        pins = " ".join(f"--fix {pin_text(k, v)}" for k, v in fixed.items())
        return (f"no legal layout of {model.name} on {cluster.world_size} devices honours {pins or 'the request'}; "
                f"drop or change a pin")
    over, config = result.closest
    memory = predict(model, cluster, config, execution=execution, detail=False)[3]["memory_per_stage"]
    rank = max(range(len(memory)), key=lambda r: memory[r]["total"])
    over = memory[rank]["total"] - cluster.usable_memory_bytes
    need, limit, over = gib_figures(memory[rank]["total"], cluster.usable_memory_bytes, over)
    message = (f"no layout fits in {cluster.memory_limit_phrase(limit)}: the closest "
               f"({config.label(selective_policy(config, execution))}) needs {need} GiB on pipeline rank {rank}, "
               f"{over} GiB over")
    found = smallest_fitting_change(model, cluster, config, execution, allowed=lambda changes: not any(
        k in fixed and fixed[k] != v for k, v in changes.items() if v is not None))
    if found:  # (the levers of `estimate`'s advice, named as --fix keys)
        return message + "; it fits with " + " and ".join(f"{k}={v}" for k, v in found[1].items() if v is not None)
    refusal = executor_refusal(model, fixed, dtype) if execution.is_executor else None
    for factor in (2, 4, 8, 16, 32, 64):
        bigger = cluster.resized(nodes=cluster.nodes * factor)
        cache = BoundCache(model, bigger, execution)
        levers = _offload_levers(bigger, fixed, execution)
        short_cp = _splits_short_sequences(bigger, seq_len, attention, fixed)  # (as `search` weighs them)
        for config in framework_candidates(model, bigger, global_batch, seq_len, dtype, attention, fixed, execution,
                                           short_cp=short_cp):
            found = _fitting_twin(model, bigger, config, execution, cache, levers, fixed, refusal)
            if found is not None:
                layout = found.label(selective_policy(found, execution))
                return message + (f"; the smallest change that fits: {bigger.nodes} nodes "
                                  f"({bigger.world_size} devices), e.g. {layout}")
    unpinned = smallest_fitting_change(model, cluster, result.closest[1], execution) if fixed else None
    changes = {k: v for k, v in unpinned[1].items() if v is not None} if unpinned else {}
    overridden = " ".join(f"--fix {pin_text(k, fixed[k])}" for k in changes if k in fixed)
    if overridden:  # (what the pins rule out, on these devices)
        return (message + "; it fits with " + " and ".join(f"{k}={v}" for k, v in changes.items())
                + f", which {overridden} rules out: drop or change that pin")
    tried = ["more devices up to 64x", *(["full recompute"] if "recompute" not in fixed else []),
             *(["ZeRO-3"] if "zero_stage" not in fixed and 3 in execution.zero_stages else []),
             *(["offload"] if _offload_levers(cluster, fixed, execution) else [])]
    pins = " ".join(f"--fix {pin_text(k, v)}" for k, v in fixed.items())
    return (message + f"; nothing tried fits ({', '.join(tried)}" + (f", each with {pins}" if pins else "")
            + "): use a bigger device" + (" or drop a pin" if pins else "")
            + headroom_advice(cluster, memory[rank]["total"]))


def _fitting_twin(model: ModelSpec, cluster: ClusterProfile, config: ParallelConfig, execution: Execution,
                  cache: BoundCache, levers: list[tuple[bool, bool]], fixed: dict,
                  refusal: Callable[[ParallelConfig], str | None] | None = None) -> ParallelConfig | None:
    """`config`, or else the first of its offloading twins under `levers`, that honours the offload pins of `fixed`,
    that the framework (and, where `refusal` is given, the executor: `executor_refusal`) runs and that is predicted
    to fit `cluster`, as the search would weigh it (its memory bounds first); None if none does. The bounds that
    need no `stage_memory` call are asked before the layout's rules, those that do after them (a twin breaking a
    rule is never returned, so the order changes only the cost)."""
    usable = cluster.usable_memory_bytes
    host_memory = cluster.host["memory_bytes"] if levers else None  # (levers only where the host is known)
    pinned = (fixed.get("offload_activations"), fixed.get("offload_optimizer"))
    for activations, optimizer in [(False, False), *levers]:
        if any(pin is not None and pin != value for pin, value in zip(pinned, (activations, optimizer))):
            continue
        twin = replaced(config, offload_activations=activations, offload_optimizer=optimizer)
        if twin.offloads:
            if cache.offload_floor(config, activations, optimizer) > usable or cache.host_floor(twin) > host_memory:
                continue
        elif cache.state_bound(config) > usable:
            continue
        if (twin.problems(model, cluster.world_size)
                or (refusal is not None and refusal(twin))
                or execution.problem(twin, model)):
            continue
        if twin.offloads:
            if cache.beyond_host(twin) or cache.layout_peak(twin) > usable or cache.beyond_host(twin, every_rank=True):
                continue
        elif cache.memory_bound(config) > usable or cache.layout_peak(config) > usable:
            continue
        if predict(model, cluster, twin, execution=execution, detail=False)[3]["fits"]:
            return twin
    return None
