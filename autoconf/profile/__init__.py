"""Measuring a cluster: `profile(out, ...)` runs `autoconf.profile.run` under torchrun and writes a cluster profile."""

from autoconf.profile.launch import profile

__all__ = ["profile"]
