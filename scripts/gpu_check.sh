#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a lent GPU is held for minutes, so everything goes in one call):
#   0. the executor against torchtitan on one GPU: the same Llama 3 shape (LEAN_MODEL's with LEAN_LAYERS blocks),
#      sequence LEAN_SEQ, local batch LEAN_MB, selective recompute, compiled blocks, LEAN_STEPS steps each: tokens/s
#      and peak memory beside what `estimate` predicts for both (the autoconf and torchtitan presets) into
#      RET/lean_vs_torchtitan.md (the section for docs/gpu.md); then the executor alone on an MoE shape (MOE_MODEL
#      with MOE_LAYERS blocks, after step 3 while time is left; MOE_MODEL= skips it). torchtitan runs from carried
#      wheels (the GPU machine has no registry): 0.2.2 on the lent machines' torch 2.11 (0.3.0 needs a newer torch;
#      scripts/torchtitan_bench.py runs either). Fetch them once, from outside the checkout, into wheels/ (ignored):
#        pip download torchtitan==0.2.2 tyro==1.0.17 docstring_parser typeguard shtab --no-deps \
#          --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d /tmp/wh && cp /tmp/wh/* wheels/
#      and carry it: run(command="scripts/gpu_check.sh", carry=["wheels"]). Without wheels that half is skipped.
#   1. the sustained bf16 GEMM rate against one isolated call (scripts/gemm_sustained.py), causal attention per SDPA
#      backend and sequence length, alone and sustained (scripts/attention_sustained.py), the saved activation
#      bytes per layer against the estimator's, eager and inductor-compiled, and the attention paths only CUDA takes
#      (scripts/cuda_attention_check.py: seq1f1b's lower-right bias, CP's grouped K/V, the CP op's fused kernels, the
#      windowed band and sinks beside causal flash), and on two GPUs or more a
#      GEMM loop beside NCCL collectives (scripts/collective_contention.py, the profiles' collective_sm_share);
#   2. `autoconf profile` of this GPU with the compute tables of MODEL at TP widths 1-MAXTP;
#   3. `autoconf validate` of MODEL on that profile: CONFIGS single-GPU layouts trained STEPS steps each by the
#      executor as `launch` runs it (compiled blocks on CUDA), predicted vs measured step time and peak memory;
#   4. while time is left (DEADLINE_S after the start), a quick profile of MODEL2's blocks (MODEL2= skips it); by
#      default an MoE model, so its routing block and routed experts per (ep, etp) are timed on a GPU
#      (docs/moe-executor.md, "Profiling").
# MODEL= stops after step 1.
# The lent machine returns at most eight files from its OUT: this writes there the whole log (gpu_check.log), the
# tables and JSONs read most (lean_vs_torchtitan.md, gemm_sustained.json, attention_sustained.json,
# attention_check.json, report.json, profile.json) and everything else packed (work.tgz); the work folder is W
# (default /tmp/gpu-check).
#
#   scripts/gpu_check.sh                                    # on the GPU machine
#   OUT=/tmp/gc MODEL=tiny-gpt SEQ=128 GB=8 MAXTP=2 LEAN_MODEL=tiny-llama LEAN_TT_FLAVOR=debugmodel LEAN_LAYERS=2 \
#     LEAN_SEQ=64 LEAN_STEPS=3 MOE_MODEL=tiny-moe MOE_SEQ=64 MODEL2= ACT_MODEL2= GEMM_TINY=1 scripts/gpu_check.sh  # CPU dry run
set -u
cd "$(dirname "$0")/.."
RET=${OUT:-out/gpu-check}
W=${W:-/tmp/gpu-check}
MODEL=${MODEL-gpt3-1.3b}
MODEL2=${MODEL2-qwen3-30b-a3b}
ACT_MODEL2=${ACT_MODEL2-llama3-8b}  # the second model of the saved-activation check (step 1)
SEQ=${SEQ:-2048}
GB=${GB:-16}
CONFIGS=${CONFIGS:-4}
STEPS=${STEPS:-6}
MAXTP=${MAXTP:-8}
DEADLINE_S=${DEADLINE_S:-480}
LEAN_MODEL=${LEAN_MODEL:-llama3-8b}
LEAN_TT_FLAVOR=${LEAN_TT_FLAVOR:-8B}
LEAN_LAYERS=${LEAN_LAYERS:-8}
LEAN_SEQ=${LEAN_SEQ:-8192}
LEAN_MB=${LEAN_MB:-2}
LEAN_STEPS=${LEAN_STEPS:-10}
LEAN_TIMEOUT=${LEAN_TIMEOUT:-150}
LEAN_SELECTIVE=${LEAN_SELECTIVE:-alternate_matmuls}  # torchtitan's per-op policy: the same recompute in both runs
MOE_MODEL=${MOE_MODEL-qwen3-30b-a3b}
MOE_LAYERS=${MOE_LAYERS:-4}
MOE_SEQ=${MOE_SEQ:-4096}
MOE_MB=${MOE_MB:-2}
GEMM_TINY=${GEMM_TINY:-}
LEAN_EXECUTOR=${LEAN_EXECUTOR:-1}  # 0: estimate the lean layout but train only torchtitan on it
CHECKS=${CHECKS:-1}                # 0: skip step 1 (GEMM rate, saved activations, attention paths)
PROFILE_SEQ=${PROFILE_SEQ:-}       # a sequence length the profile also times (autoconf profile --seq-len)
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-200}  # an 8B model's blocks with 8192-token attention took more than 200 s on an H200
rm -rf "$W"
mkdir -p "$RET" "$W"
exec > >(tee "$RET/gpu_check.log") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - start))); }
say() { echo "== [$(( $(date +%s) - start ))s] $*"; }

