r"""DCGMH robust step: augmented pass over the whole batch vs over U only.

  python benchmarks/dcgmh_buffer.py    # prints a table and records RESULTS.md

The robust step (DcgmhMethod.step_body, shard_map driver on one device, state
donated) with config.augment_whole_batch=True (the previous behaviour: the
whole batch augmented and encoded) and False (the default: a static buffer of
⌊τ·B⌋ rows holding the unlabeled items U, masked BatchNorm), τ = 0.4. Small
widths (CPU): image 512-d, text 256-d, hidden = fused = 512, K = 32.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from benchmarks import dcgmh_step  # noqa: E402

D_IMG, D_TXT, C, BITS, WIDTH, BANK = 512, 256, 24, 32, 512, 10_000
BATCHES = (48, 1024, 4096)


def robust_step_seconds(batch: int, whole_batch: bool, repeats: int) -> tuple[float, float]:
  method, dp, labels, rng = dcgmh_step.one_device_method(
      dict(bits=BITS, hidden=WIDTH, fused=WIDTH, warmup_epochs=0, batch_size=batch,
           augment_whole_batch=whole_batch),
      image_dim=D_IMG, text_dim=D_TXT, bank=BANK, num_classes=C)
  idx = np.arange(batch, dtype=np.int32) % BANK
  data = dp.put_rows({"image": rng.random((batch, D_IMG), np.float32),
                      "text": (rng.random((batch, D_TXT)) < 0.05).astype(np.float32),
                      "labels": labels[idx], "index": idx})
  extras = dp.put_rows({})
  holder = {"state": dp.put_state(method.init_state())}

  def one_step():
    holder["state"], metrics = dp.step(holder["state"], data, extras,
                                       context={"epoch": 1, "step_in_epoch": 1},
                                       phase="robust")
    return metrics["unlabeled"]

  _, median = bench_util.time_steps(one_step, repeats=repeats)
  return median, float(one_step())


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no_record", action="store_true")
  args = parser.parse_args()
  rows = []
  for batch in BATCHES:
    whole, _ = robust_step_seconds(batch, True, args.repeats)
    buffered, unlabeled = robust_step_seconds(batch, False, args.repeats)
    rows.append([batch, int(np.floor(0.4 * batch)), f"{unlabeled:.0f}",
                 f"{whole * 1e3:.1f}", f"{buffered * 1e3:.1f}",
                 f"{whole / buffered:.2f}x"])
    print(rows[-1], flush=True)
  table = bench_util.markdown_table(
      ["batch B", "buffer rows ⌊τ·B⌋", "|U| in the last step", "whole batch ms",
       "U buffer ms", "speed-up"], rows)
  body = (f"Machine: {bench_util.machine()}; backend {jax.default_backend()}; "
          f"date {bench_util.today()}; load average {os.getloadavg()[0]:.1f} "
          "(shared cores).\n"
          f"Small widths: image {D_IMG}-d, text {D_TXT}-d, hidden = fused = {WIDTH}, "
          f"K = {BITS}, C = {C}, bank N = {BANK}, τ = 0.4, one device. Median of "
          f"{args.repeats} robust steps after the compile step. 'whole batch' = "
          "config.augment_whole_batch=True (the earlier behaviour); 'U buffer' = the "
          "default (augmented pass on a static ⌊τ·B⌋-row buffer holding U, masked BN).\n\n"
          + table)
  print(body)
  if not args.no_record:
    bench_util.record("DCGMH augmented pass: whole batch vs U buffer "
                      f"(benchmarks/dcgmh_buffer.py, {jax.default_backend()})", body)


if __name__ == "__main__":
  main()
