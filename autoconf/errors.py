"""User-facing errors.

A `UserError` is something the user can fix (a bad file, an impossible degree, a plan that does not fit). The CLI
prints its message as one line and exits non-zero; it never shows a traceback. Internal invariants use `assert`.
"""


class UserError(ValueError):
    """A problem with the user's input, explained in one line with what would work instead."""


class Diverged(UserError):
    """Training whose loss or gradient norm stopped being a finite number: the run stops, keeping what it saved."""


# The trainer's exit codes (autoconf.execute.train) and what each means, for the launcher's failure summary.
EXIT_REFUSED = 2
EXIT_LOST_PEER = 3
EXIT_DIVERGED = 4
# Exit codes a restart would only repeat, which autoconf.execute.elastic restarts no worker group on: a divergence
# (every rank stops at the same step, whose loss and gradient norm all of them hold, and a restart resumes the same
# checkpoint with the same settings). Not a refusal: it may come from a file a shared filesystem has not shown yet
# or failed to read, and it ends a worker at its start, so a restart costs little.
EXIT_FINAL = (EXIT_DIVERGED,)
EXIT_MEANINGS = {EXIT_REFUSED: "refused the plan, its files or its command line (the first rank of its node printed "
                               "why)",
                 EXIT_LOST_PEER: "lost a peer: it died, hung past the collective timeout, or its node is gone",
                 EXIT_DIVERGED: "training diverged: a loss or gradient norm that is not a finite number (the first "
                                "rank of its node printed the step)"}
# Set by the launcher for the torchrun it supervises (autoconf.execute.launch `run_supervised`), which reports a signal
# that stops the run itself: torchrun's agent (autoconf.execute.elastic) then leaves it unsaid.
SUPERVISED_ENV = "AUTOCONF_SUPERVISED"
