"""A saved plan's prediction as its fields give it now: the plan as written, or, where the file was changed after
autoconf wrote it (`Plan.edited`: a config field edited by hand, say) or carries no checksum (`Plan.unchecked`),
estimated again on the cluster it was planned on, so that `show` prints and `launch` checks what that layout needs,
not what another one needed."""

from __future__ import annotations

from pathlib import Path

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.files import gib_figures
from autoconf.solve.sweep import training
from autoconf.spec.frameworks import plan_execution
from autoconf.spec.plan import Plan


def plan_cluster(plan: Plan, cluster=None, purpose: str = "redraw the timeline",
                 remedy: str = "pass the cluster profile it was planned on (--cluster FILE)"):
    """The cluster profile to re-simulate `plan` on: `cluster` if given, else the profile file the plan recorded
    (when it is still there and still has the plan's cluster name), else the bundled profile or path it names; with
    what the command line set in place of the profile's values when it was planned (the memory headroom, the
    collective SM share: the plan's `cluster` object records them). `purpose` says in a refusal what the profile
    was needed for and `remedy` what would work."""
    return _profile(plan, cluster, purpose, remedy).with_overrides(plan.cluster)


def _profile(plan: Plan, cluster, purpose: str, remedy: str):
    """`plan_cluster`'s profile, as written."""
    if cluster is not None:
        return cluster
    from autoconf.spec.cluster import load_cluster

    name, recorded = plan.cluster.get("name"), plan.cluster.get("profile")
    if not isinstance(name, str) or not name:
        raise UserError(f"cannot {purpose}: the plan's cluster object names no profile (cluster.name missing or not "
                        f"a name: {name!r}); {remedy}")
    shape = int(plan.cluster.get("nodes", 1)), int(plan.cluster.get("gpus_per_node", 1))
    if recorded and Path(recorded).is_file():
        try:
            found = load_cluster(recorded, *shape)
        except UserError:
            found = None
        if found is not None and found.name == name:
            return found
    try:
        found = load_cluster(str(name), *shape)
    except UserError as err:
        why = f"{recorded}, where it was planned, is gone or holds another profile" if recorded else str(err)
        raise UserError(f"cannot {purpose}: the plan's cluster {name!r} is not available ({why}); {remedy}") from None
    device = plan.cluster.get("device")
    if device is not None and device != found.device.name:
        raise UserError(f"cannot {purpose}: the plan was made on {device} devices but the profile "
                        f"{name!r} describes {found.device.name}; {remedy}")
    return found


def current(plan: Plan, cluster=None, source: str = "the plan",
            remedy: str = "pass the cluster profile it was planned on (--cluster FILE)") -> tuple[Plan, str | None]:
    """(`plan`, None) for a plan as autoconf wrote it; for an edited one, or one without a checksum
    (`Plan.unchecked`), the plan with its prediction and timeline estimated again on its cluster (`plan_cluster`; its
    framework and flags as recorded) and a note line saying so, with the stored and the new step time and peak
    memory. Where the cluster is not available: a UserError naming `remedy` for an edited plan; for one without a
    checksum, the plan as stored and a note saying it could not be checked (a plan written by an older autoconf
    planned on another machine still launches). A plan made with --tokens has its time, GPU-hours and cost to train
    made again at the new throughput, for the tokens and the price it states. A plan as written whose profile has
    changed since (its recorded `profile_sha256` is not that of the profile found now: another autoconf's bundled
    profile, a profile file measured or edited again) is estimated again on today's profile, with a note saying so;
    where no profile is found, or the plan recorded none, its stored prediction stands."""
    if plan.as_written:
        recorded = plan.cluster.get("profile_sha256")
        try:
            on = plan_cluster(plan, cluster) if recorded else None
        except UserError:
            on = None
        if on is None or on.content_sha256 in (None, recorded):
            return plan, None
        why = (f"was made on another version of the profile {plan.cluster.get('name')!r} (its profile_sha256 "
               f"differs from the profile's now)")
    else:
        why = ("is not as autoconf wrote it (its content_sha256 differs)" if plan.edited else
               "carries no checksum of what autoconf wrote (written before 2026-12-06, or edited)")
        try:
            on = plan_cluster(plan, cluster, f"estimate {source} again" + (f" (it {why})" if plan.edited else ""),
                              remedy)
        except UserError as err:
            if plan.edited:
                raise
            return plan, f"{source} {why}; its stored prediction is used unchecked ({err})"
    fresh = estimate(plan.model, on, plan.config, partition=plan.partition,
                     mesh=plan.placement["mesh"], execution=plan_execution(plan.prediction))
    old, new = plan.prediction, fresh.prediction
    fits = "" if new["fits"] else " (does not fit)"
    if isinstance(old.get("iteration_time_s"), (int, float)) and isinstance(old.get("peak_memory_bytes"), (int, float)):
        figures = gib_figures(old["peak_memory_bytes"], new["peak_memory_bytes"])
        note = (f"{source} {why}; its prediction is estimated again: {_step(old)} s -> {_step(new)} s per step, "
                f"{figures[0]} -> {figures[1]} GiB peak{fits}")
    else:
        note = (f"{source} {why} and holds no prediction; it is estimated now: {_step(new)} s per step, "
                f"{gib_figures(new['peak_memory_bytes'])[0]} GiB peak{fits}")
    stored = old.get("training")
    if isinstance(stored, dict) and isinstance(stored.get("tokens"), int) and new.get("tokens_per_s"):
        # (time, GPU-hours and cost to train, made again at the new throughput for the tokens and price it states)
        price = stored.get("usd_per_gpu_hour")
        new["training"] = training(new, stored["tokens"], plan.config.world_size,
                                   float(price) if isinstance(price, (int, float)) else None,
                                   stored.get("price_source"))
    estimated_on = {**plan.cluster, **({"profile_sha256": on.content_sha256} if on.content_sha256 else {})}
    updated = Plan(model=plan.model, cluster=estimated_on, config=plan.config, partition=plan.partition,
                   placement=plan.placement, prediction=new, sequence_split=plan.sequence_split,
                   timeline=fresh.timeline)
    return updated, note


def _step(prediction: dict) -> str:
    seconds = prediction.get("iteration_time_s")
    return f"{seconds:.4g}" if isinstance(seconds, (int, float)) else "?"
