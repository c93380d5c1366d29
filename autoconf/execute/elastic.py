"""torchrun with a readable ending: `python -m autoconf.execute.elastic <torchrun arguments>`.

The arguments are torchrun's (`python -m torch.distributed.run ...`), unchanged. Where torchrun would end with a
Python traceback around its `ChildFailedError` (a worker died, was killed, or exited non-zero after
`--max-restarts` restarts) or a rendezvous error (a node never joined within the rendezvous timeout), this prints
what happened in a few plain lines, starting `autoconf: error:`, and exits 1.

A worker group that ended with one of the trainer's final exit codes (`errors.EXIT_FINAL`: training diverged) is not
restarted whatever `--max-restarts` allows: the restart would resume the same checkpoint with the same settings and,
after training to it again, diverge at the same step. Every rank diverges at that step (its loss and gradient norm
are every rank's), so on several nodes each node's agent stops its own restarts.

When the rendezvous endpoint (or the static master address) is a loopback address, every TCPStore server the agent
starts listens on that address only: torch's own stores listen on all interfaces whatever the endpoint says.

The agent's own C++ warnings are left out (torch's TCPStore client logs a lost store with its whole C++ stack, for
instance on a node whose master's node died, before the agent's error ends in autoconf's line); the workers log at
the level the environment sets (`TORCH_CPP_LOG_LEVEL`, which the agent also keeps where it is set, as it does under
AUTOCONF_DEBUG).

Without `--log-dir`, torchrun's per-attempt folders (the workers' error files) go to a temporary folder that is
removed when the agent ends, once the failure lines are printed: torchrun alone leaves one `torchelastic_*` folder
in the temporary directory per run.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile

from autoconf.errors import EXIT_FINAL, EXIT_MEANINGS, SUPERVISED_ENV

JOBS = {"autoconf.profile.run": "profiling"}  # what a worker module does, for the failure line (default: training)
_STORE_ARGS = ("host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant",
               "master_listen_fd", "use_libuv")


@dataclasses.dataclass
class AgentRecord:
    """What the local elastic agent saw (`restart_only_what_may_pass`): the restarts it had left each time a final
    exit code stopped them, and the failures (global rank -> torch's ProcessFailure) of the last worker group that
    failed."""
    stopped: list[int] = dataclasses.field(default_factory=list)
    failures: dict = dataclasses.field(default_factory=dict)


def restart_only_what_may_pass() -> AgentRecord:
    """Makes torch's local elastic agent restart no worker group that ended with a final exit code (`EXIT_FINAL`):
    its remaining restarts drop to 0 when it sees one. Returns the record the agent's findings go to (for the
    failure lines). Where the agent lacks what this reads (another torch), restarts stay torch's own and the record
    stays empty."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    record = AgentRecord()
    original = getattr(LocalElasticAgent, "_monitor_workers", None)
    if original is None or getattr(original, "_autoconf_final", False) or not hasattr(LocalElasticAgent, "_invoke_run"):
        return record

    def monitor_workers(self, worker_group):
        result = original(self, worker_group)
        failures = getattr(result, "failures", None) or {}
        if failures:
            record.failures = dict(failures)
        if any(getattr(f, "exitcode", None) in EXIT_FINAL for f in failures.values()) and getattr(
                self, "_remaining_restarts", 0) > 0:
            record.stopped.append(self._remaining_restarts)
            self._remaining_restarts = 0
        return result

    monitor_workers._autoconf_final = True
    LocalElasticAgent._monitor_workers = monitor_workers
    return record


def _loopback(host: str | None) -> str | None:
    if not host:
        return None
    if host == "localhost":
        return "127.0.0.1"
    try:
        return host if ipaddress.ip_address(host).is_loopback and ":" not in host else None
    except ValueError:
        return None


