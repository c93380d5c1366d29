"""`autoconf launch`: validates a plan and the run's paths, then starts `autoconf.execute.train` under torchrun.

Single node: the c10d rendezvous on 127.0.0.1 at --master-port, or a free local port (a --master-addr is not used,
and a note says so).
Several nodes: torchrun's static rendezvous (`--master-addr A --master-port P`). Global rank i runs grid position i
of the plan ([pp][dp][tp] order); physical node R (`--node-rank R` as the user numbers the nodes) is started with
the torchrun node rank of the block of grid positions that the plan's placement puts on it, and each rank picks the
local GPU the placement names (spec/plan.py `node_blocks`).
`--max-restarts` is handed to torchrun; with a checkpoint directory a restarted run resumes from the newest
complete checkpoint. A diverged run is not restarted (autoconf.execute.elastic).

No hang: every collective and point-to-point operation times out after `timeout_s` (a dead or hung peer, a lost
node), and the rendezvous after `rendezvous_timeout_s` (a node that never joins); the worker then exits with one line
saying so, and torchrun (wrapped by autoconf.execute.elastic) ends with a short summary instead of a traceback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoconf.errors import SUPERVISED_ENV, UserError
from autoconf.execute.hyperparameters import hyperparameter_args, schedule_problem
from autoconf.files import check_new, gib_figures, shown
from autoconf.spec.support import plan_unsupported_reason
from autoconf.spec.plan import load_plan, node_blocks

# The folder holding this autoconf package (the checkout, or site-packages for an installed wheel).
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def worker_environment() -> dict:
    """This process's environment for torchrun and its workers: the folder holding this autoconf first on
    PYTHONPATH (so the workers import the same autoconf as the launcher), and one OpenMP thread per rank unless set
    (torchrun's own default with several ranks; the profiler times CPU ranks with one thread)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_master_addr(addr: str) -> str:
    """`addr` if it is an IP address or a host name (dot-separated labels of letters, digits, `-` and `_`, none
    starting or ending with `-`, at most 253 characters); else one UserError line."""
    try:
        ipaddress.ip_address(addr)
        return addr
    except ValueError:
        pass
    if 0 < len(addr) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in addr.removesuffix(".").split(".")):
        return addr
    raise UserError(f"--master-addr {shown(addr)!r} is not a host name or an IP address; give the address of the "
                    f"node that starts as rank 0, e.g. node0 or 10.0.0.1")


MULTI_NODE_PORT = 29500  # torchrun's own default: every node of a multi-node run must be given the same port
LOOPBACK = ("127.0.0.1", "localhost")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether `port` can be listened on at 127.0.0.1 on this machine now (where a one-node run meets)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def busy_port_problem(port: int) -> str | None:
    """The line refusing a one-node run's --master-port that a process on this machine already holds; None when the
    port is free (profile and launch both meet on 127.0.0.1 on one node)."""
    if port_free(port):
        return None
    return (f"--master-port {port} is already in use on this machine; pass another (e.g. --master-port "
            f"{port % 65535 + 1}) or leave it out for a free one")


