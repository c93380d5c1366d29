#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a lent GPU is held for minutes, so everything goes in one call):
#   0. the executor against torchtitan on one GPU: the same Llama 3 shape (LEAN_MODEL's with LEAN_LAYERS blocks),
#      sequence LEAN_SEQ, local batch LEAN_MB, selective recompute, compiled blocks, LEAN_STEPS steps each: tokens/s
#      and peak memory into OUT/lean_vs_torchtitan.md (the section for docs/gpu.md). torchtitan 0.3.0 runs from
#      carried wheels (the GPU machine has no registry); fetch them once, into the ignored folder wheels/:
#        pip download torchtitan==0.3.0 spmd_types==0.2.3 tyro docstring_parser typeguard shtab --no-deps -d wheels
#      (tyro also imports rich: add rich markdown-it-py mdurl pygments if the GPU machine lacks it)
#      and carry it: run(command="scripts/gpu_check.sh", carry=["wheels"]). Without wheels that half is skipped.
#   1. `autoconf profile` of this GPU with the compute tables of MODEL at TP widths 1-8 (one GPU of an 8-GPU node);
#   2. `autoconf validate` of MODEL on that profile: K single-GPU layouts (micro-batch, recompute) trained N steps
#      each by the bundled executor on CUDA, predicted vs measured step time and peak memory;
#   3. while time is left (DEADLINE_S after the start), a quick profile of MODEL2's blocks (the larger model a
#      multi-GPU plan is made for; MODEL2= skips it).
# First, the activation bytes the executor's blocks save on this device against the memory estimator's, and the
# attention paths only CUDA takes (scripts/cuda_attention_check.py: seq1f1b's lower-right bias, CP's grouped K/V).
# Results go to OUT (default out/gpu-check): profile JSONs, logs, report.json and validate.tgz (the whole folder):
# at most eight files, as the lent machine returns.
#
#   scripts/gpu_check.sh                                    # on the GPU machine
#   MODEL=tiny-gpt SEQ=128 GB=8 MAXTP=2 scripts/gpu_check.sh   # a dry run of the script itself (CPU works too)
#   LEAN_MODEL=tiny-llama LEAN_TT_FLAVOR=debugmodel LEAN_LAYERS=2 LEAN_SEQ=64 LEAN_STEPS=3 ...  (its step 0 on CPU)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
MODEL=${MODEL:-gpt3-1.3b}
MODEL2=${MODEL2:-llama3-8b}
SEQ=${SEQ:-2048}
GB=${GB:-16}
CONFIGS=${CONFIGS:-6}
STEPS=${STEPS:-8}
MAXTP=${MAXTP:-8}
DEADLINE_S=${DEADLINE_S:-540}
LEAN_MODEL=${LEAN_MODEL:-llama3-8b}
LEAN_TT_FLAVOR=${LEAN_TT_FLAVOR:-8B}
LEAN_LAYERS=${LEAN_LAYERS:-8}
LEAN_SEQ=${LEAN_SEQ:-8192}
LEAN_MB=${LEAN_MB:-2}
LEAN_STEPS=${LEAN_STEPS:-12}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }
say() { echo "== [$(( $(date +%s) - start ))s] $*"; }

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv 2>&1
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'python', sys.version.split()[0])" 2>&1

say "executor vs torchtitan: $LEAN_MODEL shape, $LEAN_LAYERS layers, seq $LEAN_SEQ, batch $LEAN_MB, selective recompute"
python3 scripts/lean_report.py setup "$LEAN_MODEL" "$LEAN_LAYERS" "$OUT" 2>&1
timeout 60 python3 -m autoconf estimate --model "$OUT/lean-model.json" --cluster "$OUT/lean-cluster.json" --tp 1 \
    --pp 1 --dp 1 --micro-batch "$LEAN_MB" --global-batch "$LEAN_MB" --seq-len "$LEAN_SEQ" --recompute selective \
    --out "$OUT/lean-plan.json" >"$OUT/lean.log" 2>&1
