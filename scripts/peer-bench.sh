#!/usr/bin/env bash
# Peer benchmark: slb's packed runtime against what a user would run instead, ResNet18 with the
# CIFAR stem (32x32), batch 1, one thread, pinned to one CPU, engines alternating, several rounds.
#
#   slb        `slb bench` on models/resnet18-cifar-w1a8.slb (W1A8; also gives the in-house float
#              executor and libtorch fp32) and `slb bench --packed-only` on synthetic W1A8, W1A1,
#              W1A2, W2A2 and W4A8 models (`cargo run --example synth_model`, random packed weights)
#   ONNX Runtime  fp32 and static int8 (U8S8, per-channel, QDQ, MinMax calibration on random
#              inputs), the same network with random weights (scripts/peer_bench/ort_worker.py)
#   Larq Compute Engine  the W1A1 network (float first conv), its kernel options
#              (scripts/peer_bench/lce_worker.py)
#
# The peers are installed from the Python package registry into their own venvs under .peers/
# (ONNX Runtime in one, LCE with the TensorFlow, tf-keras and larq it pins in another; LCE needs
# Python 3.11). A peer that cannot be installed is reported as not measured.
#
# Usage: scripts/peer-bench.sh [--quick | --full] [--rounds N] [--seconds S] [--cpu C]
#                              [--out DIR] [--no-ort] [--no-lce] [--no-amx]
#   default: 3 rounds of 1 s per engine (about 1.5 minutes once installed: some 17 s per round,
#   plus 30 s building and converting the peers' models); --quick: 2 rounds of 0.3 s (under a
#   minute); --full: 6 rounds of 1 s (about 2.5 minutes; the figures in docs/PERFORMANCE.md).
#   --no-amx: every engine runs with Intel AMX denied (scripts/peer_bench/noamx.py: the request
#   for AMX's state fails), as on AVX-512 CPUs without AMX; on a CPU without AMX it changes
#   nothing.
#   The first run installs the peers (minutes: the TensorFlow wheel alone is 590 MB, the LCE venv
#   2 GB on disk) and builds slb in release mode (the libtorch bindings: many minutes).
# Writes DIR/results.md (the markdown table, also printed), DIR/results.json (every round),
# DIR/workers.log; DIR defaults to target/peer-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

CMDLINE="scripts/peer-bench.sh${*:+ }$*"
ROUNDS=3 SECONDS_PER=1 CPU=1 OUT=target/peer-bench ORT=1 LCE=1 NOAMX=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=2 SECONDS_PER=0.3 ;;
    --full) ROUNDS=6 SECONDS_PER=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --seconds) SECONDS_PER="$2"; shift ;;
    --cpu) CPU="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-ort) ORT=0 ;;
    --no-lce) LCE=0 ;;
    --no-amx) NOAMX=(python3 scripts/peer_bench/noamx.py) ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "peer-bench: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v taskset >/dev/null || { echo "peer-bench: needs taskset (util-linux)" >&2; exit 2; }

# Versions known to install and run here (docs/PERFORMANCE.md, "Peers"); override to try others.
ORT_PKGS=${ORT_PKGS:-"onnxruntime==1.32.0 onnx==1.23.2 sympy numpy"}
LCE_PKGS=${LCE_PKGS:-"larq-compute-engine==0.16.0 tensorflow==2.16.1 tf-keras==2.16.0 larq==0.13.3"}
PEERS=${PEERS_DIR:-.peers}
mkdir -p "$OUT" "$PEERS"
LOG="$OUT/install.log"
: >"$LOG"

# --- slb: libtorch for the trainer's build, the CLI, the synthetic models ---
if ! [ -e .venv/libtorch/lib/libtorch_cpu.so ]; then
  scripts/setup.sh
fi
TARGET=${CARGO_TARGET_DIR:-target}
echo "peer-bench: building slb and the synthetic-model example (release)"
nice -n 19 cargo build --release -q -p slb-trainer --bin slb
nice -n 19 cargo build --release -q --example synth_model
SLB="$TARGET/release/slb"
mkdir -p "$OUT/models"
SLB_MODELS=()
for bits in W1A8 W1A1 W1A2 W2A2 W4A8; do
  m="$OUT/models/resnet18-cifar-$(echo $bits | tr A-Z a-z)-synth.slb"
  "$TARGET/release/examples/synth_model" resnet18 "$bits" "$m" 11 >/dev/null
  SLB_MODELS+=(--slb-model "$bits=$m")
done

# --- the peers' venvs ---
py311=""
for p in python3.11 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    py311=$(command -v "$p"); break
  fi
done
PYTHON_SET=${PYTHON:+1}
PYTHON=${PYTHON:-${py311:-python3}}

# venv NAME PACKAGES: creates $PEERS/NAME if missing and installs PACKAGES (pip does nothing when
# they are there already); 0 on success.
venv() {
  local dir="$PEERS/$1"
  echo "peer-bench: pip install $2 into $dir (the first time: minutes)"
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir" >>"$LOG" 2>&1 || return 1
  # shellcheck disable=SC2086
  nice -n 19 "$dir/bin/python" -m pip install --no-cache-dir --disable-pip-version-check $2 >>"$LOG" 2>&1
}

WORKERS=() MISSING=()
if [ "$ORT" = 1 ]; then
  if venv ort "$ORT_PKGS"; then
    WORKERS+=(--worker "ort=$PEERS/ort/bin/python:scripts/peer_bench/ort_worker.py")
  else
    MISSING+=(--missing "ONNX Runtime=pip install $ORT_PKGS failed with $PYTHON (see $LOG)")
  fi
fi
if [ "$LCE" = 1 ]; then
  if [ -z "$py311" ] && [ -z "${PYTHON_SET:-}" ]; then
    MISSING+=(--missing "Larq Compute Engine=no Python 3.11 here (larq-compute-engine 0.16 has wheels up to cp311)")
  elif venv lce "$LCE_PKGS"; then
    WORKERS+=(--worker "lce=$PEERS/lce/bin/python:scripts/peer_bench/lce_worker.py")
  else
    MISSING+=(--missing "Larq Compute Engine=pip install $LCE_PKGS failed with $PYTHON (see $LOG)")
  fi
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT+dirty"; fi
echo "peer-bench: timing, $ROUNDS rounds x $SECONDS_PER s per engine, CPU $CPU"
${NOAMX[@]+"${NOAMX[@]}"} "$PYTHON" scripts/peer_bench/driver.py --out "$OUT" --rounds "$ROUNDS" --seconds "$SECONDS_PER" \
  --cpu "$CPU" --slb "$SLB" --w1a8 models/resnet18-cifar-w1a8.slb "${SLB_MODELS[@]}" \
  ${WORKERS[@]+"${WORKERS[@]}"} ${MISSING[@]+"${MISSING[@]}"} \
  --command "$CMDLINE" --commit "$COMMIT"