def _check_writable_dir(path: Path, what: str, create: bool = True) -> None:
    """Refuses a folder that cannot be written; makes it (and its parents) when `create`, else only checks that the
    nearest existing one is a writable folder (by making and removing an unnamed file in it: `os.access` says yes to
    root even where nothing can be made, /proc), so a dry run leaves the disk as it was."""
    if not create:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"cannot create {what} {path}: {existing} is not a folder")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            why = f"no file can be made in {existing} ({err.strerror or err})"
            raise UserError(f"{what} {path} is not writable: {why}" if existing == path
                            else f"cannot create {what} {path}: {why}") from None
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {what} {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable")


def _timeout(value: float | None, env: str, default: float, flag: str) -> float:
    if value is None:
        raw = os.environ.get(env)
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise UserError(f"{env}={raw!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{flag} must be a positive number of seconds (got {value})")
    return float(value)


def check_fits(plan, allow_unfit: bool = False) -> None:
    """A plan predicted not to fit in device memory is refused (it would run out of memory after start-up), unless
    `allow_unfit`."""
    p = plan.prediction
    if p.get("fits", True) or allow_unfit:
        return
    stages = p.get("memory_per_stage") or []
    worst = max(range(len(stages)), key=lambda r: stages[r]["total"]) if stages else None
    where = f" on pipeline rank {worst}" if worst is not None else ""
    need, limit = gib_figures(p.get("peak_memory_bytes", 0), p.get("memory_limit_bytes", 0))
    raise UserError(f"the plan does not fit: it needs {need} GiB{where} of {limit} GiB per device (prediction.fits "
                    f"is false); re-plan with `autoconf plan`, or pass --allow-unfit to launch it anyway")


def plan_wants_gpus(plan) -> bool:
    """True when the plan was made for GPUs: its cluster talks NCCL (CPU profiles are gloo; a plan that names no
    backend is not taken for either)."""
    return plan.cluster.get("backend") == "nccl"


def _check_devices(plan, nproc_per_node: int, allow_cpu: bool = False) -> None:
    """A GPU plan needs a GPU per process on this node. On a host without CUDA it is refused unless `allow_cpu`
    (then it runs on CPU ranks with gloo, in fp32, and says so: times and memory will not be the plan's)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available() and plan_wants_gpus(plan):
        name = plan.cluster.get("name", "a GPU cluster")
        if not allow_cpu:
            raise UserError(f"the plan is for GPUs ({name}) but this host has no CUDA device; run it on the GPU "
                            f"nodes, or pass --allow-cpu to rehearse the layout on CPU ranks (gloo, fp32)")
        dtype = "fp8 GEMMs emulated by torchao" if plan.config.dtype == "fp8" else "fp32"
        print(f"autoconf: note: running a plan for {name} on this host's CPU ({nproc_per_node} ranks, gloo, {dtype}): "
              f"step times and memory will not match the plan's prediction", file=sys.stderr, flush=True)
        return
    if torch.cuda.is_available() and torch.cuda.device_count() < nproc_per_node:
        raise UserError(f"the plan runs {nproc_per_node} processes per node but this node has "
                        f"{torch.cuda.device_count()} GPU(s); launch it with --nnodes "
                        f"{plan.config.world_size // max(1, torch.cuda.device_count())} or re-plan for this cluster")


def _check_host_memory(plan, nproc_per_node: int, allow_unfit: bool) -> None:
    """A run on this host's CPU ranks whose predicted peak exceeds the host's available memory is refused before
    it starts (it would swap or be killed), or with `allow_unfit` launched with a note saying so (`host_memory`)."""
    from autoconf.execute.host_memory import available_memory_bytes, host_memory_problem

    try:
        import torch

        on_cpu = not torch.cuda.is_available()
    except ImportError:
        return
    if not on_cpu:  # (on a CUDA host every plan, a CPU one too, trains on the GPUs)
        return
    problem = host_memory_problem(plan, nproc_per_node, available_memory_bytes(), allowed=allow_unfit)
    if problem and allow_unfit:
        print(f"autoconf: note: {problem}", file=sys.stderr, flush=True)
    elif problem:
        raise UserError(problem)


def _latest_checkpoint(checkpoint_dir: str | None) -> tuple[Path, dict] | None:
    """The complete checkpoint a run with `checkpoint_dir` resumes from (`checkpoint.find_latest`), or None."""
    from autoconf.execute.checkpoint import find_latest

    return None if checkpoint_dir is None else find_latest(Path(checkpoint_dir).resolve(), log=lambda m: None)


def metrics_continuation_problem(path: Path, meta: dict) -> str | None:
    """Why the metrics file at `path` is not this run's to continue from the checkpoint described by `meta`: a line
    that is not a step or summary record (a cut-short last line excepted), a step up to the checkpoint's missing,
    or the checkpoint's step with another loss than the checkpoint recorded (another run's file); None when it is
    (or when there is no file)."""
    if not path.is_file():
        return None if not path.exists() else "it is not a file"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return f"it cannot be read ({getattr(err, 'strerror', None) or err})"
    records: dict[int, dict] = {}
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not ("summary" in record or isinstance(record.get("step"), int)):
            if i == len(lines) - 1 and record is None:
                continue  # a line cut short when the run stopped
            return f"line {i + 1} is not a metrics record, so it is not a metrics file of this run"
        if isinstance(record.get("step"), int):
            records.setdefault(record["step"], record)
    through = int(meta.get("data_position", 0))
    missing = [s for s in range(1, through + 1) if s not in records]
    if missing:
        return (f"it lacks step {missing[0]} of the {through} the checkpoint resumes after, so it is not this run's "
                f"file")
    if through and meta.get("loss") is not None and records[through].get("loss") != meta["loss"]:
        return (f"its step {through} has loss {records[through].get('loss')} where the checkpoint recorded "
                f"{meta['loss']}: it is another run's file")
    return None


def _check_checkpoint(latest: tuple[Path, dict] | None, steps: int, model) -> None:
    """Refuses, before any rank starts, a run whose checkpoint to resume from (`latest`) holds another model
    (`checkpoint.model_mismatch`, which every rank would refuse in turn) or is already at or past `steps` (it would
    train nothing): one line each."""
    from autoconf.execute.checkpoint import model_mismatch

    if latest is None:
        return
    mismatch = model_mismatch(*latest, model)
    if mismatch:
        raise UserError(mismatch)
    if latest[1].get("step", 0) >= steps:
        raise UserError(f"the newest checkpoint in {latest[0].parent} is at step {latest[1]['step']}, at or past "
                        f"--steps {steps}: nothing to train; pass --steps above {latest[1]['step']} to go on, or another "
                        f"--checkpoint-dir to start over")


def build_commands(plan_path: str | Path, steps: int, seed: int = 0, data: str | None = None,
                   metrics: str | None = None, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
                   max_restarts: int = 0, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                   master_port: int | None = None, nproc_per_node: int | None = None,
                   force: bool = False, timeout_s: float | None = None,
                   rendezvous_timeout_s: float | None = None, create_dirs: bool = True,
                   hyperparameters: dict | None = None) -> list[list[str]]:
    """Validates everything `launch` validates and returns the torchrun command of every node (index = node
    rank). Raises UserError naming what is wrong and what would work. Without `create_dirs` (a dry run) the
    metrics and checkpoint folders are checked but not made. One node meets on 127.0.0.1 at `master_port`, or a free
    port when it is None; several nodes at `master_addr`:`master_port` (default MULTI_NODE_PORT).
    `hyperparameters`: field -> value of execute/hyperparameters.py's table (None or absent: the worker's default)."""
    plan_path = Path(plan_path).resolve()
    plan = load_plan(plan_path)
    reason = plan_unsupported_reason(plan)
    if reason:
        raise UserError(f"the executor cannot run this plan: {reason}")
    if plan.model.context_problem(plan.config.seq_len):  # (plan and estimate refuse it; a hand-edited plan may not)
        raise UserError(f"{plan_path}: {plan.model.context_problem(plan.config.seq_len)}")
    world = plan.config.world_size
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    if checkpoint_every < 0 or max_restarts < 0:
        raise UserError("--checkpoint-every and --max-restarts must be >= 0")
    if nnodes < 1:
        raise UserError(f"--nnodes must be at least 1 (got {nnodes})")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank {node_rank} must be in 0..{nnodes - 1} for --nnodes {nnodes}")
    if master_port is not None and not 1 <= master_port <= 65535:
        raise UserError(f"--master-port must be a TCP port in 1..65535 (got {master_port})")
    if nproc_per_node is None:
        if world % nnodes:
            raise UserError(f"the plan needs {world} processes, which {nnodes} nodes cannot split evenly; "
                            f"use --nnodes in {[d for d in range(1, world + 1) if world % d == 0]}")
        nproc_per_node = world // nnodes
    if nnodes * nproc_per_node != world:
        raise UserError(f"the plan needs {world} processes ({plan.config.dims.product()}) but {nnodes} nodes x "
                        f"{nproc_per_node} processes = {nnodes * nproc_per_node}; use --nproc-per-node {world // nnodes if world % nnodes == 0 else '?'}"
                        f" or a plan for {nnodes * nproc_per_node} devices")
    devices = plan.device_of()
    planned_gpus = int(plan.cluster.get("gpus_per_node", nproc_per_node))
    if devices != sorted(devices) and planned_gpus != nproc_per_node:
        raise UserError(f"the plan's placement is for nodes of {planned_gpus} devices but {nproc_per_node} processes "
                        f"per node were asked for; launch it with --nproc-per-node {planned_gpus} or re-plan")
    timeout_s = _timeout(timeout_s, "AUTOCONF_COLLECTIVE_TIMEOUT", 600.0, "--collective-timeout")
    rendezvous_timeout_s = _timeout(rendezvous_timeout_s, "AUTOCONF_RENDEZVOUS_TIMEOUT", 600.0,
                                    "--rendezvous-timeout")
    train_args = ["--plan", str(plan_path), "--steps", str(steps), "--seed", str(seed), "--timeout", f"{timeout_s:g}"]
    try:
        train_args += hyperparameter_args(hyperparameters or {})
    except ValueError as err:
        raise UserError(str(err)) from None
    problem = schedule_problem(steps, (hyperparameters or {}).get("warmup_steps"))
    if problem:
        raise UserError(problem)
    if data is not None:
        data_path = Path(data).resolve()
        from autoconf.execute.data import check_data_file

        check_data_file(data_path, plan.model.vocab_size, plan.config.seq_len)
        train_args += ["--data", str(data_path)]
    if checkpoint_dir is not None and not str(checkpoint_dir).strip():
        raise UserError("--checkpoint-dir is empty; give the folder the checkpoints go to")
    if metrics is not None and checkpoint_dir is not None:
        folder, metrics_at = Path(os.path.abspath(checkpoint_dir)), Path(os.path.abspath(metrics))
        if metrics_at == folder or folder in metrics_at.parents:
            raise UserError(f"--metrics {metrics} is or lies in --checkpoint-dir {checkpoint_dir}, whose folders the "
                            f"run makes and replaces; put the metrics file outside it")
    latest = _latest_checkpoint(checkpoint_dir)
    if metrics is not None:
        metrics_path = Path(os.path.abspath(metrics))  # not resolved: a link at the path itself is refused
        from autoconf.execute.data import sidecar_of

        inputs = (("plan", plan_path), ("data file", data),
                  ("data file's dtype sidecar", sidecar_of(Path(data)) if data is not None else None))
        for what, other in inputs:
            if other is not None and metrics_path.exists() and Path(other).exists() and metrics_path.samefile(other):
                raise UserError(f"--metrics {metrics} is the {what}, which the run reads (--force would delete it); "
                                f"choose another path for the metrics")
        if latest is None:  # (a resumed run continues its metrics: the trainer keeps the steps before)
            check_new(metrics_path, force, hint="choose another path")
        else:
            if metrics_path.is_symlink():
                raise UserError(f"--metrics {metrics} is a symbolic link; autoconf does not write through links "
                                f"(remove it or choose another path)")
            problem = metrics_continuation_problem(metrics_path, latest[1])
            if problem and not force:
                raise UserError(f"--metrics {metrics}: {problem}; pass --force to start it anew from the "
                                f"checkpoint's step or choose another path")
        _check_writable_dir(metrics_path.parent, "metrics directory", create_dirs)
        train_args += ["--metrics", str(metrics_path)]
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir).resolve()
        _check_writable_dir(ckpt_path, "checkpoint directory", create_dirs)
        from autoconf.execute.checkpoint import foreign_entries

        start = 0 if latest is None else int(latest[1].get("data_position", 0))
        saved = {k for k in range(start + 1, steps + 1) if checkpoint_every and k % checkpoint_every == 0} | {steps}
        foreign = [p for k, p in foreign_entries(ckpt_path) if k in saved]
        if foreign:
            raise UserError(f"--checkpoint-dir {checkpoint_dir} holds {foreign[0].name}, which autoconf did not "
                            f"write, and this run saves that step there; move it away or choose another folder")
        _check_checkpoint(latest, steps, plan.model)
        train_args += ["--checkpoint-dir", str(ckpt_path), "--checkpoint-every", str(checkpoint_every)]
    elif checkpoint_every:
        raise UserError("--checkpoint-every needs --checkpoint-dir")

    # autoconf.execute.elastic takes torchrun's arguments unchanged and ends a failure with a summary.
    base = [sys.executable, "-m", "autoconf.execute.elastic", "--nnodes", str(nnodes),
            "--nproc-per-node", str(nproc_per_node), "--max-restarts", str(max_restarts)]
    rdzv_timeout = int(math.ceil(rendezvous_timeout_s))
    if nnodes == 1:
        # The agent's stores listen on 127.0.0.1 only (autoconf.execute.elastic binds them where the endpoint says).
        port = free_port() if master_port is None else master_port
        rdzv = [["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1",
                 "--rdzv-conf", f"join_timeout={rdzv_timeout}"]]
    else:
        # Physical node r runs the block of grid positions the placement puts on it (spec/plan.py node_blocks).
        blocks = node_blocks(plan.device_of(), nproc_per_node) or list(range(nnodes))
        port = MULTI_NODE_PORT if master_port is None else master_port
        rdzv = [["--node-rank", str(blocks.index(r)), "--master-addr", master_addr, "--master-port",
                 str(port), "--rdzv-conf", f"timeout={rdzv_timeout}"] for r in range(nnodes)]
    return [base + r + ["-m", "autoconf.execute.train"] + train_args for r in rdzv]


SHUTDOWN_GRACE_S = 3
_held_fds: list[int] = []


@contextlib.contextmanager
def run_locks(locks: list[tuple[Path, str, str]]):
    """Holds an exclusive lock (flock) on each path for the run's lifetime; a second run into the same checkpoint
    directory or metrics file is refused with the holder named. Each lock is (lock file, what it guards, the path
    the user gave). The lock files stay (empty of meaning once unlocked); the locks are also held by torchrun (the
    descriptor is passed on), so they last until it exits."""
    import fcntl

    fds = []
    try:
        for path, what, given in locks:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as err:
                raise UserError(f"cannot write the {what} {given}: its lock file {path.name} cannot be made in "
                                f"{path.parent} ({err.strerror or err}); choose a writable path") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise UserError(f"the {what} is in use by another run ({holder}); wait for it to end or choose "
                                f"another path") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"autoconf launch, pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            fds.append(fd)
        _held_fds[:] = fds
        yield
    finally:
        _held_fds[:] = []
        for fd in fds:
            os.close(fd)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """This process gets `sig` when its parent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG; elsewhere a no-op).
    torchrun gets SIGTERM when the launcher dies (and ends its workers); each worker SIGKILL when torchrun dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def run_supervised(command: list[str], env: dict, pass_fds: list[int] = (), follow=None, output=None,
                   timeout_s: float | None = None, exit_on_signal: bool = False) -> int:
    """Runs torchrun and returns its exit code. SIGTERM, SIGINT or SIGHUP to the launcher is forwarded as SIGTERM
    (torchrun then ends its workers, each in its own process group); after a grace the whole process group is
    killed; then 128 + the signal is returned, or with `exit_on_signal` raised as SystemExit (a caller running
    several in turn stops there). torchrun runs in a process group of its own and dies with the launcher (see
    _die_with_parent). `follow` (report.progress.Follow): torchrun's stdout passes through it, under a progress bar;
    else to `output` (a file; both streams) where given. Past `timeout_s` torchrun is ended the same way and 124
    returned. torchrun's agent (autoconf.execute.elastic) is told (errors.SUPERVISED_ENV) that this launcher reports a
    signal, so the stop is said once, as the signal the launcher got."""
    parent = os.getpid()
    env = {**(os.environ if env is None else env), SUPERVISED_ENV: "1"}  # (None: this environment)

    def preexec() -> None:
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    streams = ({"stdout": subprocess.PIPE} if follow is not None
               else {"stdout": output, "stderr": subprocess.STDOUT} if output is not None else {})
    proc = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=preexec, pass_fds=tuple(pass_fds),
                            **streams)
    relay = follow.relay(proc.stdout) if follow is not None else None
    received: list[int] = []
    deadline = None
    ends_at = None if timeout_s is None else time.monotonic() + timeout_s
    timed_out = False

    def forward(signum, frame) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if ends_at is not None and not timed_out and not received and time.monotonic() > ends_at:
                    timed_out = True
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                if (received or timed_out) and deadline is None:
                    deadline = time.monotonic() + SHUTDOWN_GRACE_S + 10
                if deadline is not None and time.monotonic() > deadline:
                    # torchrun did not end in time: kill its group; its workers die with it (PDEATHSIG, see train)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if relay is not None:
            relay.join(timeout=5)
    if received:
        print(f"autoconf: stopped by {signal.Signals(received[0]).name}; torchrun and its workers were ended",
              file=sys.stderr, flush=True)
        if exit_on_signal:
            raise SystemExit(128 + received[0])
        return 128 + received[0]
    return 124 if timed_out else code


