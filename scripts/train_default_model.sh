#!/usr/bin/env bash
# Reproduces the bundled default model, rwkvkit/data/default/model.safetensors: a byte-level
# RWKV-4 (4 layers, width 256, 3.5M parameters) trained on the Shakespeare corpus (text: Open
# Knowledge Foundation, CC-BY 2.5). With ARCH=gpt it trains the same-size GPT baseline the same way.
#
#   bash scripts/train_default_model.sh                 # RWKV-4, then export fp16 into the package
#   ARCH=gpt bash scripts/train_default_model.sh         # the transformer baseline (not exported)
#
# About 50 minutes per model at ~500-1500 tokens/s (a share of a busy 2-core machine); the two
# were trained at the same time, one thread each. Environment: CORPUS, WORK, ARCH, PHASES.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-../shared/corpora/shakespeare}
WORK=${WORK:-runs/default}
ARCH=${ARCH:-rwkv4}
# Two phases: 500 steps of warmup + cosine decay, then resumed to 1000 steps (the cosine schedule
# restarts warm at the resume: lr goes back up to about half the peak and decays again).
PHASES=${PHASES:-500 1000}
PY=${PYTHON:-python}

if [ ! -f "$WORK/data/manifest.json" ]; then
  $PY -m rwkvkit prepare "$CORPUS" --out "$WORK/data" --tokenizer byte --val-fraction 0.05
fi
for STEPS in $PHASES; do
RESUME=()
if [ -f "$WORK/$ARCH/rwkvkit-run.json" ]; then RESUME=(--resume); fi
$PY -m rwkvkit train --data "$WORK/data" --out "$WORK/$ARCH" --arch "$ARCH" \
  --n-layer 4 --n-embd 256 --ffn-mult 4 --n-head 4 --ctx-len 256 --batch-size 8 \
  --lr 1e-3 --lr-final 1e-4 --warmup 50 --decay cosine --steps "$STEPS" --weight-decay 0.01 \
  --grad-clip 1.0 --seed 0 --precision fp32 --save-every 100 --eval-every 100 --eval-windows 64 \
  --threads 1 "${RESUME[@]}"
done
if [ "$ARCH" = rwkv4 ]; then
  $PY -m rwkvkit convert "$WORK/$ARCH" rwkvkit/data/default/model.safetensors --to safetensors --dtype fp16
fi