say "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv 2>&1
python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'python', sys.version.split()[0])" 2>&1

say "executor vs torchtitan: $LEAN_MODEL shape, $LEAN_LAYERS layers, seq $LEAN_SEQ, batch $LEAN_MB, $LEAN_SELECTIVE"
lean_run() {  # TAG MODEL LAYERS SEQ MB: estimate (autoconf and torchtitan presets) and train one layout with the executor
    python3 scripts/lean_report.py setup "$2" "$3" "$W" "$1" 2>&1
    for fw in autoconf torchtitan; do
        timeout 60 python3 -m autoconf estimate --model "$W/$1-model.json" --cluster "$W/$1-cluster.json" --tp 1 \
            --pp 1 --dp 1 --micro-batch "$5" --global-batch "$5" --seq-len "$4" --recompute selective \
            --selective-recompute "$LEAN_SELECTIVE" --framework "$fw" --out "$W/$1-plan-$fw.json" >>"$W/$1.log" 2>&1
    done
    if [ "$1" != lean ] || [ "$LEAN_EXECUTOR" = 1 ]; then
        timeout "$LEAN_TIMEOUT" python3 -m autoconf launch "$W/$1-plan-autoconf.json" --steps "$LEAN_STEPS" \
            --metrics "$W/$1-executor.jsonl" --force >>"$W/$1.log" 2>&1
        say "$1 executor exit $?"
    fi
}
lean_run lean "$LEAN_MODEL" "$LEAN_LAYERS" "$LEAN_SEQ" "$LEAN_MB"
if ls wheels/torchtitan-*.whl >/dev/null 2>&1; then
    site="$W/tt-site"
    pip install --no-deps --no-index --target "$site" wheels/*.whl >>"$W/lean.log" 2>&1
    PYTHONPATH="$site:$PYTHONPATH" timeout "$LEAN_TIMEOUT" python3 scripts/torchtitan_bench.py \
        --flavor "$LEAN_TT_FLAVOR" --layers "$LEAN_LAYERS" --seq "$LEAN_SEQ" --batch "$LEAN_MB" --steps "$LEAN_STEPS" \
        --out "$W/lean-torchtitan.json" >>"$W/lean.log" 2>&1
    say "torchtitan exit $?"
else
    say "no wheels/torchtitan-*.whl carried: torchtitan skipped"
fi
tail -n 4 "$W/lean.log"
python3 scripts/lean_report.py report "$W" lean >"$RET/lean_vs_torchtitan.md" 2>>"$W/lean.log"
cat "$RET/lean_vs_torchtitan.md"

if [ "$CHECKS" = 1 ]; then
say "sustained bf16 GEMM rate against one isolated call (the data-sheet profiles' matmul efficiency)"
timeout 90 python3 scripts/gemm_sustained.py --seconds 20 --window 2 ${GEMM_TINY:+--tiny} >"$RET/gemm_sustained.json" 2>>"$W/gemm.log"
say "gemm exit $?"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print({k: round(v['back_to_back_tflops']) for k, v in
d['shapes'].items()}); print([(round(w['tflops']), w.get('sm_mhz'), w.get('power_w')) for w in
d['sustained_block']['windows']])" "$RET/gemm_sustained.json" 2>&1

say "causal attention per SDPA backend and sequence, and sustained (the profiles' attention curves; docs/compute-model.md)"
timeout 150 python3 scripts/attention_sustained.py --seconds 20 --window 2 ${GEMM_TINY:+--tiny} >"$RET/attention_sustained.json" 2>>"$W/attention.log"
say "attention exit $?"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(d['default_backend'], d['cudnn']);
[print(k, s, {n: v and round(v) for n, v in r.items() if n != 'error'} or r) for k, rows in d['kernels'].items() for s, r in rows.items()];
print([(round(w['forward_backward_tflops']), w.get('sm_mhz'), w.get('power_w')) for w in d['sustained']['windows']]);
print('median SM MHz', d['sustained']['median_sm_mhz'], 'assumed', d['profile']['assumed_sm_mhz'], 'profile', d['profile']['cluster'],
      {k: {s: (round(r['forward_tflops']), round(r['backward_tflops'])) for s, r in rows.items()} for k, rows in d['profile']['kernels'].items()})" \
    "$RET/attention_sustained.json" 2>&1

say "saved activations per layer vs the memory estimator"
timeout 60 python3 scripts/saved_activations.py --models ${MODEL:-gpt3-1.3b} ${ACT_MODEL2:+"$ACT_MODEL2"} 2>&1 | tail -n 12

say "compiled (inductor) blocks' saved activations vs the estimate's compiled count (docs/memory.md)"
timeout 180 python3 scripts/saved_activations.py --models llama3-8b --tokens 1 4096 --compile \
    --recompute none selective selective-op 2>&1 | grep -E "^model|True|error" | head -n 4

NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$NGPU" -ge 2 ]; then
    say "a GEMM beside NCCL collectives on $NGPU GPUs (the profiles' collective_sm_share; docs/accuracy.md)"
    timeout 120 torchrun --nproc-per-node "$NGPU" --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 \
        scripts/collective_contention.py >"$W/contention.json" 2>>"$W/contention.log"
    cat "$W/contention.json"
else
    say "one GPU: no collective to measure beside a GEMM (collective_sm_share stays the data sheet's)"
fi

say "seq1f1b chunks, torch's CP ring and the executor's masked attention on this device's kernels (docs/long-context.md)"
timeout 120 python3 scripts/cuda_attention_check.py >"$RET/attention_check.json" 2>>"$W/attention.log"
cat "$RET/attention_check.json"
fi

if [ -z "$MODEL" ]; then
    rm -rf "$W/tt-site"; tar czf "$RET/work.tgz" -C "$(dirname "$W")" "$(basename "$W")"; say "done (MODEL= : no profile)"
    exit 0
fi
say "profile: $MODEL blocks at tp 1..$MAXTP (left $(left) s)"
profile="$W/profile.json"
timeout "$PROFILE_TIMEOUT" python3 -m autoconf profile --out "$profile" --model "$MODEL" --max-tp "$MAXTP" \
    ${PROFILE_SEQ:+--seq-len "$PROFILE_SEQ"} --force \
    >"$W/profile.log" 2>&1
code=$?
tail -n 12 "$W/profile.log"
if [ $code -ne 0 ] || [ ! -s "$profile" ]; then
    say "profile failed ($code): validating on the bundled profile instead"
    profile="$W/lean-cluster.json"  # this device's data sheet as one rank (lean_report.py setup wrote it)
else
    cp "$profile" "$RET/profile.json"
fi

say "validate: $CONFIGS layouts of $MODEL, global batch $GB, seq $SEQ, $STEPS steps (left $(left) s)"
timeout $(( $(left) > 60 ? $(left) - 20 : 40 )) python3 -m autoconf validate --model "$MODEL" --cluster "$profile" \
    --global-batch "$GB" --seq-len "$SEQ" --configs "$CONFIGS" --steps "$STEPS" --out "$W/validate" --force \
    >"$W/validate.log" 2>&1
vcode=$?
say "validate exit $vcode"
tail -n 30 "$W/validate.log"
cp "$W/validate/report.json" "$RET/report.json" 2>/dev/null

if [ -n "$MOE_MODEL" ] && [ "$(left)" -gt 100 ]; then
    say "MoE: the executor on $MOE_MODEL's shape, $MOE_LAYERS layers, seq $MOE_SEQ, batch $MOE_MB (left $(left) s)"
    LEAN_TIMEOUT=$(( $(left) - 10 )) lean_run moe "$MOE_MODEL" "$MOE_LAYERS" "$MOE_SEQ" "$MOE_MB"
    tail -n 3 "$W/moe.log"
    python3 scripts/lean_report.py report "$W" lean moe >"$RET/lean_vs_torchtitan.md" 2>>"$W/lean.log"
    cat "$RET/lean_vs_torchtitan.md"
fi
if [ -n "$MODEL2" ] && [ "$(left)" -gt 90 ]; then
    say "quick profile: $MODEL2 blocks at tp 1..$MAXTP (left $(left) s)"
    timeout $(( $(left) - 15 )) python3 -m autoconf profile --out "$W/profile2.json" --model "$MODEL2" \
        --max-tp "$MAXTP" --quick --force >"$W/profile2.log" 2>&1
    say "quick profile exit $?"
    tail -n 6 "$W/profile2.log"
fi
rm -rf "$W/tt-site"
tar czf "$RET/work.tgz" -C "$(dirname "$W")" "$(basename "$W")"
say "done"
ls -la "$RET"
