"""Times slb and its peers side by side: see scripts/peer-bench.sh, which installs the peers and
builds the models, then runs this (standard library only).

Every engine runs one thread, pinned to one CPU (taskset). The Python peers run in long-lived
worker processes (one per venv) that sit idle on stdin while another engine is timed. Each round
times every engine once, for --seconds each (median per call after one warm-up call, at least 5
calls: the loop of `slb bench`); the order rotates from round to round. The table reports, per
engine, the median of its round medians and their range (min-max).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys


def cpu_model():
    flags, name = set(), platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("?", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx_vnni") if f in flags]
    if "amx_int8" in flags:
        # noamx.py (peer-bench.sh --no-amx) sets this where it denied AMX to every engine.
        denied = os.environ.get("PEER_BENCH_AMX") == "denied"
        isa.append("amx_int8 (denied to every engine: --no-amx)" if denied else "amx_int8")
    return name, isa


class Worker:
    """A Python peer worker (see common.py)."""

    def __init__(self, name, python, script, out, cpu, log):
        self.name, self.engines, self.error = name, {}, None
        cmd = ["taskset", "-c", str(cpu), python, "-u", script, out]
        env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
                   TF_NUM_INTEROP_THREADS="1")
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=log, text=True, env=env)
        msg = self.read()
        if msg is None or "ready" not in msg:
            self.error = f"{name} worker did not start (see {log.name})"
            self.close()
        else:
            self.engines = msg["ready"]

    def read(self):
        for line in self.p.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        return None

    def time(self, engine, seconds):
        self.p.stdin.write(f"time {engine} {seconds}\n")
        self.p.stdin.flush()
        msg = self.read()
        if msg is None or "median_s" not in msg:
            raise RuntimeError(f"{self.name}: no answer for {engine}: {msg}")
        return msg["median_s"]

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()


LINE = re.compile(r"^\s*(packed runtime|in-house float executor|libtorch CPU float)\s+([0-9.]+) ms")


def slb_bench(slb, model, seconds, cpu, packed_only):
    cmd = ["taskset", "-c", str(cpu), slb, "bench", "--model", model, "--seconds", str(seconds)]
    if packed_only:
        cmd.append("--packed-only")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    found = {}
    for line in r.stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(1)] = float(m.group(2)) / 1e3
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--slb", required=True)
    ap.add_argument("--w1a8", required=True, help="the W1A8 model file (full slb bench)")
    ap.add_argument("--slb-model", action="append", default=[], metavar="BITS=PATH",
                    help="more packed models, timed with --packed-only")
    ap.add_argument("--worker", action="append", default=[], metavar="NAME=PYTHON:SCRIPT")
    ap.add_argument("--missing", action="append", default=[], metavar="NAME=REASON",
                    help="a peer that could not be installed (reported, not timed)")
    ap.add_argument("--command", default="", help="the command line, for the report")
    ap.add_argument("--commit", default="")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "workers.log"), "w")

    # engine key -> dict(label, precision, bytes, kind, ...)
    engines = {}
    w1a8 = os.path.basename(a.w1a8)
    engines["slb-w1a8"] = dict(label=f"slb packed (`slb bench`, `{w1a8}`)", precision="W1A8",
                               bytes=os.path.getsize(a.w1a8))
    slb_models = []
    for spec in a.slb_model:
        bits, path = spec.split("=", 1)
        key = "slb-" + bits.lower() + "-synth"
        slb_models.append((key, path))
        engines[key] = dict(label=f"slb packed (`slb bench --packed-only`, synthetic `{os.path.basename(path)}`)",
                            precision=bits.upper(), bytes=os.path.getsize(path))
    engines["slb-float"] = dict(label="slb in-house float executor (inside `slb bench`)",
                                precision="fp32", bytes=None)
    engines["libtorch-fp32"] = dict(label="libtorch fp32 (inside `slb bench`)",
                                    precision="fp32", bytes=None)

    workers = []
    notes = [f"{n}: not measured: {r}" for n, r in (m.split("=", 1) for m in a.missing)]
    for spec in a.worker:
        name, rest = spec.split("=", 1)
        python, script = rest.split(":", 1)
        print(f"peer-bench: preparing {name} (building and converting its model)", flush=True)
        w = Worker(name, python, script, os.path.join(a.out, name), a.cpu, log)
        if w.error:
            notes.append(f"{name}: not measured: {w.error}")
            continue
        workers.append(w)
        for k, e in w.engines.items():
            engines[k] = dict(label=e["label"], precision=e["precision"], bytes=e.get("bytes"),
                              worker=w)

    # One unit per round: the W1A8 full bench (three engines), each packed-only model, each peer.
    units = [("slb-w1a8-full", None)] + [(k, p) for k, p in slb_models]
    units += [(k, e["worker"]) for k, e in engines.items() if "worker" in e]
    samples = {k: [] for k in engines}
    for r in range(a.rounds):
        order = units[r % len(units):] + units[:r % len(units)]
        if r % 2:
            order = order[::-1]
        for key, what in order:
            if key == "slb-w1a8-full":
                f = slb_bench(a.slb, a.w1a8, a.seconds, a.cpu, False)
                samples["slb-w1a8"].append(f["packed runtime"])
                samples["slb-float"].append(f["in-house float executor"])
                samples["libtorch-fp32"].append(f["libtorch CPU float"])
            elif isinstance(what, str):
                samples[key].append(slb_bench(a.slb, what, a.seconds, a.cpu, True)["packed runtime"])
            else:
                samples[key].append(what.time(key, a.seconds))
        done = ", ".join(f"{k} {v[-1] * 1e3:.2f}" for k, v in samples.items() if v)
        print(f"peer-bench: round {r + 1}/{a.rounds} (ms): {done}", flush=True)
    for w in workers:
        w.close()

    med = {k: statistics.median(v) for k, v in samples.items() if v}
    ref = med["slb-w1a8"]
    name, isa = cpu_model()
    lines = [
        f"Machine: {name}, {os.cpu_count()} CPUs ({', '.join(isa)}), {platform.system()} "
        f"{platform.release()}. Commit: {a.commit or '?'}. "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Command: `{a.command}`. ResNet18 with the CIFAR stem (32x32), batch 1, one thread, "
        f"pinned to CPU {a.cpu} (`taskset`); {a.rounds} rounds, each engine timed for "
        f"{a.seconds:g} s per round (median per call), order rotated each round. "
        "Median of the round medians, range = min-max over rounds.",
        "",
        "| engine | precision | file bytes | ms/image (median) | range (ms) | time / slb W1A8 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k, e in engines.items():
        if k not in med:
            continue
        v = samples[k]
        size = f"{e['bytes']:,}" if e.get("bytes") else ""
        lines.append(f"| {e['label']} | {e['precision']} | {size} | {med[k] * 1e3:.2f} | "
                     f"{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f} | {med[k] / ref:.2f}x |")
    lines.append("")
    def vs(peer_s, slb_s):
        r = peer_s / slb_s
        return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"

    if "ort-int8" in med:
        lines.append(f"- Target W1A8 >= 1.5x ONNX Runtime int8: slb W1A8 is "
                     f"{vs(med['ort-int8'], ref)}.")
    lce = {k: v for k, v in med.items() if k.startswith("lce-")}
    if lce and "slb-w1a1-synth" in med:
        best = min(lce, key=lce.get)
        lines.append(f"- Target W1A1 >= 2x Larq Compute Engine's best option ({best}): slb W1A1 "
                     f"(synthetic) is {vs(lce[best], med['slb-w1a1-synth'])}.")
    for n in notes:
        lines.append(f"- {n}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"rounds": a.rounds, "seconds": a.seconds, "cpu": a.cpu, "commit": a.commit,
                   "machine": name, "isa": isa,
                   "samples_s": samples, "median_s": med,
                   "labels": {k: e["label"] for k, e in engines.items()}, "notes": notes}, f,
                  indent=1)
    print()
    print(text, end="")
    print(f"peer-bench: wrote {os.path.join(a.out, 'results.md')} and results.json", flush=True)


if __name__ == "__main__":
    sys.exit(main())