def bind_stores_to(host: str) -> None:
    """Makes every TCPStore server created in this process listen on `host` only, by handing torch a socket
    bound there (TCPStore's master_listen_fd)."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

    original = dist.TCPStore
    if getattr(original, "_autoconf_bound", None) == host:
        return

    class BoundTCPStore(original):
        _autoconf_bound = host

        def __init__(self, *args, **kwargs):
            params = dict(zip(_STORE_ARGS, args))
            params.update(kwargs)
            if params.get("is_master") and params.get("master_listen_fd") is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, int(params.get("port") or 0)))
                sock.listen(1024)
                params["port"] = sock.getsockname()[1]
                params["master_listen_fd"] = sock.detach()
            super().__init__(**params)

    dist.TCPStore = BoundTCPStore
    c10d_rendezvous_backend.TCPStore = BoundTCPStore


def store_host(args) -> str | None:
    """The loopback address the job's stores should listen on, or None (a multi-host job: torch's default)."""
    if getattr(args, "rdzv_backend", "static") == "static":
        return _loopback(getattr(args, "master_addr", None))
    endpoint = getattr(args, "rdzv_endpoint", "") or ""
    return _loopback(endpoint.rsplit(":", 1)[0] if ":" in endpoint else endpoint)


def _how(failure) -> str:
    """How one worker ended, without saying which: killed by a signal or its exit code (with the trainer's meaning
    of it), and the last line of its error message."""
    if failure.exitcode is not None and failure.exitcode < 0:
        try:
            how = f"was killed by signal {failure.signal_name()}"
        except Exception:  # noqa: BLE001 - an unknown signal number
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with code {failure.exitcode}"
        if failure.exitcode in EXIT_MEANINGS:
            how += f" ({EXIT_MEANINGS[failure.exitcode]})"
    message = (failure.message or "").strip().splitlines()
    detail = f": {message[-1][:300]}" if message and not message[-1].startswith(("Signal ", "To enable")) else ""
    return how + detail


def _host(failure) -> str:
    return getattr(failure, "hostname", None) or "its node"


def describe_failure(rank: int, failure) -> str:
    """One line for one failed worker (a torch.distributed.elastic ProcessFailure)."""
    return f"rank {rank} (local rank {failure.local_rank} on {_host(failure)}) {_how(failure)}"


def rank_ranges(ranks: list[int]) -> str:
    """Sorted ranks as runs: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for r in sorted(ranks):
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe_failures(failures: dict) -> str:
    """The failed workers in one line, those that ended the same way on the same node together ("ranks 1-7 on
    node-a exited with code 3 (...)"), groups in order of their first rank."""
    groups: dict[tuple[str, str], list[int]] = {}
    for rank, failure in sorted(failures.items()):
        groups.setdefault((_host(failure), _how(failure)), []).append(rank)
    return "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {rank_ranges(ranks)} on {host} "
                     f"{how.replace('was killed', 'were killed', 1) if len(ranks) > 1 else how}"
                     for (host, how), ranks in groups.items())


def load_torch_without_cpp_warnings() -> None:
    """Imports torch with its C++ log level at ERROR for this process only (c10 reads `TORCH_CPP_LOG_LEVEL` as torch
    loads; the variable is removed again, so the workers this agent starts log at torch's default). Nothing changes
    where torch is loaded already, the variable is set, or AUTOCONF_DEBUG is."""
    if "torch" in sys.modules or "TORCH_CPP_LOG_LEVEL" in os.environ or os.environ.get("AUTOCONF_DEBUG"):
        return
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    try:
        importlib.import_module("torch")
    finally:
        del os.environ["TORCH_CPP_LOG_LEVEL"]


def main(argv: list[str] | None = None) -> int:
    load_torch_without_cpp_warnings()
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    host = store_host(args)
    if host:
        bind_stores_to(host)
    scratch = None
    if not args.log_dir:
        args.log_dir = scratch = tempfile.mkdtemp(prefix="autoconf-torchrun-")
    try:
        return _run(run, args, restart_only_what_may_pass())
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(run, args, record: AgentRecord | None = None) -> int:
    """torchrun's `run(args)`, its endings turned into plain lines and an exit code; `record`: what the agent saw
    (`restart_only_what_may_pass`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    record = record or AgentRecord()
    job = JOBS.get(args.training_script, "training")
    try:
        run(args)
    except SignalException as err:
        if not os.environ.get(SUPERVISED_ENV):  # (else the launcher says what stopped it)
            print(f"autoconf: torchrun got {getattr(err.sigval, 'name', err.sigval)}: the workers were ended",
                  file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        root_rank, root = err.get_first_failure()
        others = {r: f for r, f in err.failures.items() if r != root_rank}
        stopped = record.stopped
        after = (f"and was not restarted (a restart would end the same way; {args.max_restarts - stopped[-1]} of "
                 f"{args.max_restarts} allowed restart(s) used)" if stopped
                 else f"after {args.max_restarts} allowed restart(s)")
        print(f"autoconf: error: {job} failed {after}: {describe_failure(root_rank, root)}", file=sys.stderr,
              flush=True)
        if others:
            print(f"autoconf: then: {describe_failures(others)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - rendezvous and store errors of the agent: environment problems
        first = (str(err).strip().splitlines() or [""])[0][:400]
        if record.failures:  # (a worker group failed, and restarting it could not meet the other nodes again)
            rank, failure = min(record.failures.items(), key=lambda item: getattr(item[1], "timestamp", 0))
            print(f"autoconf: error: {job} failed: {describe_failure(rank, failure)}; its restart could not meet "
                  f"the other nodes again ({type(err).__name__}: {first}): the node that started as rank 0 "
                  f"(--master-addr, whose agent holds the rendezvous) is gone or unreachable", file=sys.stderr,
                  flush=True)
            return 1
        print(f"autoconf: error: torchrun could not run the job ({type(err).__name__}: {first}); check that "
              f"every node was started with the same --nnodes, --master-addr and --master-port and can reach "
              f"the master", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
