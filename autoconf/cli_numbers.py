"""click's number option types, reading ASCII digits only: Python's int() and float(), which click calls, also read
"1_0" as 10 and the digits of other scripts ("٨" as 8), which `--fix`, `--tokens` and `--nodes` ranges refuse; every
numeric option refuses them alike, in click's one usage line."""

from __future__ import annotations

import click

from autoconf.files import ascii_number


class _AsciiDigits:
    """Refuses a typed value that is not a number in ASCII digits, before click's own conversion and range check."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not ascii_number(value, integer=self._number_class is int):
            kind = "an integer" if self._number_class is int else "a number"
            self.fail(f"{value!r} is not {kind} in ASCII digits", param, ctx)
        return super().convert(value, param, ctx)


class AsciiInt(_AsciiDigits, click.types.IntParamType):
    pass


class AsciiFloat(_AsciiDigits, click.types.FloatParamType):
    pass


class AsciiIntRange(_AsciiDigits, click.IntRange):
    pass


class AsciiFloatRange(_AsciiDigits, click.FloatRange):
    pass


ASCII_INT = AsciiInt()
ASCII_FLOAT = AsciiFloat()