timeout 300 python3 -m autoconf launch "$OUT/lean-plan.json" --steps "$LEAN_STEPS" \
    --metrics "$OUT/lean-executor.jsonl" --force >>"$OUT/lean.log" 2>&1
say "executor exit $?"
if ls wheels/torchtitan-*.whl >/dev/null 2>&1; then
    site="$PWD/.tt-site"
    pip install --no-deps --no-index --target "$site" wheels/*.whl >>"$OUT/lean.log" 2>&1
    PYTHONPATH="$site:$PYTHONPATH" timeout 300 python3 scripts/torchtitan_bench.py --flavor "$LEAN_TT_FLAVOR" \
        --layers "$LEAN_LAYERS" --seq "$LEAN_SEQ" --batch "$LEAN_MB" --steps "$LEAN_STEPS" \
        --out "$OUT/lean-torchtitan.json" >>"$OUT/lean.log" 2>&1
    say "torchtitan exit $?"
else
    say "no wheels/torchtitan-*.whl carried: torchtitan skipped"
fi
python3 scripts/lean_report.py report "$OUT" >"$OUT/lean_vs_torchtitan.md" 2>>"$OUT/lean.log"
cat "$OUT/lean_vs_torchtitan.md"
tail -n 5 "$OUT/lean.log"

say "saved activations per layer vs the memory estimator"
timeout 60 python3 scripts/saved_activations.py --models "$MODEL" ${MODEL2:+"$MODEL2"} 2>&1 | tail -n 12

say "seq1f1b chunks and torch's CP ring on this device's attention kernels (docs/long-context.md)"
timeout 120 python3 scripts/cuda_attention_check.py 2>&1 | tail -n 20

say "profile: $MODEL blocks at tp 1..$MAXTP"
profile="$OUT/profile.json"
timeout 280 python3 -m autoconf profile --out "$profile" --model "$MODEL" --max-tp "$MAXTP" --force \
    >"$OUT/profile.log" 2>&1
code=$?
tail -n 25 "$OUT/profile.log"
if [ $code -ne 0 ] || [ ! -s "$profile" ]; then
    say "profile failed ($code): validating on the bundled profile instead"
    profile="$OUT/fallback.json"
    python3 - "$profile" <<'EOF'
import json, sys
import torch
from autoconf.profile.hardware import base_profile_for
from autoconf.spec.cluster import load_cluster
name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
c = load_cluster(base_profile_for(name) or "cpu-local", 1, 1)
open(sys.argv[1], "w").write(json.dumps(c.to_dict(), indent=2))
EOF
fi

say "validate: $CONFIGS layouts of $MODEL, global batch $GB, seq $SEQ, $STEPS steps (left $(left) s)"
timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) python3 -m autoconf validate --model "$MODEL" --cluster "$profile" \
    --global-batch "$GB" --seq-len "$SEQ" --configs "$CONFIGS" --steps "$STEPS" --out "$OUT/validate" --force \
    >"$OUT/validate.log" 2>&1
vcode=$?
say "validate exit $vcode"
tail -n 40 "$OUT/validate.log"
cp "$OUT/validate/report.json" "$OUT/report.json" 2>/dev/null
tar czf "$OUT/validate.tgz" -C "$OUT" validate 2>/dev/null

if [ "$profile" != "$OUT/profile.json" ] && [ $vcode -ne 0 ]; then
    say "profile and validate both failed: stopping here (see the logs)"
elif [ -n "$MODEL2" ] && [ "$(left)" -gt 100 ]; then
    say "quick profile: $MODEL2 blocks at tp 1..$MAXTP (left $(left) s)"
    timeout $(( $(left) - 10 )) python3 -m autoconf profile --out "$OUT/profile2.json" --model "$MODEL2" \
        --max-tp "$MAXTP" --quick --force >"$OUT/profile2.log" 2>&1
    say "quick profile exit $?"
    tail -n 8 "$OUT/profile2.log"
fi
say "done"
ls -la "$OUT"
