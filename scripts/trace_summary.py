#!/usr/bin/env python3
"""Sums up a Chrome trace from `slb train --profile-steps N --trace FILE`: GPU time per kernel
name (and memcpy/memset), the largest first, per training step.

    python3 scripts/trace_summary.py TRACE.json STEPS [TOP]
"""
import collections
import json
import sys


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    with open(path) as f:
        events = json.load(f).get("traceEvents", [])
    gpu = collections.defaultdict(lambda: [0.0, 0])
    cpu_ops = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat", "")
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            g = gpu[(cat, e.get("name", "?"))]
            g[0] += float(e.get("dur", 0.0))
            g[1] += 1
        elif cat == "cpu_op":
            cpu_ops[e.get("name", "?")] += 1
    total = sum(v[0] for v in gpu.values())
    launches = sum(v[1] for v in gpu.values())
    print(f"GPU busy {total / steps / 1000:.3f} ms per step, {launches / steps:.0f} kernels per step,"
          f" {sum(cpu_ops.values()) / steps:.0f} CPU ops per step")
    print(f"{'ms/step':>8} {'share':>6} {'n/step':>7}  kernel")
    for (cat, name), (dur, n) in sorted(gpu.items(), key=lambda kv: -kv[1][0])[:top]:
        short = name if len(name) < 110 else name[:107] + "..."
        print(f"{dur / steps / 1000:8.3f} {100 * dur / max(total, 1e-9):5.1f}% {n / steps:7.1f}  {short}")
    print("CPU ops per step, most frequent:")
    for name, n in cpu_ops.most_common(25):
        print(f"{n / steps:7.1f}  {name}")


if __name__ == "__main__":
    main()
