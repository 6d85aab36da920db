#!/usr/bin/env bash
# The GPU runs behind docs/RESULTS.md. Runs on the GPU machine from the repository root, with
# the release binary at .dev/slb and the data archive at .dev/cifar10-jpeg.tar.xz (both carried
# from the build machine), torch 2.11 in the machine's python3. Writes logs under $OUT.
# Prepare .dev on the build machine, after committing:
#   cargo build --release -p slb-trainer && strip -o .dev/slb target/release/slb
#   cp ../shared/data/cifar10-jpeg.tar.xz .dev/ && git rev-parse --short HEAD > .dev/commit
#   scripts/gpu-results.sh smoke   # 2 epochs each: plain-PyTorch baseline, ours W1A8, ours float
#   scripts/gpu-results.sh w1a8    # ResNet18-CIFAR W1A8, 100 epochs, packed evaluation
#   scripts/gpu-results.sh float   # plain-PyTorch baseline (3 epochs) and our float baseline, 100 epochs
#   scripts/gpu-results.sh profile # where a W1A8 and a float step's time goes (2 epochs each,
#                                  # 40 steps profiled per epoch: phases, host vs device time)
#   scripts/gpu-results.sh trace   # GPU time per kernel of 10 eager steps, W1A8 and float (Kineto)
#   scripts/gpu-results.sh speed   # epoch times side by side: W1A8 with CUDA graphs, W1A8 eager,
#                                  # float with graphs (a few epochs each, activation nodes on)
#   scripts/gpu-results.sh table [ROW...]  # the accuracy table (trainer/configs/table.toml): the
#                                  # rows (default all seven: float w1 w2 w4 w1a8 w2a8 w4a8) train
#                                  # at once on the one GPU, each stopped after TABLE_LIMIT s
#                                  # (default 450) and resumed from its checkpoint by the next call
#                                  # on a warm machine; then export and packed `slb eval` per row,
#                                  # one line per row in $OUT/table.tsv. TABLE_CONC=1 first times
#                                  # one W1A8 run alone and two at once (does sharing the GPU raise
#                                  # throughput?). Runs the AVX-512 tests alongside when
#                                  # .dev/runtime-tests is there.
#   scripts/gpu-results.sh dist    # data-parallel training on the one GPU (docs/DISTRIBUTED.md):
#                                  # one process, NCCL with one rank (all-reduce inside the CUDA
#                                  # graph), two ranks sharing the GPU over Gloo with CUDA tensors;
#                                  # 2 epochs each, then 40 profiled steps (the all-reduce phase
#                                  # against the step)
#   scripts/gpu-results.sh fused   # issue 13: the fused activation-node kernels against libtorch's
#                                  # ops on the GPU, bit for bit (the trainer's lib tests named
#                                  # `fused`, carried as .dev/trainer-tests: see the mode), then
#                                  # W1A8 epoch times with and without them, side by side
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

# The accuracy table's rows: overrides of trainer/configs/table.toml.
row_args() {
  case "$1" in
    float) echo "--set float_weights=true --set enable_act_quant=false --set enable_bn_calibration=false" ;;
    w1)    echo "--set enable_act_quant=false" ;;
    w2)    echo "--set weight_quant_dtype=INT2 --set enable_act_quant=false" ;;
    w4)    echo "--set weight_quant_dtype=INT4 --set enable_act_quant=false" ;;
    w1a8)  echo "" ;;
    w2a8)  echo "--set weight_quant_dtype=INT2" ;;
    w4a8)  echo "--set weight_quant_dtype=INT4" ;;
    *) echo "unknown row $1" >&2; return 1 ;;
  esac
}

table_row() { # row limit_s: trains (or resumes) one row into $RUNS/row
  local r=$1 limit=$2 out=$RUNS/$1 args
  args=$(row_args "$r") || return 1
  [ -f "$out/done" ] && { echo "== $r: already done"; return 0; }
  mkdir -p "$out"
  local resume=""
  [ -f "$out/checkpoint.ot" ] && resume="--resume"
  echo "== $r: slb train --config trainer/configs/table.toml $args ${TABLE_EXTRA:-} $resume (limit ${limit}s)" | tee -a "$out/command"
  local t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "$limit" "$BIN" train --config trainer/configs/table.toml $args ${TABLE_EXTRA:-} --data "$DATA" \
    --device "${DEVICE:-cuda}" --out "$out" $resume >> "$out/train.log" 2>&1
  local rc=$?
  echo "== $r: exit $rc after $(( $(date +%s) - t0 )) s; $(grep -c . "$out/metrics.jsonl" 2>/dev/null) epochs in metrics"
  [ $rc = 0 ] && touch "$out/done"
  tail -n 2 "$out/train.log"
}

