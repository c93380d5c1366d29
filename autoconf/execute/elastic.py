"""torchrun with a readable ending: `python -m autoconf.execute.elastic <torchrun arguments>`.

The arguments are torchrun's (`python -m torch.distributed.run ...`), unchanged. Where torchrun would end with a
Python traceback around its `ChildFailedError` (a worker died, was killed, or exited non-zero after
`--max-restarts` restarts) or a rendezvous error (a node never joined within the rendezvous timeout), this prints
what happened in a few plain lines, starting `autoconf: error:`, and exits 1.
"""

from __future__ import annotations

import sys


def describe_failure(rank: int, failure) -> str:
    """One line for one failed worker (a torch.distributed.elastic ProcessFailure)."""
    where = f"rank {rank} (local rank {failure.local_rank} on {getattr(failure, 'hostname', None) or 'its node'})"
    if failure.exitcode is not None and failure.exitcode < 0:
        try:
            how = f"was killed by signal {failure.signal_name()}"
        except Exception:  # noqa: BLE001 - an unknown signal number
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with code {failure.exitcode}"
    message = (failure.message or "").strip().splitlines()
    detail = f": {message[-1][:300]}" if message and not message[-1].startswith(("Signal ", "To enable")) else ""
    return where + " " + how + detail


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    try:
        run(args)
    except ChildFailedError as err:
        root_rank, root = err.get_first_failure()
        others = [describe_failure(r, f) for r, f in sorted(err.failures.items()) if r != root_rank]
        print(f"autoconf: error: training failed after {args.max_restarts} allowed restart(s): "
              f"{describe_failure(root_rank, root)}", file=sys.stderr, flush=True)
        if others:
            print(f"autoconf: then: {'; '.join(others)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - rendezvous and store errors of the agent: environment problems
        first = (str(err).strip().splitlines() or [""])[0][:400]
        print(f"autoconf: error: torchrun could not run the job ({type(err).__name__}: {first}); check that "
              f"every node was started with the same --nnodes, --master-addr and --master-port and can reach "
              f"the master", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
