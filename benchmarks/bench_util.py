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
