"""User-facing errors.

A `UserError` is something the user can fix (a bad file, an impossible degree, a plan that does not fit). The CLI
prints its message as one line and exits non-zero; it never shows a traceback. Internal invariants use `assert`.
"""


class UserError(ValueError):
    """A problem with the user's input, explained in one line with what would work instead."""
