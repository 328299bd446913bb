#!/usr/bin/env bash
# The GPU measurements of issue 7 in one run, for a session that is lent a GPU machine
# (it has torch, timm, transformers, peft, safetensors, huggingface_hub; no nnunetv2/omegaconf,
# which these scripts do not need). About 6-8 minutes on one H100. Results land in $OUT (or ./gpu_results).
#   segformer_dinov3_large at 512x512, batch 8, bf16: eager, then compiled at a fixed size,
#   each against the backbone alone and the seed plan's layout; then checkpointing memory.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
common=(--models segformer_dinov3_large --img-size 512 --batch 8 --device cuda --amp bf16 --peak-tflops 989
        --steps 10 --warmup 3 --json "$out/bench.jsonl")
python benchmarks/bench_models.py "${common[@]}" 2>&1 | tee "$out/eager.txt"
python benchmarks/bench_models.py "${common[@]}" --compile 2>&1 | tee "$out/compiled.txt"
python benchmarks/bench_finetune.py --model segformer_dinov3_large --device cuda --batch-size 8 --amp --steps 5 \
  2>&1 | tee "$out/finetune.txt"
