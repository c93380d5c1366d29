"""The upstream versions the exports target: each export names its target in its header, the test extra in
pyproject.toml pins the same packages (tests/test_exports_upstream.py checks both), and docs/exports.md lists them."""

from __future__ import annotations

# Megatron-LM's flags as declared at this tag (scripts/data/megatron_lm_<tag>_flags.json, extracted by
# scripts/megatron_flags.py); its config classes as released in the megatron-core package of the same version.
MEGATRON_LM_TAG = "core_v0.16.1"
MEGATRON_CORE_VERSION = "0.16.1"

# torchtitan as published on PyPI: configs are Python functions returning a Trainer.Config (config_registry modules
# loaded by `--module M --config F`); the TOML job files of earlier releases are gone.
TORCHTITAN_VERSION = "0.3.0"

# Kubeflow Training Operator's PyTorchJob (API group/version kubeflow.org/v1), its CRD schema as released at this tag
# (scripts/data/pytorchjob_crd_<tag>_schema.json, extracted by scripts/pytorchjob_schema.py).
PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
TRAINING_OPERATOR_TAG = "v1.9.0"

MEGATRON_TARGET = f"Megatron-LM {MEGATRON_LM_TAG} (megatron-core {MEGATRON_CORE_VERSION})"
TORCHTITAN_TARGET = f"torchtitan {TORCHTITAN_VERSION} (PyPI)"
PYTORCHJOB_TARGET = f"Kubeflow Training Operator {TRAINING_OPERATOR_TAG} PyTorchJob, {PYTORCHJOB_API_VERSION}"
