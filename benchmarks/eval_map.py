"""Benchmark: exact mAP (common.metrics) vs the plain per-query NumPy loop.

  python -m benchmarks.eval_map [--sizes=mirflickr,nuswide] [--bits=16,64,128]

Data: random ±1 codes drawn around a few hundred cluster centres with bit
flips (so Hamming distances cluster and ties are common) and multi-hot labels
from per-cluster label profiles with noise. The plain loop is what the
releases do per query: Hamming distance by a matmul, a stable argsort,
cumulative precision. On large sets it runs on the first --loop_queries
queries and its time is extrapolated linearly (marked "~"); the mAP check
compares both implementations on the queries the loop ran: per-query AP
equal BIT FOR BIT (np.mean in the loop and the kernel's pairwise sum add
in the same order).

Prints a table and rewrites the section "## Retrieval evaluation
(benchmarks/eval_map.py)" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os

# Single-threaded BLAS for the loop's matmuls and a single-threaded metrics
# kernel (NUMBA_NUM_THREADS): both sides then use one core, and idle-spinning
# threads do not distort timings on a shared machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMBA_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

# pylint: disable=g-import-not-at-top,wrong-import-position
import datetime
import sys
import time
import tracemalloc

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_util
from common import metrics

SIZES = {  # name: (queries, database, classes)
    "mirflickr": (2000, 18015, 24),
    "nuswide": (2100, 193749, 21),
}
SECTION = "## Retrieval evaluation (benchmarks/eval_map.py)"

_SIZES = flags.DEFINE_list("sizes", list(SIZES), "Data-set sizes to run.")
_BITS = flags.DEFINE_list("bits", ["16", "64", "128"], "Code lengths.")
_LOOP_QUERIES = flags.DEFINE_integer(
    "loop_queries", 300,
    "Queries the plain loop runs on sets with a database over 50k items.",
    lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Our timings are the best of this many runs.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic codes.")
_WRITE = flags.DEFINE_bool("write", True, "Rewrite the RESULTS.md section.")


def make_data(rng: np.random.Generator, num_q: int, num_db: int, bits: int,
              classes: int, centres: int = 300, flip: float = 0.12):
  """Clustered ±1 codes and cluster-correlated multi-hot labels."""
  cent = rng.choice(np.array([-1, 1], np.int8), size=(centres, bits))
  profile = rng.random((centres, classes)) < 2.0 / classes

  def draw(n):
    cluster = rng.integers(0, centres, n)
    c = cent[cluster]
    codes = np.where(rng.random((n, bits)) < flip, -c, c).astype(np.float32)
    labels = profile[cluster] ^ (rng.random((n, classes)) < 0.03)
    return codes, labels.astype(np.float32)

  qc, ql = draw(num_q)
  dc, dl = draw(num_db)
  return qc, dc, ql, dl


def plain_loop_aps(qc, dc, ql, dl) -> np.ndarray:
  """The releases' per-query loop (stable sort; NaN for empty queries)."""
  bits = qc.shape[1]
  aps = np.full(qc.shape[0], np.nan)
  for i in range(qc.shape[0]):
    gnd = (ql[i] @ dl.T) > 0
    total = int(gnd.sum())
    if total == 0:
      continue
    hamm = 0.5 * (bits - qc[i] @ dc.T)
    ranked = gnd[np.argsort(hamm, kind="stable")]
    where = np.flatnonzero(ranked) + 1.0
    aps[i] = np.mean(np.arange(1, total + 1) / where)
  return aps


