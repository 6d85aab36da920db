#!/usr/bin/env bash
# The main job on a fresh machine: a short SLB training on CPU (ResNet20-slim, W1A8, a few
# minutes on 2 cores) -> export -> packed and float evaluation with the no_std runtime ->
# model summary -> packed-vs-float timing. Installs libtorch (torch==2.11.0 into .venv) first
# when missing.
#   DATA=path   a CIFAR-10 binary folder, an image folder or a .tar.xz of one
#               (default: ../shared/data/cifar10-jpeg.tar.xz)
#   OUT=dir     where the run goes (default: runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.xz}
OUT=${OUT:-runs/demo}

scripts/setup.sh
echo "== building (release)"
cargo build --release -q -p slb-trainer
SLB=target/release/slb

echo "== train (trainer/configs/cpu-demo.toml) and export"
"$SLB" train --config trainer/configs/cpu-demo.toml --data "$DATA" --device cpu --out "$OUT"

echo "== packed model, no_std runtime on the host (the trainer's test subset: 100 images per class)"
"$SLB" eval --model "$OUT/model.slb" --data "$DATA" --engine packed --per-class 100
echo "== float executor of the same graph"
"$SLB" eval --model "$OUT/model.slb" --data "$DATA" --engine float --per-class 100

echo "== summary"
"$SLB" inspect "$OUT/model.slb"

echo "== speed, one thread"
"$SLB" bench --model "$OUT/model.slb" --seconds 2

echo "== the ResNet18-CIFAR W1A8 model trained on an H100 (models/, docs/RESULTS.md: 88.78 % top-1)"
"$SLB" eval --model models/resnet18-cifar-w1a8.slb --data "$DATA" --engine packed
"$SLB" bench --model models/resnet18-cifar-w1a8.slb --seconds 2
