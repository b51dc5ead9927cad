r"""Small whole runs, end to end, against the releases' wall time (issue 13, item 3).

  python benchmarks/small_runs.py              # both methods, table + RESULTS.md
  python benchmarks/small_runs.py --methods=dcgmh --no_record

Each run is `common.experiment.run` in a fresh workdir and a fresh Python
process (as a launcher runs it), after one untimed warm-up process of the same
config that fills a persistent compilation cache ("warm compilation cache").
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
sys.path.insert(0, ROOT)

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


def one_run(method: str, tmp: str, name: str) -> dict:
  """A fresh subprocess running `child`; wall = launch to exit."""
  workdir, out = os.path.join(tmp, name), os.path.join(tmp, f"{name}.json")
  start = time.perf_counter()
  subprocess.run([sys.executable, os.path.abspath(__file__), "--child", method,
                  workdir, os.path.join(tmp, "compilation_cache"), out], check=True,
                 env=dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                   "cpu")))
  wall = time.perf_counter() - start
  with open(out, encoding="utf-8") as f:
    result = json.load(f)
  result["start+exit"] = wall - result["run"] - result["imports"]
  return dict(result, wall=wall, load=os.getloadavg()[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default="dcgmh,scbch")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--label", default="after", help="row label in the table")
  parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child)
    return

  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for method in args.methods.split(","):
      one_run(method, tmp, f"{method}_warmup")  # fills the compilation cache
      load = [os.getloadavg()[0]]
      runs = [one_run(method, tmp, f"{method}_{i}") for i in range(args.repeats)]
      load += [r["load"] for r in runs]
      best = min(runs, key=lambda r: r["wall"])
      label = (f"{args.label} ({time.strftime('%H:%M')}, load "
               f"{min(load):.1f}-{max(load):.1f})")
      print(f"{method}: " + ", ".join(f"{k} {best.get(k, 0.0):.2f}s" for k in KEYS)
            + f"; run {best['run']:.2f}s, wall {best['wall']:.2f}s "
            f"(release {RELEASE_SECONDS[method]} s); maps {best['maps']}; "
            f"walls {[round(r['wall'], 2) for r in runs]}, load {load}", flush=True)
      rows.append([method, label] + [f"{best.get(k, 0.0):.2f}" for k in KEYS]
                  + [f"{best['run']:.2f}", f"{best['wall']:.2f}",
                     RELEASE_SECONDS[method]])
  table = bench_util.markdown_table(
      ["method", "version"] + list(KEYS) + ["run() s", "wall s", "release s"], rows)
  print(table)
  if not args.no_record:
    bench_util.record(
        f"Small runs table, {args.label} (benchmarks/small_runs.py)",
        f"`python benchmarks/small_runs.py` on {bench_util.machine()}, "
        f"{bench_util.today()} (best of {args.repeats}, each a fresh process after "
        "one warm-up process that fills the persistent compilation cache).\n\n"
        + table)


if __name__ == "__main__":
  main()
