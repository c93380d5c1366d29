#!/usr/bin/env bash
# The main job on this machine as a small CPU cluster: profile (quick, 2 gloo ranks) -> plan tiny-gpt on the
# measured profile -> launch the plan for a few steps. Everything goes to a new folder runs/demo-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "== autoconf profile (quick) -> $out/profile.json"
autoconf profile --quick --out "$out/profile.json"
echo "== autoconf plan"
autoconf plan --model tiny-gpt --cluster "$out/profile.json" --global-batch 16 --seq-len 128 --top 5 \
    --out "$out/plan.json" --explain "$out/explain"
echo "== autoconf launch"
autoconf launch "$out/plan.json" --steps 10 --metrics "$out/metrics.jsonl"
echo "== done: $out (plan.json, explain/*.png, metrics.jsonl)"
