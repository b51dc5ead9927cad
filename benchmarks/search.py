"""Exact top-k Hamming search: common.index vs FAISS, at EQUAL thread counts.

  python -m benchmarks.search [--sizes 1000000,10000000] [--bits 64]
      [--threads 1,2] [--rounds 5] [--queries 1000] [--methods ours,faiss]

Random codes, 1,000 queries, k = 10, exact, ties by database position.
Every measurement is its own fresh process, limited to T threads (the
project's `num_threads=T`; FAISS's `omp_set_num_threads(T)`, and
OMP/MKL/OpenBLAS_NUM_THREADS=T in the environment of both), with
OMP_WAIT_POLICY=PASSIVE: on a shared machine, OpenMP's default spin-waiting
threads fight the other jobs for the cores and made FAISS at 2 threads up to
4x slower than FAISS at 1 thread (that artefact was behind an earlier "~4x
FAISS" claim here). The methods run
interleaved, ours faiss ours faiss ..., for `--rounds` rounds per (size,
threads) cell, so both see the same load; the table gives the median time with
min-max, the median of the per-round ratios faiss / ours (> 1: ours faster)
with min-max, and the 1-minute load average over the cell's rounds.
Methods:
  ours    common.index.HammingIndex(num_threads=T, backend="cpu"): the
          compiled kernel (common/hamming_kernels.py).
  jax     HammingIndex(backend="jax"): the JAX search on JAX's default
          backend (a GPU/TPU when there is one; on CPU XLA's own threads).
  popcount  the machine's floor: a compiled loop of XOR + VPOPCNT + sum over
          an L1-resident block of 64-bit words, timed per word (one word =
          one pair of 64-bit codes); not a search, no ratio.
  faiss   faiss.IndexBinaryFlat, use_heap=True (its default, and the faster
          mode for small k). faiss is NOT a project dependency; install it
          for this benchmark only:  pip install faiss-cpu
  faiss_scan  the same with use_heap=False (the other mode).
  numpy   per query: np.bitwise_count(db ^ q), argpartition of the key
          d * N + i (one thread; timed on the first queries, extrapolated).
Each process times one search of all queries after a warm-up search of 8
queries (page faults, first-call and compilation costs are not timed).
CPU-ns / pair = process CPU seconds / (queries x N) per (query, item) pair.
Replaces the section "Hamming search (benchmarks/search.py)" of
benchmarks/RESULTS.md unless --no_record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

K = 10
SECTION = "Hamming search (benchmarks/search.py)"


def _data(n: int, queries: int, bits: int):
  rng = np.random.default_rng(0)
  nbytes = -(-bits // 8)
  db = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
  q = rng.integers(0, 256, size=(queries, nbytes), dtype=np.uint8)
  pad = 8 * nbytes - bits
  if pad:
    mask = np.uint8((0xFF << pad) & 0xFF)
    db[:, -1] &= mask
    q[:, -1] &= mask
  return db, q


def _plain_numpy(db: np.ndarray, q: np.ndarray):
  """The textbook exact scan, one query at a time (ties by position)."""
  position = np.arange(db.shape[0], dtype=np.int64)
  ids = np.empty((q.shape[0], K), np.int64)
  dist = np.empty((q.shape[0], K), np.int64)
  for i, query in enumerate(q):
    d = np.bitwise_count(db ^ query).sum(axis=1, dtype=np.int64)
    key = d * db.shape[0] + position
    best = np.sort(key[np.argpartition(key, K - 1)[:K]])
    ids[i], dist[i] = best % db.shape[0], best // db.shape[0]
  return ids, dist


_CPU = {}


def _timed(fn):
  """(wall seconds, result); the process CPU seconds go to _CPU["last"]."""
  cpu = time.process_time()
  start = time.perf_counter()
  result = fn()
  _CPU["last"] = time.process_time() - cpu
  return time.perf_counter() - start, result


def _run_one(method: str, n: int, queries: int, bits: int,
             threads: int) -> dict:
  """Times one method in this process; prints a JSON line."""
  db, q = _data(n, queries, bits)
  out = {"method": method, "n": n, "queries": queries, "bits": bits,
         "threads": threads}
  if method in ("ours", "jax"):
    from common import index  # pylint: disable=g-import-not-at-top
    ix = index.HammingIndex(db, bits, num_threads=threads,
                            backend="cpu" if method == "ours" else "jax")
    # Warm-up: page faults, loading the compiled kernels; the JAX program
    # compiles for the full query shape.
    ix.search(q if method == "jax" else q[:8], k=K)
    seconds, (ids, dist) = _timed(lambda: ix.search(q, k=K))
    if method == "jax":
      import jax  # pylint: disable=g-import-not-at-top
      out["device"] = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
  elif method == "popcount":
    words = db.view(np.uint8).reshape(-1)[:8 * 2048].view(np.uint64).copy()
    seconds = _popcount_floor(words, q.shape[0], n)
    print(json.dumps({**out, "seconds": seconds, "cpu_seconds": seconds}))
    return out
  elif method in ("faiss", "faiss_scan"):
    try:
      import faiss  # pylint: disable=g-import-not-at-top
    except ImportError:
      out["skipped"] = "faiss not importable (pip install faiss-cpu)"
      print(json.dumps(out))
      return out
    faiss.omp_set_num_threads(threads)
    fi = faiss.IndexBinaryFlat(8 * db.shape[1])
    fi.use_heap = method == "faiss"
    fi.add(db)
    fi.search(q[:8], K)  # warm-up
    seconds, (dist, ids) = _timed(lambda: fi.search(q, K))
    out.update(version=faiss.__version__,
               omp_threads=faiss.omp_get_max_threads())
  elif method == "numpy":
    sub = min(queries, max(5, int(2e8 // n)))
    seconds, (ids, dist) = _timed(lambda: _plain_numpy(db, q[:sub]))
    seconds *= queries / sub
    out["measured_queries"] = sub
  else:
    raise ValueError(f"--methods: unknown method {method!r}.")
  out.update(seconds=seconds, cpu_seconds=_CPU["last"], ids=np.asarray(ids)[:50].tolist(),
             dist=np.asarray(dist).tolist())
  print(json.dumps(out))
  return out


def _popcount_floor(words: np.ndarray, queries: int, n: int) -> float:
  """Seconds for queries x n XOR + popcount + add of 64-bit words, from a
  compiled loop over an L1-resident block (the best of 3 CPU timings of
  2e9)."""
  import numba  # pylint: disable=g-import-not-at-top
  from common import hamming_kernels  # pylint: disable=g-import-not-at-top
  popcount = hamming_kernels._popcount  # pylint: disable=protected-access

  @numba.njit(nogil=True, boundscheck=False)
  def scan(qs, x, reps):
    total = 0
    for _ in range(reps):
      for qv in qs:
        acc = 0
        for i in range(x.shape[0]):
          acc += popcount(qv ^ x[i])
        total += acc
    return total

  qs = words[:100].copy()
  scan(qs, words, 1)
  reps = max(1, int(2e9 // (qs.size * words.size)))
  best = float("inf")
  for _ in range(3):  # process CPU time: robust to other jobs on the cores
    _timed(lambda: scan(qs, words, reps))
    best = min(best, _CPU["last"])
  return best / (reps * qs.size * words.size) * queries * n


def _subprocess(method: str, n: int, queries: int, bits: int,
                threads: int) -> dict:
  t = str(threads)
  env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t,
             OPENBLAS_NUM_THREADS=t, NUMEXPR_NUM_THREADS=t,
             NUMBA_NUM_THREADS=t, OMP_WAIT_POLICY="PASSIVE")
  if threads == 1:  # XLA's CPU thread pool (the jax method on CPU)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false").strip()
  cmd = [sys.executable, "-m", "benchmarks.search", "--one", method,
         "--sizes", str(n), "--queries", str(queries), "--bits", str(bits),
         "--threads", t]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        cwd=os.path.dirname(os.path.dirname(
                            os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise SystemExit(f"benchmark process failed: {' '.join(cmd)}\n"
                     f"{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _span(values, fmt="{:.3f}") -> str:
  return (fmt.format(statistics.median(values)) + " (" + fmt.format(
      min(values)) + "–" + fmt.format(max(values)) + ")")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="1000000,10000000")
  parser.add_argument("--bits", default="64",
                      help="comma-separated code lengths")
  parser.add_argument("--threads", default="1,2",
                      help="comma-separated thread counts, equal for all")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--methods", default="ours,faiss")
  parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--no_record", action="store_true")
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  bits_list = [int(b) for b in args.bits.split(",")]
  thread_list = [int(t) for t in args.threads.split(",")]
  if args.one:
    _run_one(args.one, sizes[0], args.queries, bits_list[0], thread_list[0])
    return
  methods = args.methods.split(",")
  if methods[0] != "ours":
    raise SystemExit("--methods must start with ours (the ratios' base).")
  import platform  # pylint: disable=g-import-not-at-top
  cpu = platform.processor()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
               if line.startswith("Model name"))
  except (OSError, StopIteration):
    pass
  date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  rows, notes, versions = [], [], {}
  for bits in bits_list:
    for n in sizes:
      for threads in thread_list:
        times = {m: [] for m in methods}
        cpu_times = {m: [] for m in methods}
        loads, first = [], {}
        for _ in range(args.rounds):
          loads.append(os.getloadavg()[0])
          for m in methods:
            r = _subprocess(m, n, args.queries, bits, threads)
            if "skipped" in r:
              raise SystemExit(f"{m}: {r['skipped']}")
            times[m].append(r["seconds"])
            cpu_times[m].append(r["cpu_seconds"])
            first.setdefault(m, r)
            if "version" in r:
              versions[m] = r["version"]
        loads.append(os.getloadavg()[0])
        ours = first["ours"]
        for m in methods[1:]:
          if m == "popcount":
            continue
          same_dist = first[m]["dist"] == ours["dist"]
          same_ids = first[m]["ids"] == ours["ids"]
          if not same_dist:
            notes.append(f"**{bits} bits, N={n:,}: {m} distances DIFFER from "
                         "ours.**")
          elif not same_ids:
            notes.append(f"{bits} bits, N={n:,}: {m} ids differ from ours on "
                         "the first 50 queries (ties at the k-th distance).")
        for m in methods:
          ratio = [b / a for a, b in zip(times["ours"], times[m])]
          cpu_ratio = [b / a for a, b in zip(cpu_times["ours"],
                                             cpu_times[m])]
          cpu_med = statistics.median(cpu_times[m])
          pairs = args.queries * n
          floor = m == "popcount"
          words = -(-bits // 64)
          rows.append([
              bits, f"{n:,}", threads,
              f"popcount floor (x{words} words)" if floor else m,
              _span([t * words for t in times[m]]) if floor else
              _span(times[m]),
              "" if m == "ours" or floor else _span(ratio, "{:.2f}"),
              "" if floor else _span(cpu_times[m]),
              "" if m == "ours" or floor else _span(cpu_ratio, "{:.2f}"),
              f"{cpu_med * (words if floor else 1) * 1e9 / pairs:.3f}",
              f"{min(loads):.1f}–{max(loads):.1f}"])
        print(rows[-len(methods):], flush=True)
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  header = ["bits", "N", "threads", "method",
            f"{args.queries} queries, s: median (min–max)",
            "other / ours", "CPU s", "other / ours, CPU s", "CPU-ns / pair",
            "load (1 min)"]
  command = ("python -m benchmarks.search " + " ".join(
      f"--{k} {v}" for k, v in (("sizes", args.sizes), ("bits", args.bits),
                                ("threads", args.threads),
                                ("rounds", args.rounds),
                                ("queries", args.queries),
                                ("methods", args.methods))))
  body = "\n".join([
      f"Date: {date}. Machine: {cpu}, nproc {os.cpu_count()} (shared with "
      f"other jobs). numpy {np.__version__}"
      + "".join(f", {m} {v}" for m, v in versions.items()) + ".",
      f"Command: `{command}`",
      "",
      f"Top-{K} of {args.queries} random queries over N random codes, exact, "
      "ties by database position. Each number is a fresh process at the "
      "given thread count (the same for every method); methods interleaved "
      f"over {args.rounds} rounds; median (min–max); ratio > 1: ours "
      "faster, medians of the per-round ratios, of wall time and of the "
      "process CPU time (less sensitive to other jobs on the cores). "
      "CPU-ns / pair = median process CPU seconds (all threads) / (queries "
      "x N); for the popcount floor, its CPU time for the code's 64-bit "
      "words, one thread. Load: the "
      "1-minute load "
      "average before each round and after the last (2 cores). All "
      "processes run with OMP_WAIT_POLICY=PASSIVE (see the script's "
      "docstring).",
      "", bench_util.markdown_table(header, rows), "",
      *(notes or ["Distances and the first 50 queries' ids equal ours for "
                  "every method and size."])])
  print(body)
  if not args.no_record:
    bench_util.record(SECTION, body)


if __name__ == "__main__":
  main()