def timed(fn, *args, repeats: int = 1, **kwargs):
  """(output, best wall time over `repeats` calls)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    best = min(best, time.perf_counter() - start)
  return out, best


def peak_mib(fn, *args, **kwargs) -> float:
  """tracemalloc peak (numpy buffers are traced) during one call, MiB."""
  tracemalloc.start()
  tracemalloc.reset_peak()
  base = tracemalloc.get_traced_memory()[0]
  fn(*args, **kwargs)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  return (peak - base) / 2**20


def run_case(name: str, bits: int, rng: np.random.Generator) -> dict:
  """Times ours and the loop on one size and code length; checks equal mAP."""
  num_q, num_db, classes = SIZES[name]
  qc, dc, ql, dl = make_data(rng, num_q, num_db, bits, classes)
  reps = _REPEATS.value
  metrics.average_precisions(qc[:2], dc[:50], ql[:2], dl[:50])  # load kernels
  cpu = time.process_time()
  aps, t_index = timed(metrics.average_precisions, qc, dc, ql, dl,
                       repeats=reps)
  cpu_index = (time.process_time() - cpu) / reps
  _, t_tie = timed(metrics.mean_average_precision, qc, dc, ql, dl,
                   ties="tie_aware", repeats=reps)
  _, t_all = timed(metrics.retrieval_metrics, qc, dc, ql, dl,
                   precision_ns=(100, 500, 1000), repeats=reps)
  loop_q = num_q if num_db <= 50_000 else min(_LOOP_QUERIES.value, num_q)
  loop_aps, t_loop = timed(plain_loop_aps, qc[:loop_q], dc, ql[:loop_q], dl)
  ours = aps[:loop_q]
  diff = abs(np.nanmean(ours) - np.nanmean(loop_aps))
  if not np.array_equal(ours, loop_aps, equal_nan=True):
    raise AssertionError(f"{name}/{bits}: per-query AP differs from the loop "
                         f"(mAP by {diff})")
  return {
      "name": name, "bits": bits, "num_q": num_q, "num_db": num_db,
      "map": float(np.nanmean(aps)), "t_index": t_index,
      "cpu_index": cpu_index, "t_tie": t_tie,
      "t_all": t_all, "t_loop": t_loop * num_q / loop_q,
      "loop_extrapolated": loop_q < num_q, "loop_q": loop_q, "diff": diff,
      "peak": peak_mib(metrics.mean_average_precision, qc, dc, ql, dl),
  }


def table(rows: list[dict]) -> str:
  """Markdown table of run_case outputs."""
  lines = [
      "| set (Q x N) | bits | mAP (index) | ours index mAP@all (s) | "
      "(CPU s) | "
      "ours tie-aware (s) | all metrics, 1 pass (s) | plain loop (s) | "
      "speed-up | abs. mAP diff (loop queries) | peak MiB (tracemalloc) |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    loop = (f"~{r['t_loop']:.1f} ({r['loop_q']} q)"
            if r["loop_extrapolated"] else f"{r['t_loop']:.1f}")
    lines.append(
        f"| {r['name']} ({r['num_q']} x {r['num_db']}) | {r['bits']} | "
        f"{r['map']:.4f} | {r['t_index']:.2f} | {r['cpu_index']:.2f} | "
        f"{r['t_tie']:.2f} | "
        f"{r['t_all']:.2f} | {loop} | {r['t_loop'] / r['t_index']:.1f}x | "
        f"{r['diff']:.1e} | {r['peak']:.0f} |")
  return "\n".join(lines)


def main(argv) -> None:
  """Runs every size x bits case, prints and records the table."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [s for s in _SIZES.value if s not in SIZES]
  if unknown:
    raise ValueError(f"--sizes: unknown {unknown}; choose from {list(SIZES)}.")
  bits = [int(b) for b in _BITS.value]
  rng = np.random.default_rng(_SEED.value)
  load_before = os.getloadavg()
  rows = []
  for name in _SIZES.value:
    for b in bits:
      rows.append(run_case(name, b, rng))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  load_after = os.getloadavg()
  body = "\n".join([
      f"Machine: {bench_util.machine()}, shared with other agents' jobs while this ran "
      f"(1-min load average {load_before[0]:.1f} before, "
      f"{load_after[0]:.1f} after), so timings are under load.",
      f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. "
      f"numpy {np.__version__}, one thread (BLAS too). Our times: best of "
      f"{_REPEATS.value} runs; plain loop: one run.",
      "",
      table(rows),
      "",
      "ours = `common.metrics` (the compiled kernel of "
      "common/hamming_kernels.py: one pass per group of 8 queries, counts per "
      "distance and index-order ranks by a counting sort, ties by database "
      "index; NUMBA_NUM_THREADS=1). CPU s: process CPU time of the index "
      "mAP call (robust to other jobs on the cores). Plain loop "
      "= per query: float matmul Hamming, `argsort(kind='stable')`, "
      "cumulative precision. `~`: loop timed on the first queries and "
      "extrapolated linearly; the check compares both on those queries: "
      "every per-query AP equal bit for bit (empty queries NaN in both). Peak memory = tracemalloc peak "
      "over one `mean_average_precision` call, inputs excluded.",
  ])
  print(body)
  if _WRITE.value:
    bench_util.record(SECTION.removeprefix("## "), body)


if __name__ == "__main__":
  app.run(main)
