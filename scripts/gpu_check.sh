#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a lent GPU is held for minutes, so everything goes in one call):
#   1. `autoconf profile` of this GPU with the compute tables of MODEL at TP widths 1-8 (one GPU of an 8-GPU node);
#   2. `autoconf validate` of MODEL on that profile: K single-GPU layouts (micro-batch, recompute) trained N steps
#      each by the bundled executor on CUDA, predicted vs measured step time and peak memory;
#   3. while time is left (DEADLINE_S after the start), a quick profile of MODEL2's blocks (the larger model a
#      multi-GPU plan is made for; MODEL2= skips it).
# First, the activation bytes the executor's blocks save on this device against the memory estimator's.
# Results go to OUT (default out/gpu-check): profile JSONs, logs, report.json and validate.tgz (the whole folder):
# at most eight files, as the lent machine returns.
#
#   scripts/gpu_check.sh                                    # on the GPU machine
#   MODEL=tiny-gpt SEQ=128 GB=8 MAXTP=2 scripts/gpu_check.sh   # a dry run of the script itself (CPU works too)
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
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }
say() { echo "== [$(( $(date +%s) - start ))s] $*"; }

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv 2>&1
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'python', sys.version.split()[0])" 2>&1

say "saved activations per layer vs the memory estimator"
timeout 60 python3 scripts/saved_activations.py --models "$MODEL" ${MODEL2:+"$MODEL2"} 2>&1 | tail -n 12

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
