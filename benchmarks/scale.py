r"""One SCBCH epoch at 1M training items, 1 vs 2 processes: per-process peak RSS
and the time of each phase (issue 12, item 3).

  python benchmarks/scale.py                    # prepare (once), run, table
  python benchmarks/scale.py --train=200000 --no_record   # smaller, quicker

Data: synthetic (common.data.make_synthetic, the mirflickr25k preset's label
model: 24 classes) with feature sizes chosen to fit this machine (image 128,
text 64), `--train` training items, a database of the same items plus the
queries' neighbours (`--database`), 1000 queries; written as your own data
(`folder`, .npz) and prepared to array_record with nhj-prepare-data's
builder, once, under --data_dir.

Runs, each in fresh processes (jax.distributed over loopback, 1 CPU device
per process, so P = 2 uses both cores):
  P=1 memory   config.input='memory'  (every feature in host memory)
  P=1 storage  config.input='storage' (features read by row, on demand)
  P=2 storage  two processes, each reading its own rows

Phases per process: load (labels and ids read, split over processes; with
memory input all features too), epoch (one training epoch over all items at
batch 1024: common.train_loop, incl. the final evaluation = encoding query +
database split over processes and the mAP with the query rows split),
cscc_encode (this process's items encoded for CSCC, read from storage),
cscc_gather (the (N, 2K) code matrix exchanged), cscc_weights: the weights of
`--cscc_rows` rows per process against ALL N columns, timed and extrapolated
linearly to the process's N/P rows (a full 1M x 1M pass takes hours on 2
cores; every row costs the same: one block x N similarity and one top-k), and
the exactness of a bfloat16 code matrix (config.cscc_dtype) on those rows
against float32. Peak RSS = VmHWM after each phase (includes the ~0.5 GB of
JAX/XLA itself).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SECTION = "Pod scale: one SCBCH epoch at 1M items, 1 vs 2 processes (benchmarks/scale.py)"
DIMS = dict(image_dim=128, text_dim=64)
QUERY = 1000


def prepare(data_dir: str, train: int, database: int) -> str:
  """The array_record dataset (built once); returns its TFDS dir."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common.data import synthetic, tfds_builder  # pylint: disable=g-import-not-at-top
  tfds_dir = os.path.join(data_dir, f"tfds_{train}_{database}")
  if os.path.isdir(os.path.join(tfds_dir, "noisy_hashing", "folder")):
    return tfds_dir
  start = time.perf_counter()
  splits = synthetic.make_synthetic(
      "mirflickr25k", seed=0, query_size=QUERY, train_size=train,
      database_size=database, latent_dim=32, **DIMS)
  folder = os.path.join(data_dir, f"npz_{train}_{database}")
  os.makedirs(folder, exist_ok=True)
  for part in ("query", "train", "database"):
    split = getattr(splits, part)
    np.savez(os.path.join(folder, f"{part}.npz"), image=split.image, text=split.text,
             labels=split.labels, ids=split.index)
  del splits
  made = time.perf_counter() - start
  tfds_builder.build_tfds("folder", tfds_dir, data_dir=folder)
  print(f"prepared {train:,} train / {database:,} database items: generated in "
        f"{made:.0f} s, array_record in {time.perf_counter() - start - made:.0f} s",
        flush=True)
  return tfds_dir


