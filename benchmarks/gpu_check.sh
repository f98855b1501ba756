#!/usr/bin/env bash
# The GPU figures of docs/performance.md, in one short run on a machine with one CUDA GPU
# (run by hand, or through the lent device: carry data/split, the ML-100K split of
# `dvc repro`). Each line is one throughput.py run of DeepFM on the real split; figures go
# to $OUT (or benchmarks/results/gpu) as JSON and to stdout.
#
#   bash benchmarks/gpu_check.sh            # about 5 minutes on an H200
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works without `pip install -e .`
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

run() {  # name, then throughput.py's --train overrides
  local name=$1
  shift
  echo "== $name: $*"
  python benchmarks/throughput.py --models deepfm --repeats 3 --device cuda \
    --out "$out/$name.json" --train "$@" 2>&1 | tail -3
}

run batch2048 batch_size=2048
run batch65536_sqrt batch_size=65536 lr_scaling=sqrt
run batch65536_sqrt_device batch_size=65536 lr_scaling=sqrt device_epochs=true
run batch65536_sqrt_device_bf16 batch_size=65536 lr_scaling=sqrt device_epochs=true amp=true
run batch65536_sqrt_device_compile batch_size=65536 lr_scaling=sqrt device_epochs=true \
  compile_mode=reduce-overhead
run batch262144_sqrt_device batch_size=262144 lr_scaling=sqrt device_epochs=true

# torchrun --nproc_per_node=1 against the plain run: the train stage, 5 epochs on CUDA, in a
# scratch folder whose params.yaml differs from the repository's in those keys only
repo=$(pwd)
scratch=$(mktemp -d)
python - "$scratch/params.yaml" <<'EOF'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["train"].update(device="cuda", epochs=5, min_epochs=5, val_every=5)
yaml.safe_dump(params, open(sys.argv[1], "w"), sort_keys=False)
EOF
for launcher in plain torchrun; do
  args=(--split "$repo/data/split" --model "$scratch/m.pt" --curves "$scratch/c"
        --timing "$scratch/t-$launcher")
  start=$(date +%s.%N)
  if [ "$launcher" = plain ]; then
    (cd "$scratch" && python "$repo/src/stages/train.py" "${args[@]}" >/dev/null 2>&1) \
      || echo "plain run failed"
  else
    (cd "$scratch" && torchrun --standalone --nproc_per_node=1 "$repo/src/stages/train.py" \
      "${args[@]}" >/dev/null 2>&1) || echo "torchrun run failed"
  fi
  wall=$(python -c "print(round($(date +%s.%N) - $start, 1))")
  echo "$launcher: $wall s wall; $(cat "$scratch/t-$launcher/summary.json" 2>/dev/null)"
done