table_eval() { # row: packed evaluation of a finished row, and its line of table.tsv
  local r=$1 out=$RUNS/$1
  if [ -f "$out/model.slb" ] && ! [ -f "$out/packed.json" ]; then
    "$BIN" eval --model "$out/model.slb" --data "$DATA" --json > "$out/packed.json" 2> "$out/eval.log" \
      || { echo "== $r: slb eval failed"; cat "$out/eval.log"; }
  fi
  python3 - "$r" "$out" "$(cat .dev/commit 2>/dev/null)" <<'PY' | tee -a "$OUT/table.tsv"
import json, os, statistics, sys
row, out, commit = sys.argv[1:4]
m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()] if os.path.exists(os.path.join(out, "metrics.jsonl")) else []
p = json.load(open(os.path.join(out, "packed.json"))) if os.path.exists(os.path.join(out, "packed.json")) else {}
last = m[-1] if m else {}
secs = statistics.median(x["train_seconds"] for x in m[1:]) if len(m) > 1 else float("nan")
print("\t".join(str(v) for v in [row, commit, len(m), "done" if os.path.exists(os.path.join(out, "done")) else "partial",
    round(100 * last.get("test_top1", float("nan")), 2), round(100 * last.get("test_top5", float("nan")), 2),
    p.get("top1", "-"), p.get("top5", "-"), round(secs, 3), round(100 * last.get("train_top1", float("nan")), 2)]))
PY
}

MODE=${1:-smoke}
case "$MODE" in
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
  fused)   # build here: cargo test -p slb-trainer --release --lib --no-run, then copy the
           # target/release/deps/slb_trainer-<hash> executable to .dev/trainer-tests
    .dev/trainer-tests fused --test-threads 1 2>&1 | tail -n 12
    sed 's/^quant_delay = .*/quant_delay = 0/' trainer/configs/fast.toml > /tmp/fast-q0.toml
    (cat /tmp/fast-q0.toml; echo 'fused_kernels = false') > /tmp/fast-q0-unfused.toml
    train w1a8-fused 120 --config /tmp/fast-q0.toml --epochs 100 --stop-after 3 --no-export
    train w1a8-unfused 120 --config /tmp/fast-q0-unfused.toml --epochs 100 --stop-after 3 --no-export
    train w1a8-fused-prof 60 --config /tmp/fast-q0.toml --epochs 100 --stop-after 1 --no-export --profile-steps 40
    ;;
  dist)
    sed 's/^quant_delay = .*/quant_delay = 0/' trainer/configs/fast.toml > /tmp/fast-q0.toml
    train w1a8-1proc 90 --config /tmp/fast-q0.toml --epochs 100 --stop-after 2 --no-export
    train w1a8-nccl1 90 --config /tmp/fast-q0.toml --epochs 100 --stop-after 2 --no-export --nproc 1 --dist-timeout 60
    train w1a8-nccl1-prof 60 --config /tmp/fast-q0.toml --epochs 100 --stop-after 1 --no-export --nproc 1 --dist-timeout 60 --profile-steps 40
    # Two ranks on cuda:0 (an explicit index is kept), over Gloo: not through train(), whose
    # --device cuda would put rank 1 on cuda:1.
    echo "== w1a8-gloo2: 2 ranks sharing cuda:0 over Gloo"
    t0=$(date +%s)
    timeout 150 "$BIN" train --data "$DATA" --device cuda:0 --out /tmp/runs/w1a8-gloo2 \
      --config /tmp/fast-q0.toml --epochs 100 --stop-after 2 --no-export --nproc 2 \
      --dist-backend gloo --dist-timeout 60 --profile-steps 40
    echo "== w1a8-gloo2: exit $? after $(( $(date +%s) - t0 )) s"
    tail -n 2 /tmp/runs/w1a8-gloo2/metrics.jsonl
    ;;
  table)
    shift
    RUNS=${TABLE_RUNS:-/tmp/runs/table}
    mkdir -p "$RUNS"
    df -h /tmp | tail -1
    if [ -x .dev/runtime-tests ]; then
      # The CPU's AVX-512 kernels, on 4 threads beside the training processes.
      ( grep -o -w -E 'avx512(f|bw|_vnni|_vpopcntdq)' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
        RUST_TEST_THREADS=4 nice .dev/runtime-tests --nocapture; echo "runtime tests exit $?" ) > "$OUT/avx512-tests.log" 2>&1 &
      AVXPID=$!
    fi
    if [ "${TABLE_CONC:-0}" = 1 ]; then
      # Does sharing the GPU raise throughput? One W1A8 run alone, then two at once (nodes
      # quantizing from step 0, no BN calibration: the training step alone), 3 epochs each.
      conc() { "$BIN" train --config trainer/configs/table.toml --set quant_delay=0 --set enable_bn_calibration=false \
          --data "$DATA" --device cuda --out "/tmp/runs/conc-$1" --stop-after 3 --no-export > "/tmp/runs/conc-$1.log" 2>&1; }
      rm -rf /tmp/runs/conc-*
      conc solo
      # Wait for these two alone (a bare `wait` also waits for the memory sampler: forever).
      conc pair1 & P1=$!; conc pair2 & P2=$!; wait $P1 $P2
      python3 - <<'PY' | tee "$OUT/concurrency.txt"
