r"""Start-up cost of a whole run: compilations and time to the first step.

  python benchmarks/startup.py              # table + records RESULTS.md
  python benchmarks/startup.py --methods=scbch --no_record

For nhj-scbch and nhj-dcgmh on a tiny synthetic run (one epoch, small widths)
the launcher runs as a fresh subprocess, each time in a fresh workdir:

  cold: a new, empty persistent compilation cache directory;
  warm: the same directory again (the programs the cold run wrote, and the
        step executables: common.exec_cache);
  warm, no executables: the same with --noexecutable_cache (XLA's cache only);
  off:  --compilation_cache_dir= (no persistent cache).

--threads (default 1) limits XLA's CPU client and BLAS/OpenMP per run.

Measured per run:
  wall s            the subprocess, launch to exit (interpreter and imports,
                    data, compiles, one epoch, evaluation, export);
  first step (loop) run_summary.json's first_step_seconds: start of the
                    training loop to the first finished step;
  first step (proc) subprocess launch to the first finished step;
  programs          XLA programs the process built (jax.monitoring events
                    '/jax/core/compile/backend_compile_duration': one per
                    program, compiled or read from the persistent cache), and
                    of those, how many were cache hits
                    ('/jax/compilation_cache/cache_hits'); compiled = the rest.

The counts and the process-level first-step time come from running the real
launcher module (launch.<method>, its absl main, flags and all) in the child
under a thin wrapper (this file with --child): the wrapper registers the
monitoring listeners, notes when the first DataParallel.step's result is
ready, and writes them to a JSON file when the launcher exits.
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

COMMON_FLAGS = ["--config.dataset=synthetic:tiny", "--config.epochs=1",
                "--config.progress=false"]
METHOD_FLAGS = {
    "scbch": ["--config.image_hidden=64,64", "--config.text_hidden=(64,)"],
    "dcgmh": ["--config.hidden=64", "--config.fused=64"],
}
BEFORE = ("Before configs as code (same tiny runs): 51 (SCBCH) / 63 (DCGMH) XLA "
          "programs compiled, and 13-16 s spent before the first step, on a loaded "
          "2-core machine (compare with 'compiled' and 'first step s (process)'). "
          "DCGMH with one epoch never leaves its warm-up phase (warmup_epochs=5), "
          "so the robust step's program is not among its count.")


# --- child: the launcher, instrumented ------------------------------------------

def child(method: str, stats_path: str, launcher_args: list[str]) -> None:
  import runpy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from common import parallel  # pylint: disable=g-import-not-at-top

  stats = {"programs": 0, "cache_hits": 0, "cache_misses": 0, "compile_s": 0.0,
           "first_step_time": None}

  def on_event(name, **_):
    if name == "/jax/compilation_cache/cache_hits":
      stats["cache_hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
      stats["cache_misses"] += 1

  def on_duration(name, secs, **_):
    if "backend_compile" in name:
      stats["programs"] += 1
      stats["compile_s"] += secs

  jax.monitoring.register_event_listener(on_event)
  jax.monitoring.register_event_duration_secs_listener(on_duration)

  step = parallel.DataParallel.step

  def timed_step(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    if stats["first_step_time"] is None:
      jax.block_until_ready(out)  # the loop blocks on the first step too
      stats["first_step_time"] = time.time()
    return out

  parallel.DataParallel.step = timed_step
  sys.argv = [f"nhj-{method}", *launcher_args]
  try:
    runpy.run_module(f"launch.{method}", run_name="__main__", alter_sys=True)
  finally:
    from common import exec_cache  # pylint: disable=g-import-not-at-top
    cached = exec_cache.stats()
    stats["executables_loaded"] = cached["hits"]
    stats["executables_stored"] = cached["misses"]
    with open(stats_path, "w", encoding="utf-8") as f:
      json.dump(stats, f)


# --- parent ---------------------------------------------------------------------------

def run_once(method: str, cache_dir: str, tmp: str, label: str,
             extra: tuple[str, ...] = (), threads: int = 1) -> dict:
  workdir = os.path.join(tmp, f"{method}-{label.replace(' ', '_')}-workdir")
  stats_path = os.path.join(tmp, f"{method}-{label.replace(' ', '_')}-stats.json")
  args = COMMON_FLAGS + METHOD_FLAGS[method] + [
      f"--workdir={workdir}", f"--compilation_cache_dir={cache_dir}", *extra]
  cmd = [sys.executable, os.path.abspath(__file__), "--child", method,
         "--stats", stats_path, "--", *args]
  from benchmarks import small_runs  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             **small_runs.thread_env(threads))
  start = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)
  wall = time.time() - start
  if proc.returncode:
    raise RuntimeError(f"{method} ({label}) exited {proc.returncode}:\n"
                       f"{proc.stderr[-3000:]}")
  with open(stats_path, encoding="utf-8") as f:
    stats = json.load(f)
  with open(os.path.join(workdir, "run_summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  return {"method": method, "cache": label, "wall": wall,
          "first_loop": summary["first_step_seconds"],
          "first_proc": stats["first_step_time"] - start,
          "run_seconds": summary["seconds"], **stats}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--methods", default="scbch,dcgmh")
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--threads", type=int, default=1,
                      help="XLA/BLAS threads per run (0: the libraries' default)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--stats", help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args()
  if args.child:
    child(args.child, args.stats, rest[1:] if rest[:1] == ["--"] else rest)
    return

  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  load_before = os.getloadavg()
  rows, results = [], []
  with tempfile.TemporaryDirectory(prefix="nhj-startup-") as tmp:
    for method in args.methods.split(","):
      cache = os.path.join(tmp, f"{method}-cache")
      os.makedirs(cache)
      for label, cache_dir, extra in (
          ("cold", cache, ()), ("warm", cache, ()),
          ("warm, no executables", cache, ("--noexecutable_cache",)),
          ("off", "", ())):
        r = run_once(method, cache_dir, tmp, label, extra, args.threads)
        results.append(r)
        compiled = r["programs"] - r["cache_hits"]
        rows.append([f"nhj-{method}", label, f"{r['wall']:.1f}",
                     f"{r['first_loop']:.2f}", f"{r['first_proc']:.1f}",
                     r["programs"], compiled, r["cache_hits"],
                     f"{r['compile_s']:.1f}",
                     f"{r['executables_loaded']} / {r['executables_stored']}"])
        print(rows[-1], flush=True)
  load_after = os.getloadavg()
  table = bench_util.markdown_table(
      ["method", "cache", "wall s", "first step s (loop)", "first step s (process)",
       "XLA programs", "compiled", "from cache", "compile/retrieve s",
       "step executables loaded / stored"], rows)
  body = (
      f"Machine: {bench_util.machine()} (nproc {os.cpu_count()}); date "
      f"{bench_util.today()}; {args.threads or 'default'} XLA/BLAS thread(s) per "
      "run; load average (1/5/15 min) before "
      f"{' / '.join(f'{x:.1f}' for x in load_before)}, after "
      f"{' / '.join(f'{x:.1f}' for x in load_after)} (other jobs share the cores).\n"
      f"Each row: one launcher process (`python -m launch.<method> "
      f"{' '.join(COMMON_FLAGS)}` + small widths: scbch "
      f"`{' '.join(METHOD_FLAGS['scbch'])}`, dcgmh `{' '.join(METHOD_FLAGS['dcgmh'])}`) "
      "in a fresh workdir. cold = new empty --compilation_cache_dir, warm = the "
      "same dir again (step programs loaded from its executables/: "
      "common.exec_cache), warm, no executables = the same with "
      "`--noexecutable_cache` (XLA's cache only: the steps are traced and "
      "lowered), off = `--compilation_cache_dir=`. first step (loop) = "
      "run_summary.json first_step_seconds (training-loop start to first finished "
      "step); first step (process) = subprocess launch to first finished step. "
      "XLA programs = jax.monitoring backend_compile events in the process "
      "(compiled + read from the persistent cache; cache hits = "
      "/jax/compilation_cache/cache_hits events); compile/retrieve s = their summed "
      "durations.\n\n"
      f"{BEFORE}\n\n{table}")
  print(body)
  if not args.no_record:
    bench_util.record("Start-up: compilations and time to first step "
                      "(benchmarks/startup.py)", body)


if __name__ == "__main__":
  main()