def _rss_gb() -> float:
  """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across
  exec, so a worker would report its parent's peak."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 2**20
  raise RuntimeError("no VmHWM in /proc/self/status")


def worker(args) -> dict:
  """One process of one run: phase times and peak RSS as JSON."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                               local_device_ids=[0])
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import scbch as configs  # pylint: disable=g-import-not-at-top
  from common import parallel, run_data, train_loop  # pylint: disable=g-import-not-at-top
  from common.codes import l2_normalize  # pylint: disable=g-import-not-at-top
  from common import methods  # pylint: disable=g-import-not-at-top
  from common.evaluator import RetrievalEvaluator  # pylint: disable=g-import-not-at-top
  from scbch_jax import cscc, train as scbch_train  # pylint: disable=g-import-not-at-top

  config = configs.get_config("synthetic")
  config.update(dict(
      dataset="tfds:folder", tfds_dir=args.tfds_dir, input=args.input,
      noise_protocol="symmetric", noise_rate=0.2, epochs=1, batch_size=1024,
      bits=32, image_hidden=(256,), text_hidden=(256,), cscc_start_epoch=1,
      eval_every=0, checkpoint_every=0, progress=False, eval_batch_size=8192,
      log_every=100))
  phases, rss = {}, {}

  def phase(name, fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out) if out is not None else None
    phases[name] = time.perf_counter() - start
    rss[name] = _rss_gb()
    return out

  data = phase("load", lambda: run_data.load_run_data(config))
  plan = methods.resolve_plan(config, scbch_train.SPEC)
  method = scbch_train.build(config, data, plan)
  evaluator = RetrievalEvaluator({"test": (data.splits.query, data.splits.database)},
                                 directions=scbch_train.SPEC.directions,
                                 empty_queries=scbch_train.SPEC.empty_queries)
  result = phase("epoch", lambda: train_loop.train(
      method, data.train_arrays(), config, args.workdir, evaluator=evaluator,
      log=lambda _: None))
  timing = result.timing
  train = data.train_arrays()
  n = len(train["labels"])
  start, stop = parallel.process_rows(n)
  params = result.state.params
  u, v = phase("cscc_encode", lambda: method.encode_continuous(
      params, train["image"][start:stop], train["text"][start:stop]))
  u, v = phase("cscc_gather", lambda: (parallel.gather_process_rows(u, n),
                                       parallel.gather_process_rows(v, n)))
  labels = np.asarray(train["labels"], np.float32)
  kw = dict(k=config.k, gamma=config.gamma, block_size=256)
  rows = min(args.cscc_rows, stop - start)
  weights = lambda a, b, lo: cscc.neighbour_consistency_weights(
      a, b, labels, rows=(lo, lo + rows), **kw)
  weights(u, v, start)  # compile
  w32 = phase("cscc_weights_sample", lambda: weights(u, v, start))
  ub, vb = (np.asarray(l2_normalize(x), np.float32).astype(jax.numpy.bfloat16)
            for x in (u, v))
  w16 = np.asarray(weights(ub, vb, start))
  diff = np.abs(np.asarray(w32) - w16)
  return dict(
      process=jax.process_index(), processes=jax.process_count(), input=args.input,
      items=n, own_rows=stop - start, phases=phases, rss=rss, timing=timing,
      map={k: v["map"] for k, v in result.results.items()
           if isinstance(v, dict) and "map" in v},
      cscc_rows=rows, cscc_projected_s=phases["cscc_weights_sample"] * (stop - start) / rows,
      bf16=dict(exact=float(np.mean(diff == 0)), max_abs=float(diff.max()),
                mean_abs=float(diff.mean())),
      code_matrix_gb=dict(float32=2 * n * config.bits * 4 / 2**30,
                          bfloat16=2 * n * config.bits * 2 / 2**30))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(tfds_dir: str, input_mode: str, processes: int, cscc_rows: int) -> list[dict]:
  workdir = tempfile.mkdtemp(prefix="scale_")
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen(
      [sys.executable, __file__, "--worker", f"--tfds_dir={tfds_dir}",
       f"--input={input_mode}", f"--num_processes={processes}", f"--process_id={i}",
       f"--coordinator={address}", f"--workdir={workdir}", f"--cscc_rows={cscc_rows}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]
  outs = []
  for p in procs:
    out, err = p.communicate()
    if p.returncode:
      raise RuntimeError(f"worker failed:\n{err[-4000:]}")
    outs.append(json.loads(out.strip().splitlines()[-1]))
  return outs


def table(results: dict[str, list[dict]]) -> str:
  header = ["run", "process", "load s", "epoch s (train / eval)", "CSCC encode s",
            "CSCC gather s", "CSCC weights s (projected, own rows)",
            "peak RSS GB after load / epoch / CSCC",
            "mAP i2t / t2i"]
  rows = []
  for name, procs in results.items():
    for r in procs:
      t = r["timing"]
      rows.append([
          name, r["process"], f"{r['phases']['load']:.1f}",
          f"{r['phases']['epoch']:.1f} ({t.get('train', 0):.1f} / "
          f"{t.get('evaluation', 0) + t.get('final', 0):.1f})",
          f"{r['phases']['cscc_encode']:.1f}", f"{r['phases']['cscc_gather']:.2f}",
          f"~{r['cscc_projected_s']:.0f} ({r['own_rows']:,} rows; {r['cscc_rows']} "
          f"timed in {r['phases']['cscc_weights_sample']:.1f} s)",
          f"{r['rss']['load']:.2f} / {r['rss']['epoch']:.2f} / "
          f"{r['rss']['cscc_weights_sample']:.2f}",
          " / ".join(f"{m:.4f}" for m in r["map"].values())])
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  return bench_util.markdown_table(header, rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train", type=int, default=1_000_000)
  parser.add_argument("--database", type=int, default=None,
                      help="database items (default: --train + 50000)")
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                         "nhj_scale"))
  parser.add_argument("--cscc_rows", type=int, default=2048)
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--from_log", help="re-render the table from a previous "
                      "run's stdout (its 'P=... [json]' lines)")
  parser.add_argument("--load_at_start", type=float, default=float("nan"),
                      help="with --from_log: the load average that run started at")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for flag in ("tfds_dir", "input", "coordinator", "workdir"):
    parser.add_argument(f"--{flag}", help=argparse.SUPPRESS)
  for flag in ("num_processes", "process_id"):
    parser.add_argument(f"--{flag}", type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args)), flush=True)
    return
  database = args.database or args.train + 50_000
  load = os.getloadavg()[0]
  results = {}
  if args.from_log:  # re-render a finished run's table from its printed lines
    with open(args.from_log, encoding="utf-8") as f:
      for line in f:
        if line.startswith("P="):
          name, _, payload = line.partition(" [")
          results[name.strip()] = json.loads("[" + payload)
    load = args.load_at_start
  else:
    tfds_dir = prepare(args.data_dir, args.train, database)
    for name, mode, procs in (("P=1 memory", "memory", 1),
                              ("P=1 storage", "storage", 1),
                              ("P=2 storage", "storage", 2)):
      results[name] = run(tfds_dir, mode, procs, args.cscc_rows)
      print(name, json.dumps(results[name]), flush=True)
  body = table(results)
  first = results["P=1 storage"][0]
  bf16 = first["bf16"]
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  notes = (
      f"Machine: {bench_util.machine()}, 1 JAX CPU device per process, 1-min load "
      f"average {load:.1f} at start; {bench_util.today()}. {args.train:,} training "
      f"items, {database:,} database, {QUERY} queries, image 128-d / text 64-d, "
      "24 classes, 32 bits, towers (256,), batch 1024, one epoch.\n\n"
      f"CSCC code matrix (N x 2K): {first['code_matrix_gb']['float32']:.2f} GB float32, "
      f"{first['code_matrix_gb']['bfloat16']:.2f} GB bfloat16. bfloat16 "
      f"(config.cscc_dtype) vs float32 weights on {first['cscc_rows']} rows x all "
      f"{first['items']:,} columns: {100 * bf16['exact']:.1f}% bit-identical, mean "
      f"|diff| {bf16['mean_abs']:.2e}, max |diff| {bf16['max_abs']:.2e} "
      "(neighbour sets change where bfloat16 rounding reorders near-ties).\n\n"
      "Reading: P = 2 here shares the same 2 cores as P = 1 (one JAX CPU device "
      "per process), so it shows the split of work and memory, not a speed-up "
      "from more hardware. The CSCC weights are projected from the timed rows; "
      "the CSCC peak RSS is its block buffer (block 256 x N float32 similarities "
      "+ top-k), O(block * N), set by config.cscc_block_size.")
  print(body + "\n\n" + notes)
  if not args.no_record:
    bench_util.record(SECTION, body + "\n\n" + notes)


if __name__ == "__main__":
  main()
