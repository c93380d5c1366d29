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
# Exit codes a restart would only repeat (the same plan, files and checkpoint give the same refusal or divergence):
# autoconf.execute.elastic restarts no worker group that ended with one.
EXIT_FINAL = (EXIT_REFUSED, EXIT_DIVERGED)
EXIT_MEANINGS = {EXIT_REFUSED: "refused the plan or its files (the first rank of its node printed why)",
                 EXIT_LOST_PEER: "lost a peer: it died, hung past the collective timeout, or its node is gone",
                 EXIT_DIVERGED: "training diverged: a loss or gradient norm that is not a finite number (the first "
                                "rank of its node printed the step)"}
