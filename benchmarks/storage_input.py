r"""One SCBCH epoch of the small model, memory vs storage input (issue 21, item 3).

  python benchmarks/storage_input.py                      # prepare once, 5 rounds
  python benchmarks/storage_input.py --rounds=3 --no_record
  python benchmarks/storage_input.py --worker --input=storage --tfds_dir=DIR

Data: as benchmarks/scale.py (synthetic, the mirflickr25k label model, image
128-d, text 64-d, written as `folder` data and prepared to array_record once
under --data_dir), `--train` training items (default 100,000), a database of
`--train` + 5000 items, 1000 queries.

Each contender is one fresh process (`--worker`) at ONE thread (XLA's CPU
client single-threaded, OMP/MKL/OpenBLAS 1), run alternately memory, storage,
memory, ... over --rounds rounds after one untimed warm-up round
(--old_tree: also the storage input of another source tree, each round). A worker
trains one epoch of the small SCBCH model (towers (256,), 32 bits, batch 1024,
CSCC off in the first epoch) with config.input=memory or storage through
common.train_loop, then one evaluation (1000 queries x the database, encoded
from the same input), and reports run_summary timing "train" minus "compile"
(the epoch's steps after the first; the ratio is taken on these), "train"
(with the first step and its compilation, the same for both inputs),
"evaluation" and a pure read pass before training (every batch of an epoch
read in order by pipeline.train_batches in the main thread, no steps, no
prefetch: the input pipeline's own cost per item, wall and thread CPU), and
the process CPU seconds (user + system, all threads) of train_loop.train.
On a shared machine the CPU columns are the ones that hold still.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A worker of --old_tree runs that tree's code (its PYTHONPATH), not this one's.
sys.path.insert(0, os.environ.get("NHJ_SOURCE_TREE", ROOT))

SECTION = "Storage input vs memory input, one thread (benchmarks/storage_input.py)"
THREAD_ENV = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                  "--xla_force_host_platform_device_count=1",
                  JAX_PLATFORMS="cpu")


def worker(args) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import scbch as configs  # pylint: disable=g-import-not-at-top
  from common import run_data, train_loop  # pylint: disable=g-import-not-at-top
  from common import methods  # pylint: disable=g-import-not-at-top
  from common.evaluator import RetrievalEvaluator  # pylint: disable=g-import-not-at-top
  from common.data import pipeline  # pylint: disable=g-import-not-at-top
  from scbch_jax import train as scbch_train  # pylint: disable=g-import-not-at-top

  config = configs.get_config("synthetic")
  config.update(dict(
      dataset="tfds:folder", tfds_dir=args.tfds_dir, input=args.input,
      noise_protocol="symmetric", noise_rate=0.2, epochs=1, batch_size=1024,
      bits=32, image_hidden=(256,), text_hidden=(256,), cscc_start_epoch=1,
      eval_every=0, checkpoint_every=0, progress=False, log_every=100))
  if args.prefetch is not None:
    config.prefetch = args.prefetch
  start = time.perf_counter()
  data = run_data.load_run_data(config)
  load = time.perf_counter() - start
  plan = methods.resolve_plan(config, scbch_train.SPEC)
  method = scbch_train.build(config, data, plan)
  train = data.train_arrays()
  # The pure read pass: every batch of one epoch, in order, in this thread.
  start, start_cpu = time.perf_counter(), time.thread_time()
  items = 0
  for batch in pipeline.train_batches(train, global_batch_size=config.batch_size,
                                      seed=config.seed, epoch=1):
    items += len(batch["index"])
  read = time.perf_counter() - start
  read_cpu = time.thread_time() - start_cpu
  start, before = time.perf_counter(), os.times()
  evaluator = RetrievalEvaluator({"test": (data.splits.query, data.splits.database)},
                                 directions=scbch_train.SPEC.directions,
                                 empty_queries=scbch_train.SPEC.empty_queries)
  result = train_loop.train(method, train, config, args.workdir, evaluator=evaluator,
                            log=lambda _: None)
  epoch = time.perf_counter() - start
  after = os.times()
  params = np.concatenate([np.ravel(np.asarray(x)) for x in
                           __import__("jax").tree.leaves(result.state.params)])
  timing = result.timing
  return dict(input=args.input, load=load, epoch=epoch, train=timing["train"],
              steps=timing["train"] - timing.get("compile", 0.0),
              evaluation=timing.get("evaluation", 0) + timing.get("final", 0),
              epoch_cpu=after.user - before.user + after.system - before.system,
              read=read, read_items=items, read_us_per_item=1e6 * read / items,
              read_cpu_us_per_item=1e6 * read_cpu / items,
              param_checksum=float(np.sum(params.astype(np.float64))))


def _run(args, mode: str) -> dict:
  workdir = tempfile.mkdtemp(prefix="storage_input_")
  tree = ROOT
  if mode.endswith(" (old tree)"):
    mode, tree = mode.split()[0], args.old_tree
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--input={mode}",
         f"--tfds_dir={args.tfds_dir}", f"--workdir={workdir}"]
  if args.prefetch is not None:
    cmd.append(f"--prefetch={args.prefetch}")
  out = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=tree, NHJ_SOURCE_TREE=tree,
                                     **THREAD_ENV),
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"worker failed:\n{out.stderr[-4000:]}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["load_average"] = os.getloadavg()[0]
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train", type=int, default=100_000)
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                         "nhj_storage_input"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--prefetch", type=int, default=None,
                      help="config.prefetch for both contenders (default: the "
                      "config's)")
  parser.add_argument("--old_tree", help="also time storage input with this "
                      "source tree (e.g. /work/main: the code before a change)")
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--input", help=argparse.SUPPRESS)
  parser.add_argument("--tfds_dir", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args)), flush=True)
    return
  from benchmarks import scale  # pylint: disable=g-import-not-at-top
  scale.QUERY = 1000
  args.tfds_dir = scale.prepare(args.data_dir, args.train, args.train + 5000)
  load_start = os.getloadavg()
  runs = {"memory": [], "storage": []}
  if args.old_tree:
    runs["storage (old tree)"] = []
  for mode in runs:  # warm-up round (page cache)
    _run(args, mode)
  for _ in range(args.rounds):
    for mode in runs:
      runs[mode].append(_run(args, mode))
      print(mode, json.dumps(runs[mode][-1]), flush=True)
  load_end = os.getloadavg()
  if len({r["param_checksum"] for rs in runs.values() for r in rs}) != 1:
    raise SystemExit("memory and storage runs trained different parameters")

  def cell(mode, key, fmt="{:.2f}"):
    values = [r[key] for r in runs[mode]]
    return (fmt.format(statistics.median(values)) + " (" + fmt.format(min(values))
            + "-" + fmt.format(max(values)) + ")")

  ratio = lambda mode: [s["steps"] / m["steps"] for m, s in zip(runs["memory"],
                                                                 runs[mode])]
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  rows = [[mode, cell(mode, "steps"), cell(mode, "train"), cell(mode, "evaluation"),
           cell(mode, "epoch"), cell(mode, "epoch_cpu"),
           cell(mode, "read_us_per_item", "{:.2f}"),
           cell(mode, "read_cpu_us_per_item", "{:.2f}"), cell(mode, "load")]
          for mode in runs]
  body = bench_util.markdown_table(
      ["input", "epoch s (steps after the first)", "epoch s incl. first step + compile",
       "evaluation s (105k database + 1k queries)",
       "train_loop.train s", "train_loop.train CPU s (all threads)",
       "read pass us/item", "read pass CPU us/item", "load s"], rows)
  notes = "".join(
      f"{mode}/memory epoch time (steps after the first), pairwise: median "
      f"{statistics.median(ratio(mode)):.3f} (min {min(ratio(mode)):.3f}, max "
      f"{max(ratio(mode)):.3f}).\n\n" for mode in runs if mode != "memory") + (
      f"Old tree: {args.old_tree}.\n\n" if args.old_tree else "") + (
      f"Machine: {bench_util.machine()}; {bench_util.today()}; each contender a "
      f"fresh process at 1 thread, interleaved memory/storage over {args.rounds} "
      f"rounds (+1 warm-up round), medians (min-max); load average (1/5/15 min) "
      f"{'/'.join(f'{x:.1f}' for x in load_start)} at start, "
      f"{'/'.join(f'{x:.1f}' for x in load_end)} at end. {args.train:,} training "
      "items, image 128-d / text 64-d, SCBCH towers (256,), 32 bits, batch 1024, "
      "one epoch, then one evaluation (test: 1000 queries x 105,000 database "
      "items, encoded from the same input); config.prefetch "
      f"{'default' if args.prefetch is None else args.prefetch}. Parameters after "
      "the epoch are identical for both inputs (checked). Command: `python "
      f"benchmarks/storage_input.py --train={args.train} --rounds={args.rounds}"
      + (f" --old_tree={args.old_tree}" if args.old_tree else "") + "`.")
  print(body + "\n\n" + notes)
  if not args.no_record:
    bench_util.record(SECTION, body + "\n\n" + notes)


if __name__ == "__main__":
  main()
