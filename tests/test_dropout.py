"""Dropout under tensor parallelism: the TP ranks of a group draw the same masks for their replicated activations.

The session's shared 2-rank torchrun job (tests/executor_jobs.py) trains a tp2 GPT with dropout 0.3 for 3 steps
through `autoconf.execute.train.train`; tests/dropout_probe.py reads a replicated parameter (the first attention
norm's weight) on both TP ranks: different dropout streams on the TP ranks would make their replicated activations,
gradients and then weights drift apart (measured: 1e-3 after 3 steps when each rank seeds its own stream).
"""

from __future__ import annotations

import pytest

import executor_jobs
from autoconf.spec.model import ModelSpec
from executor_jobs import Layout
from plan_helpers import even_plan

SPEC = ModelSpec(name="dropout-tp", arch="gpt", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                 ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True, dropout=0.3)
# micro-batches of 2: a tensor-parallel layout's CPU cost is per micro-batch; each still draws its own masks
executor_jobs.register("dropout", {"tp2": Layout(2, even_plan(SPEC, tp=2, micro_batch=2),
                                                 {"probe": "tests/dropout_probe.py"})})


@pytest.mark.slow
def test_tp_ranks_share_their_dropout_masks(tmp_path_factory):
    out = executor_jobs.results("dropout", tmp_path_factory)["tp2"]
    first, second = out["probe"]
    assert len(first) == SPEC.hidden_size and first == second
    assert len({r["loss"] for r in out["records"]}) == 3  # it trained
