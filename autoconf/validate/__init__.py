"""Validation: run layouts, compare measured with predicted step times, calibrate the profile (torch-free; the
runs are torchrun subprocesses)."""

from autoconf.validate.run import validate, validate_command

__all__ = ["validate", "validate_command"]
