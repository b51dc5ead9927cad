"""Helpers shared by the benchmark scripts: timing, machine description, RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
import subprocess
import time
from typing import Callable

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
  """'<cpu model>, N cores' (+ accelerator names when JAX sees one)."""
  model = platform.processor() or "unknown CPU"
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Model name:\s*(.+)", out)
    model = found.group(1).strip() if found else model
  except OSError:
    pass
  text = f"{model}, {os.cpu_count()} cores"
  accel = [d for d in jax.devices() if d.platform != "cpu"]
  if accel:
    text += f"; {len(accel)} x {accel[0].device_kind}"
  return text


def today() -> str:
  return datetime.date.today().isoformat()


def peak_rss_gb() -> float:
  """Peak resident memory of this process so far (ru_maxrss, KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_steps(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5
               ) -> tuple[float, float]:
  """(first-call seconds incl. compilation, median seconds of later calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  times.sort()
  return first, times[len(times) // 2]


def time_steps_cpu(fn: Callable[[], object], *, repeats: int = 5
                   ) -> tuple[float, float, float]:
  """(first-call wall seconds incl. compilation, median wall seconds, median
  CPU seconds of this process) of later calls. With the process pinned to one
  CPU, CPU seconds are the steadier measure on a shared machine."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return first, sorted(wall)[len(wall) // 2], sorted(cpu)[len(cpu) // 2]


def threads() -> int:
  """CPUs this process may run on (taskset): XLA:CPU's thread count."""
  return len(os.sched_getaffinity(0))


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def record(section: str, body: str) -> None:
  """Replaces (or appends) `## section` in RESULTS.md with `body`."""
  text = open(RESULTS, encoding="utf-8").read() if os.path.exists(RESULTS) else \
      "# Benchmark results\n\nEach section is written by the script it names.\n"
  heading = f"## {section}"
  block = f"{heading}\n\n{body.strip()}\n"
  pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
  text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else \
      text.rstrip() + "\n\n" + block
  with open(RESULTS, "w", encoding="utf-8") as f:
    f.write(text)


def pinned_env(threads: int) -> dict:
  """Environment for a child process limited to `threads` threads: BLAS/OpenMP
  variables (XLA:CPU sizes its pool from the CPU affinity: see pinned_command)."""
  t = str(threads)
  return dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t,
              NUMEXPR_NUM_THREADS=t)


def pinned_command(argv: list[str], threads: int) -> list[str]:
  """argv under `taskset` on the first `threads` CPUs (XLA:CPU's thread pool and
  Eigen size themselves from the affinity mask), so both sides of a comparison
  run with the same number of threads."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  if len(cpus) < threads:
    raise ValueError(f"threads={threads}: only {len(cpus)} CPUs available")
  return ["taskset", "-c", ",".join(map(str, cpus))] + list(argv)


def interleave(commands: dict[str, list[str]], *, rounds: int, threads: int,
               env_extra: dict[str, dict] | None = None) -> dict[str, list[dict]]:
  """Runs each command in its own process, interleaved (A B A B ...) for
  `rounds` rounds at `threads` threads each; every command prints one line
  `RESULT {json}`. Returns {name: [result dict per round]}."""
  import json  # pylint: disable=g-import-not-at-top
  out: dict[str, list[dict]] = {name: [] for name in commands}
  for _ in range(rounds):
    for name, argv in commands.items():
      env = pinned_env(threads)
      env.update((env_extra or {}).get(name, {}))
      run = subprocess.run(pinned_command(argv, threads), env=env, capture_output=True,
                           text=True, check=False)
      lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
      if run.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed ({run.returncode}): {' '.join(argv)}\n"
                           f"{run.stderr[-3000:]}")
      out[name].append(json.loads(lines[-1][len("RESULT "):]))
  return out


def median_range(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
  """'median (min-max)' of values x scale."""
  v = sorted(x * scale for x in values)
  mid = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
  return f"{fmt.format(mid)} ({fmt.format(v[0])}–{fmt.format(v[-1])})"


def load_average() -> float:
  return os.getloadavg()[0]
