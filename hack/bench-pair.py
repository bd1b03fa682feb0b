#!/usr/bin/env python3
"""Times two drun binaries against each other, interleaved, for hack/bench-run and hack/bench-pull.

  bench-pair.py run --old DRUN --new DRUN --runs N [--warmup N] [--prepare SHELL] [--fresh-under DIR]
                    --name NAME --out FILE.json -- ARGV...
  bench-pair.py table FILE.json...

`run` runs ARGV once per binary per round, WARMUP unmeasured rounds first, then RUNS measured ones; the order
within a round alternates (old, new; new, old; ...) so that neither binary always goes first. In ARGV, {drun} is
the binary, {variant} is "old" or "new" (for a store of each its own) and {fresh} a new empty directory (made
below --fresh-under) for that one run. --prepare runs (untimed, through sh) before every run. A run is timed
from spawning ARGV (directly, no shell) to its exit; one that fails stops the benchmark.

`table` prints a Markdown table of the recorded medians: old, new, new / old, and the median of the rounds' own
new / old ratios (each round's two runs are next to each other in time: this one is the least moved by the
machine's speed changing during the benchmark).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(argv, binary, variant, fresh_under, prepare):
    fresh = tempfile.mkdtemp(dir=fresh_under) if any("{fresh}" in a for a in argv) else None
    cmd = [a.replace("{drun}", binary).replace("{variant}", variant).replace("{fresh}", fresh or "")
           for a in argv]
    if prepare:
        subprocess.run(prepare, shell=True, check=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit("bench-pair.py: %s exited %d: %s" % (" ".join(cmd), done.returncode,
                                                      done.stderr.decode(errors="replace")[-2000:]))
    return took


def cmd_run(args):
    binaries = {"old": args.old, "new": args.new}
    times = {"old": [], "new": []}
    for round_ in range(args.warmup + args.runs):
        order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
        for variant in order:
            took = one_run(args.argv, binaries[variant], variant, args.fresh_under, args.prepare)
            if round_ >= args.warmup:
                times[variant].append(took)
    result = {"name": args.name, "runs": args.runs, "binaries": binaries, "times": times,
              "median": {v: statistics.median(t) for v, t in times.items()},
              "paired_ratio": statistics.median(n / o for o, n in zip(times["old"], times["new"]))}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    m = result["median"]
    print("%s: old %.1f ms, new %.1f ms, new / old %.3f (paired %.3f)"
          % (args.name, m["old"] * 1e3, m["new"] * 1e3, m["new"] / m["old"], result["paired_ratio"]),
          file=sys.stderr)


def fmt(seconds):
    return "%.1f ms" % (seconds * 1e3) if seconds < 1 else "%.2f s" % seconds


def cmd_table(args):
    results = []
    for path in args.files:
        with open(path) as f:
            results.append(json.load(f))
    old = {r["binaries"]["old"] for r in results}
    new = {r["binaries"]["new"] for r in results}
    print("Old and new drun, interleaved (old: `%s`, new: `%s`), medians:\n"
          % (", ".join(sorted(old)), ", ".join(sorted(new))))
    print("| what | rounds | old | new | new ÷ old | new ÷ old, per round |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["median"]
        print("| %s | %d | %s | %s | **%.3f** | %.3f |" % (r["name"], r["runs"], fmt(m["old"]), fmt(m["new"]),
                                                           m["new"] / m["old"], r["paired_ratio"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prepare")
    p.add_argument("--fresh-under", default=None)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("argv", nargs="+")
    p = sub.add_parser("table")
    p.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    main()
