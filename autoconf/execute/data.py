"""Training data: the same global batch at every step whatever the layout.

Sources (`--data PATH`):
- a token file ending in `.bin`: a flat array of token ids (the nanoGPT convention). Its dtype comes from a sidecar
  `PATH.json` holding {"dtype": "uint16" | "uint32"} when present, else from the vocabulary: uint16 when
  vocab_size <= 65536, uint32 otherwise;
- any other file: text, read as bytes; byte-level tokens (vocabulary 256, so the model needs vocab_size >= 256);
- no path: deterministic synthetic tokens, uniform over the vocabulary.

Step `t`'s global batch is a pure function of (seed, t): `global_batch_size` windows of seq_len + 1 tokens at offsets
drawn from a generator seeded by (seed, t) (synthetic: the tokens themselves are drawn). So the data position to
resume from is just the step number. Rows are split into micro-batches in order; data-parallel rank d takes the
contiguous rows [d*B/dp, (d+1)*B/dp), i.e. its num_microbatches micro-batches.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from autoconf.errors import UserError
from autoconf.execute.model import init_seed


TOKEN_DTYPES = ("uint16", "uint32")


def sidecar_of(path: Path) -> Path | None:
    """The sidecar a data file's dtype is read from (`token_dtype`): `PATH.json` beside a `.bin` token file, None for
    any other data file."""
    return Path(str(path) + ".json") if Path(path).suffix.lower() == ".bin" else None


def token_dtype(path: Path, vocab_size: int) -> np.dtype:
    """The dtype of token file `path`: its sidecar `PATH.json`'s, when there is one (a JSON object holding "dtype"
    and nothing else: any other key, or another JSON value, is one UserError line, as for every file autoconf
    reads), else the vocabulary's (module docstring)."""
    from autoconf.files import quoted
    from autoconf.spec.plan import unknown_names
    from autoconf.spec.presets import read_json

    sidecar = sidecar_of(path)
    if sidecar is None or not sidecar.exists():
        return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)
    expected = '{"dtype": "uint16"} or {"dtype": "uint32"}'
    data = read_json(sidecar, "token-file sidecar")
    unknown = sorted((k for k in data if k != "dtype"), key=str)
    if unknown:
        raise UserError(f"{sidecar}: unknown field(s) {unknown_names(unknown)}; a token file's sidecar holds only "
                        f"its dtype: {expected}")
    if "dtype" not in data:
        raise UserError(f"{sidecar}: no \"dtype\"; a token file's sidecar holds {expected}")
    if data["dtype"] not in TOKEN_DTYPES:
        raise UserError(f"{sidecar}: dtype {quoted(data['dtype'])} is not uint16 or uint32; write {expected}")
    return np.dtype(data["dtype"])


SCAN_LIMIT_BYTES = 1 << 30  # token files up to this size are scanned for ids outside the vocabulary at launch


def check_data_file(path: Path, vocab_size: int, seq_len: int, scan: bool = True) -> np.dtype:
    """Everything that can be known about a data file before training: it is a readable regular file (not a
    folder, a device such as /dev/zero, or a pipe), not empty, a whole number of tokens, at least seq_len + 2 of
    them, and (`scan`, files up to SCAN_LIMIT_BYTES) every token id inside the vocabulary. Returns the token dtype;
    raises UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    if not path.is_file():
        raise UserError(f"data file {path} is not a regular file (a folder, a device or a pipe); give a .bin token "
                        f"file or a text file")
    if not os.access(path, os.R_OK):
        raise UserError(f"data file {path} is not readable")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"data file {path} is empty")
    if path.suffix.lower() == ".bin":
        dtype = token_dtype(path, vocab_size)
    else:
        if vocab_size < 256:
            raise UserError(f"{path} is read as bytes (vocabulary 256) but the model's vocabulary is "
                            f"{vocab_size}; use a .bin token file or a model with vocab_size >= 256")
        dtype = np.dtype(np.uint8)
    if size % dtype.itemsize:
        raise UserError(f"{path}: size is not a multiple of {dtype.itemsize} bytes ({dtype})")
    if size // dtype.itemsize < seq_len + 2:
        raise UserError(f"{path} holds {size // dtype.itemsize} tokens, fewer than seq_len + 2 = {seq_len + 2}")
    if scan and path.suffix.lower() == ".bin" and size <= SCAN_LIMIT_BYTES:
        try:
            largest = int(np.memmap(path, dtype=dtype, mode="r").max())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read data file {path}: {err}") from None
        if largest >= vocab_size:
            raise UserError(f"{path}: token id {largest} is outside the model's vocabulary of {vocab_size}")
    return dtype


class TokenSource:
    def __init__(self, path: str | Path | None, vocab_size: int, seq_len: int, seed: int):
        self.path = None if path is None else Path(path)
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.tokens = None
        if self.path is None:
            return
        dtype = check_data_file(self.path, vocab_size, seq_len, scan=False)
        self.tokens = np.memmap(self.path, dtype=dtype, mode="r")

    def describe(self) -> str:
        if self.path is None:
            return f"synthetic tokens (seed {self.seed})"
        return f"{self.path} ({self.tokens.dtype}, {len(self.tokens)} tokens)"

    def rows(self, step: int, batch_size: int, first: int = 0, count: int | None = None) -> torch.Tensor:
        """Rows [first, first + count) (default: all) of step `step`'s global batch of `batch_size` rows,
        [count, seq_len + 1] int64 token ids, the same whichever rank reads them: a data-parallel rank builds only
        its own rows (`local_rows`). Synthetic rows are drawn each from its own seed (the step and the row); a data
        file's from offsets drawn for the whole batch (cheap) and read for these rows only."""
        count = batch_size - first if count is None else count
        s = self.seq_len + 1
        if self.tokens is None:
            out = torch.empty(count, s, dtype=torch.int64)
            for i in range(count):
                gen = torch.Generator().manual_seed(init_seed(self.seed, f"data/{step}/{first + i}"))
                out[i] = torch.randint(0, self.vocab_size, (s,), generator=gen)
            return out
        gen = torch.Generator().manual_seed(init_seed(self.seed, f"data/{step}"))
        offsets = torch.randint(0, len(self.tokens) - s + 1, (batch_size,), generator=gen)[first:first + count]
        batch = torch.from_numpy(np.stack([np.asarray(self.tokens[o:o + s], dtype=np.int64)
                                           for o in offsets.tolist()]))
        if int(batch.max()) >= self.vocab_size:
            raise UserError(f"{self.path}: token id {int(batch.max())} at step {step + 1} is outside the model's "
                            f"vocabulary of {self.vocab_size}")
        return batch


def local_rows(source: TokenSource, step: int, batch_size: int, dp_rank: int, dp: int) -> torch.Tensor:
    """This data-parallel rank's contiguous slice of step `step`'s global batch, built alone."""
    n = batch_size // dp
    return source.rows(step, batch_size, dp_rank * n, n)
