r"""Small whole runs, end to end, against the releases' wall time (issue 13, item 3).

  python benchmarks/small_runs.py              # both methods, table + RESULTS.md
  python benchmarks/small_runs.py --methods=dcgmh --no_record
  python benchmarks/small_runs.py --methods=dcgmh --repeats=5 --old_tree=/work/main

--threads (default 1) limits XLA's CPU client and BLAS/OpenMP per run;
--old_tree runs another source tree's code too (PYTHONPATH), interleaved
old, new, old, new, ..., each with its own caches.

Each run is `common.experiment.run` in a fresh workdir and a fresh Python
process (as a launcher runs it), after one untimed warm-up process of the same
config that fills a persistent compilation cache ("warm compilation cache")
and, where the tree has one, the executable cache (common.exec_cache: the
step programs loaded instead of traced).
A fresh process matters: common.parallel names each DataParallel's step
program after a per-process driver counter, so a second run in the SAME
process misses the persistent cache for its step programs.

Data: `synthetic:demo` (12 classes, image 512-d, text 256-d) with
config.train_size=2000 and config.query_size=1000 (database: the preset's 8000
items; the training items are the first 2000 of them), default noise
(SCBCH: scbch protocol at 0.5; DCGMH: dcgmh protocol at 0.4), data_seed 0.

  DCGMH: 10 epochs, batch 48, hidden = fused = 256, warmup_epochs 5.
  SCBCH: 20 epochs, batch 128, image_hidden (1024, 1024), text_hidden (1024,).

The release numbers (measured on this kind of machine, per the issue):
DCGMH 7.5 s and SCBCH 19.5 s end to end.

The breakdown comes from run_summary.json's "timing" (train loop phases,
wall seconds): compile (first step of each compiled step program, including
that step), train (all steps, compile included), epoch_extras (SCBCH's CSCC
weights), epoch_summary, evaluation (per-epoch), checkpoint (saves, the final
wait), final (selection restore + final evaluation), export (codes),
results_and_plots (JSON, PNGs, table). "run()" is experiment.run as the
caller sees it; "wall" is the whole process, launch (imports included) to exit,
which is what the release's number measures. "imports" is the child's own
imports (experiment, launch.cli) before run(); "start+exit" is the rest of
wall - run() - imports: interpreter start-up and teardown (module and object
finalisation at exit), plus the subprocess spawn.

The machine is shared: each row's label says when it was measured and the
1-minute load average (min-max over its runs); compare rows measured together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A child of --old_tree runs that tree's code (its PYTHONPATH), not this one's.
sys.path.insert(0, os.environ.get("NHJ_SOURCE_TREE", ROOT))

RELEASE_SECONDS = {"dcgmh": 7.5, "scbch": 19.5}
DATA = dict(dataset="synthetic:demo", train_size=2000, query_size=1000)
KEYS = ("compile", "train", "epoch_extras", "epoch_summary", "evaluation",
        "checkpoint", "final", "export", "results_and_plots", "imports",
        "start+exit")


def small_config(method: str, **overrides):
  if method == "dcgmh":
    from configs import dcgmh as configs  # pylint: disable=g-import-not-at-top
    config = configs.get_config("synthetic:demo")
    config.update(dict(epochs=10, batch_size=48, hidden=256, fused=256))
  else:
    from configs import scbch as configs  # pylint: disable=g-import-not-at-top
    config = configs.get_config("synthetic:demo")
    config.update(dict(epochs=20, batch_size=128, image_hidden=(1024, 1024),
                       text_hidden=(1024,)))
  config.update(dict(DATA, progress=False))
  config.update(overrides)
  return config


def child(method: str, workdir: str, cache_dir: str, out: str) -> None:
  """One run in this (fresh) process, as a launcher would do it."""
  started = time.perf_counter()
  from absl import logging  # pylint: disable=g-import-not-at-top
  from common import experiment  # pylint: disable=g-import-not-at-top
  from launch import cli  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # as the launchers: no per-save INFO lines
  cli.enable_compilation_cache(cache_dir)
  config = small_config(method)
  run_start = time.perf_counter()
  experiment.run(config, workdir, log=lambda _: None)
  run_end = time.perf_counter()
  with open(os.path.join(workdir, "run_summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(dict(summary.get("timing", {}), imports=run_start - started,
                   total=summary["seconds"], run=run_end - run_start,
                   maps=summary["maps"]), f)


def thread_env(threads: int | None) -> dict[str, str]:
  """Environment limiting XLA's CPU client and BLAS/OpenMP to `threads`."""
  if not threads:
    return {}
  t = str(threads)
  env = dict(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t)
  if threads == 1:
    env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                        + " --xla_cpu_multi_thread_eigen=false").strip()
  return env


