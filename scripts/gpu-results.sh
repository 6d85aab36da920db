#!/usr/bin/env bash
# The GPU runs behind docs/RESULTS.md. Runs on the GPU machine from the repository root, with
# the release binary at .dev/slb and the data archive at .dev/cifar10-jpeg.tar.xz (both carried
# from the build machine), torch 2.11 in the machine's python3. Writes logs under $OUT.
#   scripts/gpu-results.sh smoke   # 2 epochs each: plain-PyTorch baseline, ours W1A8, ours float
#   scripts/gpu-results.sh w1a8    # ResNet18-CIFAR W1A8, 100 epochs, packed evaluation
#   scripts/gpu-results.sh float   # plain-PyTorch baseline (3 epochs) and our float baseline, 100 epochs
#   scripts/gpu-results.sh profile # where a W1A8 and a float step's time goes (2 epochs each,
#                                  # 40 steps profiled per epoch: phases, host vs device time)
#   scripts/gpu-results.sh trace   # GPU time per kernel of 10 eager steps, W1A8 and float (Kineto)
#   scripts/gpu-results.sh speed   # epoch times side by side: W1A8 with CUDA graphs, W1A8 eager,
#                                  # float with graphs (a few epochs each, activation nodes on)
#   scripts/gpu-results.sh avx512  # the runtime's kernel proptests on the host CPU (AVX-512 VNNI,
#                                  # VPOPCNTDQ), which the build machine lacks: carry the test
#                                  # binary as .dev/runtime-tests (scripts/gpu-results.sh prints how)
set -uo pipefail
R=$PWD
OUT=${OUT:-$R/out}
BIN=$R/.dev/slb
mkdir -p "$OUT" /tmp/d /tmp/runs
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
exec > >(tee -a "$OUT/main.log") 2>&1
if [ "${1:-}" = "avx512" ]; then
  # Build here with: cargo test -p slb-runtime --release --no-run, then copy the
  # target/release/deps/slb_runtime-<hash> executable to .dev/runtime-tests.
  grep -o -w -E 'avx512(f|bw|_vnni|_vpopcntdq)' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  SLB_REQUIRE_KERNELS=avx512 .dev/runtime-tests --nocapture > "$OUT/avx512-tests.log" 2>&1
  rc=$?
  grep -E "skipped|NOT TESTED|runs on this CPU|test result|panicked" "$OUT/avx512-tests.log"
  if grep -q "skipped .*avx512" "$OUT/avx512-tests.log"; then echo "AVX-512 kernels were skipped"; exit 1; fi
  echo "runtime tests exit $rc"
  exit $rc
fi

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -d /tmp/d/cifar10 ] || tar -xJf .dev/cifar10-jpeg.tar.xz -C /tmp/d
DATA=/tmp/d/cifar10
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$OUT/gpu-mem.csv" &
MEMPID=$!

train() { # name limit_s args...
  local name=$1 limit=$2; shift 2
  echo "== $name: slb train $* (limit ${limit}s)"
  local t0=$(date +%s)
  timeout "$limit" "$BIN" train --data "$DATA" --device cuda --out "/tmp/runs/$name" "$@"
  echo "== $name: exit $? after $(( $(date +%s) - t0 )) s"
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
  w1a8)   # the main run: ResNet18-CIFAR W1A8, 100 epochs, then packed evaluation
    train w1a8 390 --config trainer/configs/fast.toml
    ;;
  profile)   # per-phase step times (host enqueue vs total), soft phase and float
    # quant_delay 0: the activation nodes quantize from the first step, as in most of a run.
    sed 's/^quant_delay = .*/quant_delay = 0/' trainer/configs/fast.toml > /tmp/fast-q0.toml
    train w1a8-profile 120 --config /tmp/fast-q0.toml --epochs 100 --stop-after 2 --no-export --profile-steps 40
    train float-profile 90 --config trainer/configs/float.toml --epochs 100 --stop-after 2 --no-export --profile-steps 40
    ;;
  trace)   # which kernels take a step's GPU time (10 eager steps of epoch 1, activation nodes on)
    sed 's/^quant_delay = .*/quant_delay = 0/' trainer/configs/fast.toml > /tmp/fast-q0.toml
    train w1a8-trace 120 --config /tmp/fast-q0.toml --epochs 100 --stop-after 1 --no-export --profile-steps 10 --trace "$OUT/w1a8-trace.json"
    python3 scripts/trace_summary.py "$OUT/w1a8-trace.json" 10 45
    train float-trace 90 --config trainer/configs/float.toml --epochs 100 --stop-after 1 --no-export --profile-steps 10 --trace "$OUT/float-trace.json"
    python3 scripts/trace_summary.py "$OUT/float-trace.json" 10 25
    gzip -f "$OUT"/*-trace.json
    ;;
  speed)   # CUDA graphs against the eager step, same binary, same machine, same minute
    sed 's/^quant_delay = .*/quant_delay = 0/' trainer/configs/fast.toml > /tmp/fast-q0.toml
    (cat /tmp/fast-q0.toml; echo 'cuda_graphs = false') > /tmp/fast-q0-eager.toml
    train w1a8-graphs 150 --config /tmp/fast-q0.toml --epochs 100 --stop-after 4 --no-export
    train w1a8-eager 150 --config /tmp/fast-q0-eager.toml --epochs 100 --stop-after 3 --no-export
    train float-graphs 90 --config trainer/configs/float.toml --epochs 100 --stop-after 4 --no-export
    ;;
  float)   # side-by-side plain-PyTorch baseline (3 epochs), then our float baseline, 100 epochs
    (cd /tmp/d && timeout 45 python3 "$R/scripts/baseline_pytorch.py" cifar10 w1a8 3)
    train float 210 --config trainer/configs/float.toml
    ;;
esac
kill $MEMPID 2>/dev/null
sort -n "$OUT/gpu-mem.csv" | tail -1 | sed 's/^/peak GPU memory used (MiB, nvidia-smi): /'
tar -czf "$OUT/runs-${1:-smoke}.tgz" --exclude='*.ot' -C /tmp/runs . 2>/dev/null
date -u