def master_host_node(plan, nnodes: int, nproc_per_node: int) -> int:
    """The physical node that starts as torchrun node rank 0 (it hosts grid block 0, and torchrun's static
    rendezvous store): node 0 unless the placement reorders nodes."""
    if nnodes <= 1:
        return 0
    blocks = node_blocks(plan.device_of(), nproc_per_node)
    return blocks[0] if blocks else 0


def default_nnodes(plan) -> int:
    """The nodes a plan runs on when --nnodes is not given: the node count of the cluster it was planned for, when
    that splits the plan's processes evenly; otherwise 1."""
    nodes = int(plan.cluster.get("nodes", 1))
    world = plan.config.world_size
    return nodes if nodes >= 1 and world % nodes == 0 else 1


def launch(plan_path: str | Path, steps: int = 100, seed: int = 0, data: str | None = None,
           metrics: str | None = None, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
           max_restarts: int = 0, dry_run: bool = False, nnodes: int | None = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int | None = None, nproc_per_node: int | None = None,
           force: bool = False, timeout_s: float | None = None, rendezvous_timeout_s: float | None = None,
           allow_cpu: bool = False, allow_unfit: bool = False, hyperparameters: dict | None = None) -> int:
    """Runs PLAN.json with the bundled executor under torchrun; returns torchrun's exit code.

    plan_path: a plan from `autoconf plan`/`estimate`. steps: optimizer steps in total (a resumed run continues
    to this count). seed: weights and synthetic data. data: a .bin token file or a text file (see
    autoconf.execute.data). metrics: JSON-lines output (rank 0); refuses an existing file unless `force`.
    checkpoint_dir/checkpoint_every: DCP checkpoints every K steps and at the end; resumes from the newest complete
    one. max_restarts: passed to torchrun. nnodes/node_rank/master_addr/master_port: multi-node static rendezvous
    (this process runs node `node_rank`; port default MULTI_NODE_PORT); one node meets on 127.0.0.1 at master_port
    (default a free port; a port in use is refused) and notes a master_addr other than loopback, which it does not
    use. nproc_per_node: default world size / nnodes. dry_run: print the command
    of every node, one line each, and return 0 without running anything. timeout_s: collective timeout (a dead,
    hung or lost peer ends the job after it; default $AUTOCONF_COLLECTIVE_TIMEOUT or 600). rendezvous_timeout_s:
    how long nodes wait for each other at start and after a restart (default $AUTOCONF_RENDEZVOUS_TIMEOUT or 600).
    Raises UserError (before starting anything) for a bad plan, a plan whose world size is not
    nnodes * nproc_per_node, a missing data file, an unwritable metrics path or checkpoint directory, or an
    existing metrics file without `force`; a plan predicted not to fit unless `allow_unfit`; a GPU plan on a
    host without CUDA unless `allow_cpu` (checked when not a dry run). nnodes None: the plan's own node count.
    hyperparameters: learning rate, its schedule, weight decay, clipping, the MTP losses' weight (field -> value,
    execute/hyperparameters.py; a value out of range raises UserError).
    """
    check_master_addr(master_addr)
    plan = load_plan(plan_path)
    if not plan.as_written:  # the stored prediction may be another layout's: what fits is estimated again
        from autoconf.report.current import current

        reason = plan_unsupported_reason(plan)  # (build_commands' refusal, ahead of estimating the plan again)
        if reason:
            raise UserError(f"the executor cannot run this plan: {reason}")
        plan, note = current(plan, source=str(plan_path), remedy="re-plan it (autoconf plan or estimate --out)")
        print(f"autoconf: note: {note}", file=sys.stderr, flush=True)
    check_fits(plan, allow_unfit)
    if max_restarts and checkpoint_dir is None:
        print(f"autoconf: note: --max-restarts {max_restarts} without --checkpoint-dir: a restarted run trains again "
              f"from step 1 (pass --checkpoint-dir DIR --checkpoint-every N to resume where it stopped)",
              file=sys.stderr, flush=True)
    if plan.model.rope_unapplied:
        print(f"autoconf: note: the model's {plan.model.rope_unapplied} RoPE scaling is not applied by the executor: "
              f"it rotates positions unscaled", file=sys.stderr, flush=True)
    if nnodes is None:
        nnodes = default_nnodes(plan)
    commands = build_commands(plan_path, steps, seed, data, metrics, checkpoint_dir, checkpoint_every,
                              max_restarts, nnodes, node_rank, master_addr, master_port, nproc_per_node, force,
                              timeout_s, rendezvous_timeout_s, create_dirs=not dry_run,
                              hyperparameters=hyperparameters)
    nproc = int(commands[0][commands[0].index("--nproc-per-node") + 1])
    if nnodes == 1 and master_addr not in LOOPBACK:
        print(f"autoconf: note: one node: its ranks meet on 127.0.0.1 (--master-addr {master_addr} is for runs on "
              f"several nodes, --nnodes > 1)", file=sys.stderr, flush=True)
    if not dry_run:
        _check_devices(plan, nproc, allow_cpu)
        _check_host_memory(plan, nproc, allow_unfit)
        busy = busy_port_problem(master_port) if nnodes == 1 and master_port is not None else None
        if busy:
            raise UserError(busy)
        if nnodes > 1 and master_addr in LOOPBACK:
            raise UserError(f"the plan runs on {nnodes} nodes, which cannot meet at {master_addr} (a loopback "
                            f"address reaches this host only): start `autoconf launch` on each with --node-rank R "
                            f"and --master-addr set to the address of the node that starts as rank 0 (see "
                            f"--dry-run), or pass --nnodes 1 to run every rank on this host")
    master_node = master_host_node(plan, nnodes, nproc)
    if master_node != 0:
        print(f"autoconf: note: the placement puts grid block 0 on node {master_node}, which starts as torchrun node "
              f"rank 0 and hosts the rendezvous: --master-addr must be node {master_node}'s address on every node",
              file=sys.stderr)
    planned_gpus = plan.cluster.get("gpus_per_node")
    if dry_run and planned_gpus and nproc > planned_gpus and plan_wants_gpus(plan):
        print(f"autoconf: note: the plan was made for nodes of {planned_gpus} GPUs, but {nnodes} node(s) run "
              f"{nproc} processes each, more than their GPUs (one process per GPU: --nnodes "
              f"{-(-plan.config.world_size // planned_gpus)})", file=sys.stderr)
    if dry_run:
        if nnodes > 1 and master_addr in LOOPBACK:
            print(f"autoconf: note: {nnodes} nodes: pass --master-addr (the address of the node that starts as "
                  f"torchrun node rank 0, reachable from every node) instead of {master_addr}", file=sys.stderr)
        for rank, command in enumerate(commands):
            prefix = f"# node {rank}: " if len(commands) > 1 else ""
            print(prefix + shlex.join(command))
        return 0
    suffix = f"-node{node_rank}" if nnodes > 1 else ""  # every node of a run locks its own file on a shared folder
    locks = []
    if checkpoint_dir is not None:
        locks.append((Path(checkpoint_dir).resolve() / f".autoconf-run{suffix}.lock", "checkpoint directory",
                      str(checkpoint_dir)))
    if metrics is not None:
        m = Path(os.path.abspath(metrics))
        locks.append((m.with_name(f".{m.name}{suffix}.lock"), "metrics file", str(metrics)))
    with run_locks(locks):
        if metrics is not None and Path(metrics).exists():
            latest = _latest_checkpoint(checkpoint_dir)
            if latest is not None and not metrics_continuation_problem(Path(metrics), latest[1]):
                print(f"autoconf: note: continuing {metrics}: the steps up to the checkpoint resumed from are kept",
                      file=sys.stderr, flush=True)
            else:
                Path(metrics).unlink()  # `force` was checked above; the trainer appends
        env = worker_environment()
        # Once a worker failed (a collective timed out), the others get SIGTERM and then, after this grace, SIGKILL
        # (torchrun's default grace is 30 s, which a hung peer would add to the collective timeout).
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_GRACE_S))
        from rich.console import Console

        from autoconf.report.progress import Follow

        where = [f"metrics {metrics}" if metrics is not None else "",
                 f"checkpoints in {checkpoint_dir}" if checkpoint_dir is not None else ""]
        where = ", ".join(w for w in where if w)
        with Follow(Console(markup=False), f"training {plan.model.name}", total=steps) as follow:
            if follow.live:
                print(f"autoconf: training {plan_path} for {steps} steps on {plan.config.world_size} ranks"
                      + (f"; {where}" if where else ""), flush=True)
            code = run_supervised(commands[node_rank if nnodes > 1 else 0], env, [fd for fd in _held_fds],
                                  follow if follow.live else None)
        if code == 0:
            print(f"autoconf: done; results: {where or 'none kept (pass --metrics FILE for one line per step)'}",
                  file=sys.stderr, flush=True)
        return code
