#!/usr/bin/env bash
# The GPU checks and figures of docs/performance.md, in one short run on a machine with one
# CUDA GPU (run by hand, or through a lent device: carry data/split, the ML-100K split of
# `dvc repro`). Needs torch, numpy, pandas, pyarrow and pyyaml; not dvc or dvclive.
#   1. every model trains 3 epochs on the GPU (the CUDA path of the training loop);
#   2. DeepFM under torchrun --nproc_per_node=1 (DDP over NCCL) against the plain run;
#   3. throughput.py's DeepFM rows: batch size, device epochs, bf16, compile.
# Figures go to $OUT (or benchmarks/results/gpu) as JSON and to stdout.
#
#   bash benchmarks/gpu_check.sh            # DEVICE=cpu: the same steps on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works without `pip install -e .`
export PYTHONUNBUFFERED=1
device="${DEVICE:-cuda}"
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

echo "== 1. every model, 3 epochs on $device"
python benchmarks/gpu_train_check.py --epochs 3 --out "$out/models.json" --train device="$device" \
  --models deepfm xdeepfm attention_deepfm sasrec fm lr itempop item_cooccurrence ease \
  || echo "FAILED: models"
echo "== 1b. DeepFM: grouped BCE, device epochs, bf16 (CUDA only)"
amp=false
[ "$device" = cuda ] && amp=true
python benchmarks/gpu_train_check.py --epochs 3 --out "$out/variants.json" --models deepfm \
  --model-params loss=bce_grouped --train device="$device" device_epochs=true amp="$amp" \
  || echo "FAILED: variants"
python benchmarks/gpu_train_check.py --epochs 3 --models deepfm --train device="$device" \
  device_epochs=true || echo "FAILED: device epochs"

echo "== 2. DeepFM 5 epochs: plain, then torchrun --nproc_per_node=1"
python benchmarks/gpu_train_check.py --epochs 5 --out "$out/plain.json" --train device="$device" \
  || echo "FAILED: plain"
torchrun --standalone --nproc_per_node=1 benchmarks/gpu_train_check.py --epochs 5 \
  --out "$out/torchrun.json" --train device="$device" || echo "FAILED: torchrun"

echo "== 3. throughput"
run() {  # name, then throughput.py's --train overrides
  local name=$1
  shift
  echo "== $name: $*"
  python benchmarks/throughput.py --models deepfm --repeats 2 --device "$device" \
    --out "$out/$name.json" --train "$@" 2>&1 | tail -3 || echo "FAILED: $name"
}
run batch2048 batch_size=2048
run batch65536_sqrt batch_size=65536 lr_scaling=sqrt
run batch65536_sqrt_device batch_size=65536 lr_scaling=sqrt device_epochs=true
[ "$device" = cuda ] && run batch65536_sqrt_device_bf16 batch_size=65536 lr_scaling=sqrt \
  device_epochs=true amp=true
run batch65536_sqrt_device_compile batch_size=65536 lr_scaling=sqrt device_epochs=true \
  compile_mode=reduce-overhead
run batch262144_sqrt_device batch_size=262144 lr_scaling=sqrt device_epochs=true
echo "== done"
