"""autoconf: an automatic 3D-parallelism configurator for training large language models."""

__version__ = "0.1.0"