import json
def ep(n):
    m = [json.loads(l) for l in open(f"/tmp/runs/conc-{n}/metrics.jsonl")]
    return sum(x["train_seconds"] for x in m[1:]) / len(m[1:])
s, a, b = ep("solo"), ep("pair1"), ep("pair2")
print(f"W1A8 epoch (epochs 2-3, s): alone {s:.3f}; two at once {a:.3f} and {b:.3f}; "
      f"throughput of two at once / one alone: {s / a + s / b:.3f}")
PY
    fi
    # TABLE_EXTRA adds --set overrides to every row (a CPU dry run: DEVICE=cpu TABLE_EXTRA=...).
    ROWS=${*:-float w1 w2 w4 w1a8 w2a8 w4a8}
    PIDS=()
    for r in $ROWS; do table_row "$r" "${TABLE_LIMIT:-450}" & PIDS+=($!); done
    wait "${PIDS[@]}"
    printf 'row\tcommit\tepochs\tstate\ttrainer_top1\ttrainer_top5\tpacked_top1\tpacked_top5\ts_per_epoch_median\ttrain_top1\n' >> "$OUT/table.tsv"
    for r in $ROWS; do table_eval "$r"; done
    [ -n "${AVXPID:-}" ] && { wait "$AVXPID"; grep -E "skipped|test result|panicked|exit|avx512" "$OUT/avx512-tests.log" | head -20; }
    # Everything but checkpoints comes back; the 4-bit models (5.7 MB each) in a file of their own.
    tar -czf "$OUT/table-runs.tgz" --exclude='*.ot' --exclude='w4*/model.slb' -C "$RUNS" .
    tar -czf "$OUT/table-w4-models.tgz" -C "$RUNS" $(cd "$RUNS" && ls -d w4*/model.slb 2>/dev/null) 2>/dev/null
    ;;
  float)   # side-by-side plain-PyTorch baseline (3 epochs), then our float baseline, 100 epochs
    (cd /tmp/d && timeout 45 python3 "$R/scripts/baseline_pytorch.py" cifar10 w1a8 3)
    train float 210 --config trainer/configs/float.toml
    ;;
esac
kill $MEMPID 2>/dev/null
sort -n "$OUT/gpu-mem.csv" | tail -1 | sed 's/^/peak GPU memory used (MiB, nvidia-smi): /'
[ "$MODE" = table ] || tar -czf "$OUT/runs-$MODE.tgz" --exclude='*.ot' -C /tmp/runs . 2>/dev/null
date -u
