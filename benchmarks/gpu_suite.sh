#!/usr/bin/env bash
# Every GPU measurement in one run of at most 9 minutes on a bare GPU machine (torch, timm,
# transformers, peft there; nnunetv2 and omegaconf come as wheels from `make gpu-wheels`,
# carried in .gpu_wheels/). Each stage has its own time limit, so a hang or a crash loses
# that stage, not the run. Results go to $OUT (default ./gpu_results), in four files:
#   gpu.txt         the card
#   stages.txt      each stage's exit status and wall time (and whether it hit its limit)
#   results.jsonl   every figure, as JSON lines
#   suite.log       everything the stages printed
# Stages, most important first (a stage that would start with under 20 s left is skipped):
#   compile_check   check_regional_compile: how often blocks, neck and head of segformer_dinov3_large ran
#                   their compiled graphs in a training step, a no_grad and an inference_mode eval, graphs,
#                   graph breaks, recompiles; one block's training step eager vs compiled. Exits 1 (rc=1 in
#                   stages.txt, the reason in suite.log) when a part ran eager or recompiled unexpectedly
#   nnunet_zoo      bench_nnunet_training: plan, preprocess, train 2d_segformer_dinov3_large
#                   (2 x 30 iterations, compiled regionally by default), predict
#   nnunet_ddp      bench_nnunet_training: the same model through torchrun with one process, nnU-Net's
#                   DDP code path on one GPU (1 x 10 iterations, fold 1, no prediction)
#   zoo_segformer   bench_models: segformer_dinov3_large, eager and regional, backbone / model, training
#                   (with dynamo's recompile and graph-break logs)
#   zoo_whole       bench_models: segformer_dinov3_large compiled as one graph (at most 150 s)
#   zoo_heads       bench_models: eomt, mask2former, upernet and dpt on dinov3_large, eager and regional,
#                   training (EoMT first: its target is 0.85x the backbone's training speed)
#   nnunet_unet     bench_nnunet_training: nnU-Net's own 2d U-Net, as long, on the same data
#   m2f_loss        bench_mask2former_loss: transformers' matcher vs the batched one
#   zoo_mit         bench_models: segformer_mit_b5, eager and regional, training and inference
#
#   make gpu-wheels && bash benchmarks/gpu_suite.sh          # on the GPU machine
#   SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh               # tiny models, CPU: checks the script
#   SUITE_STAGES="nnunet_zoo zoo_segformer" SUITE_SECONDS=250 bash benchmarks/gpu_suite.sh  # some stages
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
python="${PYTHON:-python3}"
budget="${SUITE_SECONDS:-530}"
started=$SECONDS
export PYTHONUNBUFFERED=1
rm -rf /tmp/segzoo_nnunet_bench  # nnU-Net folders of an earlier run on this machine

