r"""DCGMH step time with release_compat=True vs the default, at two training-set sizes
(issue 22).

  python benchmarks/compat_step.py                  # table + records RESULTS.md
  python benchmarks/compat_step.py --n=10000,100000 --rounds=5 --threads=1
  python benchmarks/compat_step.py --before=/work/main   # also the old code's compat

Each contender runs in its own process (`--worker`), pinned to the same number
of CPUs (taskset; XLA:CPU sizes its thread pool from the affinity mask), the
contenders interleaved A B A B ... over --rounds rounds. A worker builds the
method on N random items (24 labels, image 4096-d, text 1386-d, hidden =
fused = 256, K = 32, τ = 0.4, batch 48; the clean labels are the observed ones
with 10% of the rows changed), runs the real step (DcgmhMethod.step_body under
the one-device shard_map driver, state donated) over distinct batches of one
epoch permutation, and reports the median seconds per step of each phase
after one compile step: warm-up at epoch 0 and robust at epoch 7 (with
release_compat, BatchNorm is then in inference mode: bn_eval_after_first_eval).
`--before=ROOT` adds the compat step of the code at ROOT (e.g. a checkout of
main) as a third contender.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

D_IMG, D_TXT, C, BITS, HIDDEN, BATCH, TAU = 4096, 1386, 24, 32, 256, 48, 0.4


def worker(args) -> None:
  sys.path.insert(0, args.root)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common import parallel  # pylint: disable=g-import-not-at-top
  from configs import dcgmh as dcgmh_configs  # pylint: disable=g-import-not-at-top
  from dcgmh_jax.train import DcgmhMethod  # pylint: disable=g-import-not-at-top

  n = args.n
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(bits=BITS, hidden=HIDDEN, fused=HIDDEN, warmup_epochs=5,
                     batch_size=BATCH, release_compat=args.compat == "on"))
  rng = np.random.default_rng(0)
  labels = (rng.random((n, C)) < 0.1).astype(np.float32)
  truth = labels.copy()
  changed = rng.random(n) < 0.1
  truth[changed] = (rng.random((int(changed.sum()), C)) < 0.1).astype(np.float32)
  built = time.perf_counter()
  method = DcgmhMethod(config, image_dim=D_IMG, text_dim=D_TXT, train_labels=labels,
                       noise_ratio=TAU, train_truth_labels=truth)
  dp = parallel.DataParallel(method.step_body,
                             mesh=parallel.make_mesh(jax.devices()[:1]),
                             max_phases=len(method.phases))
  state = dp.put_state(method.init_state())
  jax.block_until_ready(state)
  init_seconds = time.perf_counter() - built
  order = rng.permutation(n).astype(np.int32)
  batches = []
  for s in range(args.steps + 1):
    idx = order[(s * BATCH) % (n - BATCH + 1):][:BATCH]
    batches.append(dp.put_rows({
        "image": rng.random((BATCH, D_IMG), np.float32),
        "text": (rng.random((BATCH, D_TXT)) < 0.02).astype(np.float32),
        "labels": labels[idx], "index": idx}))
  extras = dp.put_rows({})
  out = {"n": n, "compat": args.compat, "root": args.root, "init_s": init_seconds,
         "threads": len(os.sched_getaffinity(0))}
  for phase, epoch in (("warmup", 0), ("robust", 7)):
    start = time.perf_counter()
    state, metrics = dp.step(state, batches[0], extras, {"epoch": epoch,
                                                         "step_in_epoch": 0}, phase)
    jax.block_until_ready(metrics)
    out[f"{phase}_first_s"] = time.perf_counter() - start
    times, cpu = [], []
    for s in range(1, args.steps + 1):
      start, start_cpu = time.perf_counter(), time.process_time()
      state, metrics = dp.step(state, batches[s], extras,
                               {"epoch": epoch, "step_in_epoch": s}, phase)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
    out[f"{phase}_s"] = float(np.median(times))
    out[f"{phase}_cpu_s"] = float(np.median(cpu))
  print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--compat", choices=("on", "off"), default="off",
                      help=argparse.SUPPRESS)
  parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
  parser.add_argument("--n", default="10000,100000",
                      help="training-set sizes, comma-separated (worker: one)")
  parser.add_argument("--steps", type=int, default=60, help="timed steps per phase")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--before", default=None,
                      help="root of another checkout: its compat step is a contender too")
  parser.add_argument("--no_record", action="store_true")
  args = parser.parse_args()
  if args.worker:
    args.n = int(args.n)
    worker(args)
    return

  sys.path.insert(0, ROOT)
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  rows = []
  loads = [bench_util.load_average()]
  for n in [int(x) for x in args.n.split(",")]:
    base = [sys.executable, os.path.abspath(__file__), "--worker", f"--n={n}",
            f"--steps={args.steps}"]
    commands = {"default": base + ["--compat=off"], "release_compat": base + ["--compat=on"]}
    env_extra = {}
    if args.before:
      commands["release_compat, before"] = base + ["--compat=on", f"--root={args.before}"]
      env_extra["release_compat, before"] = {"PYTHONPATH": args.before}
    env_extra.update({k: {"PYTHONPATH": ROOT} for k in commands if k not in env_extra})
    results = bench_util.interleave(commands, rounds=args.rounds, threads=args.threads,
                                    env_extra=env_extra)
    loads.append(bench_util.load_average())
    for phase in ("warmup", "robust"):
      ref = results["default"]
      for name, res in results.items():
        ratios = [r[f"{phase}_s"] / d[f"{phase}_s"] for r, d in zip(res, ref)]
        cpu_ratios = [r[f"{phase}_cpu_s"] / d[f"{phase}_cpu_s"] for r, d in zip(res, ref)]
        rows.append([f"{n:,}", phase, name,
                     bench_util.median_range([r[f"{phase}_s"] for r in res], 1e3, "{:.2f}"),
                     bench_util.median_range(ratios, 1.0, "{:.2f}"),
                     bench_util.median_range([r[f"{phase}_cpu_s"] for r in res], 1e3,
                                             "{:.2f}"),
                     bench_util.median_range(cpu_ratios, 1.0, "{:.2f}"),
                     bench_util.median_range([r[f"{phase}_first_s"] for r in res], 1.0,
                                             "{:.2f}")])
      print(rows[-1], flush=True)
  table = bench_util.markdown_table(
      ["N", "phase", "contender", "step ms, median (min–max)",
       "÷ default (paired)", "step CPU ms", "CPU ÷ default (paired)",
       "first step s (compile)"], rows)
  command = "python benchmarks/compat_step.py " + " ".join(
      a for a in sys.argv[1:] if a != "--no_record")
  body = (
      f"Machine: {bench_util.machine()}; date {bench_util.today()}; "
      f"{args.threads} thread(s) per process (taskset); load average "
      f"{min(loads):.1f}–{max(loads):.1f}. Command: `{command.strip()}`.\n"
      f"DCGMH, image 4096 / text 1386, hidden = fused = {HIDDEN}, K = {BITS}, C = {C}, "
      f"batch {BATCH}, τ = {TAU}. Each contender in its own process, interleaved over "
      f"{args.rounds} rounds; per process the median of {args.steps} steps of each "
      "phase (distinct batches) after one compile step (wall, and the process's CPU "
      "seconds: with one thread per process, CPU time is the steadier measure on a "
      "shared machine); the table gives the median "
      "(min–max) over the rounds and the paired per-round ratio to the default. "
      "release_compat=True runs every quirk (robust step at epoch 7: BatchNorm in "
      "inference mode). Before the fix (issue 22), the compat robust step ran the "
      "bank's top-k as a full stable sort of each (B, N) row: see the "
      "'release_compat, before' rows when measured with --before.\n\n" + table)
  print(body)
  if not args.no_record:
    bench_util.record("DCGMH release_compat vs default step (benchmarks/compat_step.py)",
                      body)


if __name__ == "__main__":
  main()
