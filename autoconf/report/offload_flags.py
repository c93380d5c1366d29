"""What a plan's offload levers (spec/plan.py OFFLOADS) become in other frameworks' configs, as data the exporters
read (report/exporters.py, report/torchtitan_export.py).

- Megatron-LM core_v0.16.1 (`megatron/training/arguments.py`; scripts/data/megatron_lm_core_v0.16.1_flags.json):
  activation offload is `--cpu-offloading-num-layers N` (the arguments set `cpu_offloading` when N > 0), and
  megatron-core's TransformerConfig accepts only N < num_layers, refuses it with pipeline parallelism ("no support
  for Pipeline parallelism with CPU offloading") and with recompute (the flag is then left out, with a note). Optimizer offload is `--optimizer-cpu-offload`
  with `--optimizer-offload-fraction 1.0` (all of it on the host) and `--overlap-cpu-optimizer-d2h-h2d` (the copies
  overlapped, as modelled), on the distributed optimizer.
- torchtitan 0.3.0 (`torchtitan/config/configs.py`): `training.enable_cpu_offload` applies FSDP2's
  CPUOffloadPolicy (parameters, gradients and optimizer states on the host), as the executor does; it has no
  activation offload setting.
"""

from __future__ import annotations

from autoconf.spec.frameworks import PRESETS
from autoconf.spec.plan import ParallelConfig

# --use-precision-aware-optimizer: Megatron-LM's validate_args requires it with --optimizer-cpu-offload (the hybrid
# device optimizer reuses its code path); at its default dtypes (fp32 main params, gradients and moments) it keeps
# the states the plan modelled, and the moments' dtype flags where the plan keeps them otherwise
# (report/optimizer_flags.py).
MEGATRON_OPTIMIZER_OFFLOAD = ["--optimizer-cpu-offload", "--optimizer-offload-fraction 1.0",
                              "--overlap-cpu-optimizer-d2h-h2d", "--use-precision-aware-optimizer"]


def megatron_offload_args(c: ParallelConfig, num_layers: int, layout: str) -> tuple[list[str], list[str]]:
    """(arguments, notes) for the plan's offload levers in Megatron-LM, for a plan of memory `layout`."""
    args, notes = [], []
    if PRESETS["megatron-core"].refuses_activation_offload(c):
        # (the flag would make megatron-core refuse the whole configuration: left out, the run keeps them)
        notes.append(f"offload_activations with {'pp ' + str(c.pp) if c.pp > 1 else ''}"
                     f"{' and ' if c.pp > 1 and c.recompute != 'none' else ''}"
                     f"{'recompute ' + c.recompute if c.recompute != 'none' else ''}: megatron-core's "
                     f"TransformerConfig refuses CPU offloading with pipeline parallelism and with recompute, so "
                     f"--cpu-offloading-num-layers is left out and the run below keeps the activations on the GPU")
    elif c.offload_activations:
        args.append(f"--cpu-offloading-num-layers {max(num_layers - 1, 0)}")
        notes.append(f"offload_activations: Megatron-Core offloads the activations of at most num_layers - 1 = "
                     f"{num_layers - 1} layers (the plan modelled all {num_layers})")
    if c.offload_optimizer:
        args += MEGATRON_OPTIMIZER_OFFLOAD
        if layout == "torch":
            notes.append("offload_optimizer: Megatron's --optimizer-cpu-offload keeps the fp32 master weights and "
                         "Adam states on the host and steps there; its bf16 weights and fp32 gradient buffer stay on "
                         "the GPU (FSDP2's CPUOffloadPolicy, which the plan modelled, moves the sharded weights and "
                         "gradients too)")
    return args, notes


def torchtitan_offload(c: ParallelConfig) -> tuple[list[str], list[str]]:
    """(config lines, notes) for the plan's offload levers in torchtitan 0.3.0's Trainer.Config."""
    lines = ["training.enable_cpu_offload = True"] if c.offload_optimizer else []
    notes = ["offload_activations: torchtitan 0.3.0 has no activation offload setting (training.enable_cpu_offload "
             "is FSDP's CPUOffloadPolicy for parameters, gradients and optimizer states); the activations stay on "
             "the GPU there"] if c.offload_activations else []
    return lines, notes
