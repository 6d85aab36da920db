"""Shared by the peer workers of scripts/peer-bench.sh: the network shape and the timing loop.

A worker is started by driver.py (pinned with taskset), prepares its models, prints one
`@@ ready {...}` line naming its engines, then answers `time ENGINE SECONDS` lines on stdin with
`@@ {"engine": ..., "median_s": ..., "samples": ...}` until `quit` or end of input. Other output
(library logs) goes to stderr.
"""

import json
import sys
import time

# ResNet18 with the CIFAR stem, as src/synth.rs builds it: 3x3 stem conv to 64 channels, no max
# pooling, four stages of two basic blocks (64, 128, 256, 512 channels; stride 2 at the first
# block of stages 2-4, where a 1x1 conv downsamples the shortcut), global average pooling and a
# dense layer to 10 classes. Input 1x3x32x32.
STAGES = (64, 128, 256, 512)
BLOCKS = 2
CLASSES = 10
SIZE = 32


def blocks():
    """Yields (in_channels, out_channels, stride) of each basic block."""
    cin = STAGES[0]
    for i, c in enumerate(STAGES):
        for b in range(BLOCKS):
            s = 2 if (i > 0 and b == 0) else 1
            yield cin, c, s
            cin = c


def time_it(seconds, f):
    """Median seconds per call of f, measured for at least `seconds` (and 5 calls) after one
    warm-up call: the loop of `slb bench`."""
    f()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(samples) < 5:
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2], len(samples)


def say(obj):
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(engines):
    """engines: name -> dict(run=callable, precision=str, note=str). Answers the driver."""
    say({"ready": {k: {kk: v for kk, v in e.items() if kk != "run"} for k, e in engines.items()}})
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        if parts[0] == "time" and len(parts) == 3 and parts[1] in engines:
            median, n = time_it(float(parts[2]), engines[parts[1]]["run"])
            say({"engine": parts[1], "median_s": median, "samples": n})
        else:
            say({"error": "bad command: " + line.strip()})