def one_run(method: str, tmp: str, name: str, *, tree: str = ROOT,
            threads: int | None = None) -> dict:
  """A fresh subprocess running `child` on the code of `tree`; wall = launch
  to exit, cpu = the child's user + system seconds."""
  workdir, out = os.path.join(tmp, name), os.path.join(tmp, f"{name}.json")
  cache = os.path.join(tmp, "compilation_cache" if tree == ROOT else
                       "compilation_cache_old")
  before = os.times()
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.abspath(__file__), "--child", method,
                  workdir, cache, out], check=True,
                 env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                   "cpu"),
                          PYTHONPATH=tree, NHJ_SOURCE_TREE=tree,
                          **thread_env(threads)))
  wall = time.perf_counter() - start
  after = os.times()
  with open(out, encoding="utf-8") as f:
    result = json.load(f)
  result["start+exit"] = wall - result["run"] - result["imports"]
  cpu = (after.children_user - before.children_user
         + after.children_system - before.children_system)
  return dict(result, wall=wall, cpu=cpu, load=os.getloadavg()[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default="dcgmh,scbch")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--label", default="after", help="row label in the table")
  parser.add_argument("--threads", type=int, default=1,
                      help="XLA/BLAS threads per run (0: the libraries' default)")
  parser.add_argument("--old_tree", help="also run this source tree (e.g. "
                      "/work/main), interleaved old, new, old, ... (its rows "
                      "labelled 'before')")
  parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child)
    return

  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  import statistics  # pylint: disable=g-import-not-at-top
  trees = ([("before", args.old_tree)] if args.old_tree else []) + [(args.label, ROOT)]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for method in args.methods.split(","):
      for version, tree in trees:  # fills each tree's compilation caches
        one_run(method, tmp, f"{method}_{version}_warmup", tree=tree,
                threads=args.threads)
      load = [os.getloadavg()[0]]
      runs = {version: [] for version, _ in trees}
      for i in range(args.repeats):
        for version, tree in trees:
          runs[version].append(one_run(method, tmp, f"{method}_{version}_{i}",
                                       tree=tree, threads=args.threads))
      load += [r["load"] for rs in runs.values() for r in rs]
      for version, _ in trees:
        walls = sorted(r["wall"] for r in runs[version])
        median = sorted(runs[version], key=lambda r: r["wall"])[len(walls) // 2]
        cpus = [r["cpu"] for r in runs[version]]
        label = (f"{version} ({time.strftime('%H:%M')}, load "
                 f"{min(load):.1f}-{max(load):.1f})")
        print(f"{method} {version}: " + ", ".join(
            f"{k} {median.get(k, 0.0):.2f}s" for k in KEYS)
              + f"; run {median['run']:.2f}s, wall {median['wall']:.2f}s "
              f"(release {RELEASE_SECONDS[method]} s); maps {median['maps']}; "
              f"walls {[round(w, 2) for w in walls]}, cpu "
              f"{[round(c, 2) for c in cpus]}, load {load}", flush=True)
        rows.append([method, label] + [f"{median.get(k, 0.0):.2f}" for k in KEYS]
                    + [f"{median['run']:.2f}",
                       f"{statistics.median(walls):.2f} ({walls[0]:.2f}-{walls[-1]:.2f})",
                       f"{statistics.median(cpus):.2f}", RELEASE_SECONDS[method]])
  table = bench_util.markdown_table(
      ["method", "version"] + list(KEYS) + ["run() s", "wall s median (min-max)",
                                             "cpu s", "release s"], rows)
  print(table)
  if not args.no_record:
    bench_util.record(
        f"Small runs table, {args.label} (benchmarks/small_runs.py)",
        f"`python benchmarks/small_runs.py --repeats={args.repeats} "
        f"--threads={args.threads}"
        + (f" --old_tree={args.old_tree}" if args.old_tree else "") + "` on "
        f"{bench_util.machine()}, {bench_util.today()}: {args.threads or 'default'} "
        f"thread(s) per run, {args.repeats} runs per version"
        + (", old and new interleaved" if args.old_tree else "") + ", each a fresh "
        "process after one warm-up process per version that fills its persistent "
        "compilation cache (and, in trees that have it, the executable cache); "
        "breakdown columns from the run with the median wall time; cpu = the "
        "child's user + system seconds (median).\n\n"
        + table)


if __name__ == "__main__":
  main()
