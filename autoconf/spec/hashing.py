"""The hash of a frozen dataclass, computed once per instance.

A spec (a model, a framework's flags) is a key of the cost model's caches, which the search consults millions of
times; the generated hash rebuilds the tuple of every field (and of every nested spec) on each call. A class takes
this one with `__hash__ = remembered_hash` in its body (the dataclass decorator keeps an explicit `__hash__`). Only
for classes whose instances are never copied field by field into another instance's `__dict__` (the remembered value
would travel with it).
"""

from __future__ import annotations

import dataclasses

_KEY = "_remembered_hash"


def remembered_hash(self) -> int:
    """The hash of the fields that equality compares, as the generated hash gives it, remembered in the instance."""
    value = self.__dict__.get(_KEY)
    if value is None:
        value = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare))
        self.__dict__[_KEY] = value
    return value
