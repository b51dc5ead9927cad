"""Time and peak memory of the SCBCH CSCC weights at N = 10k, 100k, 1M.

Each size runs in a fresh subprocess so that peak RSS values do not mix.
Where all rows would take too long on a small CPU (1M), a measured number of
row blocks is timed against ALL N columns with the `rows=` option and the
time is extrapolated linearly to N rows (every row costs the same: one
(block x N) similarity and one top-k over N columns). For 100k the full run
is measured AND the same sampling is extrapolated, to check the method.

Usage:
  python benchmarks/scbch_cscc.py                   # print the table
  python benchmarks/scbch_cscc.py --write_results   # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

K_BITS = 64
NUM_CLASSES = 24
SECTION = "## SCBCH CSCC weights (benchmarks/scbch_cscc.py)"
# N -> (block_size, measured rows or None for all rows).
PLAN = {10_000: (1024, None), 100_000: (1024, None), 1_000_000: (256, 2048)}
SAMPLE_ROWS_100K = 4096
REPEATS = 2  # sampled timings: best of this many (the CPU is shared)


def _data(n: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  u = rng.standard_normal((n, K_BITS), dtype=np.float32)
  v = rng.standard_normal((n, K_BITS), dtype=np.float32)
  labels = (rng.random((n, NUM_CLASSES), dtype=np.float32) < 0.1).astype(
      np.float32)
  return u, v, labels


def _timed(fn, *args, **kwargs) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  jax.block_until_ready(fn(*args, **kwargs))
  return time.perf_counter() - start


def worker(n: int, block: int, sample: int | None) -> dict:
  """Runs in its own process; returns the measurements of one size."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from scbch_jax import cscc  # pylint: disable=g-import-not-at-top

  u, v, labels = _data(n)
  u, v, labels = (jax.device_put(x) for x in (u, v, labels))
  weights = cscc.neighbour_consistency_weights
  kw = dict(k=20, gamma=0.5, block_size=block)
  result = dict(n=n, block=block, devices=jax.device_count())
  if sample is None:
    result["first_call_s"] = _timed(weights, u, v, labels, **kw)  # + compile
    result["full_s"] = _timed(weights, u, v, labels, **kw)
    if n >= 100_000:
      rows = SAMPLE_ROWS_100K
      _timed(weights, u, v, labels, rows=(0, rows), **kw)  # compile
      t = min(_timed(weights, u, v, labels, rows=(rows, 2 * rows), **kw)
              for _ in range(REPEATS))
      result.update(check_rows=rows, check_rows_s=t,
                    check_extrapolated_s=t * n / rows)
  else:
    result["first_call_s"] = _timed(weights, u, v, labels, rows=(0, sample),
                                    **kw)
    t = min(_timed(weights, u, v, labels, rows=(sample, 2 * sample), **kw)
            for _ in range(REPEATS))
    result.update(sample_rows=sample, sample_s=t,
                  extrapolated_s=t * n / sample)
  result["peak_rss_gb"] = (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
  return result


def _run_size(n: int) -> dict:
  block, sample = PLAN[n]
  cmd = [sys.executable, __file__, "--worker", str(n), str(block),
         str(sample or 0)]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  load = os.getloadavg()[0]
  return (f"{bench_util.machine()}, 1-min load average {load:.1f} at start "
          "(other jobs share the cores when it exceeds their count), 1 JAX CPU device")


def _table(results: list[dict]) -> str:
  lines = [
      "| N | block | time for all N rows | how | peak RSS |",
      "|---|---|---|---|---|",
  ]
  for r in results:
    if "full_s" in r:
      how = (f"measured (first call incl. compile: {r['first_call_s']:.1f} s)")
      if "check_rows" in r:
        how += (f"; check of the sampling: {r['check_rows']} rows (best of "
              f"{REPEATS}) in {r['check_rows_s']:.2f} s extrapolate to "
              f"{r['check_extrapolated_s']:.1f} s")
      total = f"{r['full_s']:.1f} s"
    else:
      how = (f"EXTRAPOLATED: {r['sample_rows']} rows x all {r['n']:,} "
             f"columns measured in {r['sample_s']:.2f} s (best of {REPEATS}),"
             " x N / rows")
      total = f"~{r['extrapolated_s']:.0f} s (~{r['extrapolated_s']/3600:.1f} h)"
    lines.append(f"| {r['n']:,} | {r['block']} | {total} | {how} | "
                 f"{r['peak_rss_gb']:.2f} GB |")
  return "\n".join(lines)


def main() -> None:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write_results", action="store_true",
                      help="replace this benchmark's section of RESULTS.md")
  parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    n, block, sample = args.worker
    print(json.dumps(worker(n, block, sample or None)))
    return
  machine = _machine()
  results = []
  for n in PLAN:
    results.append(_run_size(n))
    print(json.dumps(results[-1]), flush=True)
  table = _table(results)
  text = "\n".join([
      SECTION, "",
      f"Date: {datetime.date.today().isoformat()}. Machine: {machine}.",
      f"K = {K_BITS} bits per modality, C = {NUM_CLASSES}, k = 20, random "
      "Gaussian codes and ~10% dense labels; float32; row blocks against all "
      "N columns (never the dense N x N). Peak RSS = ru_maxrss of a fresh "
      "process per size (includes the data and JAX itself).", "",
      table, "",
      "Timings are under CPU contention whenever the load average exceeds "
      "the core count: compare the 100k measured time with its sampled "
      "extrapolation to see how noisy they are. Memory is O(block x N + N x "
      "k): at 1M the (256 x 1M) float32 block is 1 GB.", ""])
  print(text)
  if args.write_results:
    from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
    bench_util.record(SECTION.removeprefix("## "), text.split("\n", 2)[2])


if __name__ == "__main__":
  main()