if [ -d .gpu_wheels ] && ! "$python" -c "import nnunetv2, omegaconf" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/segzoo_site .gpu_wheels/*.whl \
    >>"$out/suite.log" 2>&1 || echo "wheel install failed (see suite.log)" | tee -a "$out/stages.txt"
  export PYTHONPATH="/tmp/segzoo_site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ -n "${SUITE_SMOKE:-}" ]; then
  device=cpu
  tiny='{"backbone_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}, "decoder_hidden_size": 32}'
  tiny_mit='{"backbone_kwargs": {"hidden_sizes": [16, 32, 32, 64], "depths": [1, 1, 1, 1]}, "decoder_hidden_size": 32}'
  large=segformer_dinov3_small; upernet=upernet_dinov3_small; m2f=mask2former_dinov3_small; mit=segformer_mit_b0
  dpt=dpt_dinov3_small; eomt=eomt_dinov3_small; tiny_eomt='{"backbone_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}, "num_blocks": 1}'
  size=64; batch=2; backend=aot_eager; nnunet_args=(--model segformer_dinov3_small --size 64 --cases 6 --epochs 1
    --iterations 2 --tiny --workers 1 --device cpu); m2f_args=(--batch 2 --img-size 64 --queries 8 --device cpu)
  ddp_args=()
  echo "SMOKE RUN (tiny models on CPU): the figures mean nothing" | tee -a "$out/suite.log"
else
  device=cuda; tiny='{}'; tiny_mit='{}'
  large=segformer_dinov3_large; upernet=upernet_dinov3_large; m2f=mask2former_dinov3_large; mit=segformer_mit_b5
  dpt=dpt_dinov3_large; eomt=eomt_dinov3_large; tiny_eomt='{}'
  size=512; batch=8; backend=inductor; nnunet_args=(--device cuda --workers 12 --batch "$batch" --cases 12 --iterations 30)
  m2f_args=(--batch 8 --img-size 512 --device cuda); ddp_args=(--epochs 1 --iterations 10)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
"$python" -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__,
  'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

# stage NAME SECONDS COMMAND...: run with a limit no later than the suite's budget allows, in a
# process group of its own, killed whole at the limit and after: nnU-Net's augmentation workers
# and inductor's compile workers must not outlive their stage and slow the next one down
stage() {
  local name=$1 limit=$2; shift 2
  if [ -n "${SUITE_STAGES:-}" ] && [[ " $SUITE_STAGES " != *" $name "* ]]; then return; fi
  local left=$(( budget - (SECONDS - started) ))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then echo "$name skipped: ${left}s left of the ${budget}s budget" | tee -a "$out/stages.txt"; return; fi
  echo "=== $name (limit ${limit}s)" | tee -a "$out/suite.log"
  local t0=$SECONDS
  setsid "$@" >>"$out/suite.log" 2>&1 &
  local pid=$!
  ( sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null; sleep 10; kill -KILL -- "-$pid" 2>/dev/null ) &
  local watchdog=$!
  wait "$pid"
  local rc=$?
  kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
  kill -KILL -- "-$pid" 2>/dev/null
  (( SECONDS - t0 >= limit )) && rc="$rc (hit its limit)"
  echo "$name rc=$rc ${limit}s-limit $(( SECONDS - t0 ))s" | tee -a "$out/stages.txt"
}

bench=("$python" benchmarks/bench_models.py --img-size "$size" --batch "$batch" --device "$device"
       --peak-tflops 989 --steps 5 --warmup 2 --backend "$backend" --json "$out/results.jsonl")
nnunet=("$python" benchmarks/bench_nnunet_training.py "${nnunet_args[@]}" --work /tmp/segzoo_nnunet_bench
        --json "$out/results.jsonl")
check=("$python" benchmarks/check_regional_compile.py --device "$device" --backend "$backend" --img-size "$size"
       --json "$out/results.jsonl")
if [ -n "${SUITE_SMOKE:-}" ]; then check+=(--batch 2); else
  check+=(--model "$large" --batch "$batch" --amp bf16 --model-kwargs '{}'); fi
stage compile_check 90 "${check[@]}"
stage nnunet_zoo 220 "${nnunet[@]}" --stages zoo
stage nnunet_ddp 80 "${nnunet[@]}" --stages zoo --torchrun 1 --fold 1 --no-predict ${ddp_args[@]+"${ddp_args[@]}"}
stage zoo_segformer 70 env TORCH_LOGS=recompiles,graph_breaks "${bench[@]}" --models "$large" --measure train \
  --variants backbone model --compile-modes eager regional --model-kwargs "$tiny"
stage zoo_whole 150 "${bench[@]}" --models "$large" --variants backbone model --compile-modes whole \
  --measure train --model-kwargs "$tiny"
stage zoo_heads 210 "${bench[@]}" --models "$eomt" "$m2f" "$upernet" "$dpt" --variants backbone model \
  --measure train --compile-modes eager regional --model-kwargs "$tiny" --kwargs-for "$eomt" "$tiny_eomt"
stage nnunet_unet 130 "${nnunet[@]}" --stages unet
stage m2f_loss 25 "$python" benchmarks/bench_mask2former_loss.py "${m2f_args[@]}" --json "$out/results.jsonl"
stage zoo_mit 80 "${bench[@]}" --models "$mit" --variants backbone model --compile-modes eager regional \
  --model-kwargs "$tiny_mit"
echo "suite done in $(( SECONDS - started ))s" | tee -a "$out/stages.txt"
