"""Dropout under tensor parallelism: the TP ranks of a group draw the same masks for their replicated activations.

A 2-rank torchrun job (this file run as a script) trains a tp2 GPT with dropout 0.3 for 3 steps through
`autoconf.execute.train.train` and compares a replicated parameter (the first attention norm's weight) across the
two TP ranks: different dropout streams on the TP ranks would make their replicated activations, gradients and then
weights drift apart (measured: 1e-3 after 3 steps when each rank seeds its own stream).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def worker(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    import autoconf.execute.train as executor
    from autoconf.spec.model import ModelSpec
    from plan_helpers import even_plan

    spec = ModelSpec(name="dropout-tp", arch="gpt", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                     ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True, dropout=0.3)
    device = torch.device("cpu")
    executor.init_distributed(device, timeout_s=120)
    trainers = []

    class Recorded(executor.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    executor.Trainer = Recorded
    records = executor.train(even_plan(spec, tp=2), executor.TrainOptions(steps=3, quiet=True), device)
    weight = next(p for n, p in trainers[0].models[0].named_parameters() if "attention_norm" in n)
    local = (weight.to_local() if isinstance(weight, DTensor) else weight).detach().clone()
    copies = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, local)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"max_difference": float((copies[0] - copies[1]).abs().max()),
                                   "losses": [r["loss"] for r in records]}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_tp_ranks_share_their_dropout_masks(tmp_path):
    out = tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "127.0.0.1:0", str(Path(__file__).resolve()), str(out)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["max_difference"] == 0.0
    assert len(set(result["losses"])) == 3  # it trained


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    worker(Path(sys.argv[1]))
