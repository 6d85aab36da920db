#!/usr/bin/env bash
# The GPU runs behind docs/RESULTS.md. Runs on the GPU machine from the repository root, with
# the release binary at .dev/slb and the data archive at .dev/cifar10-jpeg.tar.xz (both carried
# from the build machine), torch 2.11 in the machine's python3. Writes logs under $OUT.
#   scripts/gpu-results.sh smoke   # 2 epochs each: plain-PyTorch baseline, ours W1A8, ours float
#   scripts/gpu-results.sh full    # 100-epoch runs (W1A8, float), packed evaluation
set -uo pipefail
R=$PWD
OUT=${OUT:-$R/out}
BIN=$R/.dev/slb
mkdir -p "$OUT" /tmp/d /tmp/runs
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
exec > >(tee -a "$OUT/main.log") 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -d /tmp/d/cifar10 ] || tar -xJf .dev/cifar10-jpeg.tar.xz -C /tmp/d
DATA=/tmp/d/cifar10
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/gpu-mem.csv" &
MEMPID=$!

train() { # name limit_s args...
  local name=$1 limit=$2; shift 2
  echo "== $name: slb train $* (limit ${limit}s)"
  local t0=$(date +%s.%N)
  timeout "$limit" "$BIN" train --data "$DATA" --device cuda --out "/tmp/runs/$name" "$@"
  echo "== $name: exit $? after $(echo "$(date +%s.%N) - $t0" | bc) s"
  cat "/tmp/runs/$name/metrics.jsonl" 2>/dev/null | tail -n 3
  if [ -f "/tmp/runs/$name/model.slb" ]; then
    "$BIN" eval --model "/tmp/runs/$name/model.slb" --data "$DATA" --json
  fi
}

case "${1:-smoke}" in
  smoke)
    (cd /tmp/d && timeout 120 python3 "$R/scripts/baseline_pytorch.py" cifar10 w1a8 3)
    train w1a8-smoke 150 --config trainer/configs/fast.toml --epochs 100 --stop-after 3 --no-export
    train float-smoke 90 --config trainer/configs/float.toml --epochs 100 --stop-after 3 --no-export
    ;;
  full)
    train w1a8 330 --config trainer/configs/fast.toml
    train float 200 --config trainer/configs/float.toml
    ;;
esac
kill $MEMPID 2>/dev/null
sort -n "$OUT/gpu-mem.csv" | tail -1 | sed 's/^/peak GPU memory used (MiB, nvidia-smi): /'
tar -czf "$OUT/runs.tgz" --exclude='*.ot' -C /tmp/runs . 2>/dev/null
date -u
