r"""SCBCH train-step speed: step time and samples/s, paper preset and small widths.

  python benchmarks/scbch_step.py            # step table (+ records RESULTS.md)
  python benchmarks/scbch_step.py --cscc     # also the CSCC weight table
                                             # (benchmarks/scbch_cscc.py)

The step is the real one (ScbchMethod.step_body under the shard_map driver on
one device): forward of both towers, L_bsch over the global batch, L_q,
weighted L_cls, gradients and the Adam update, state donated.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from common import parallel  # noqa: E402
from configs import scbch as scbch_configs  # noqa: E402
from scbch_jax.train import ScbchMethod  # noqa: E402

SETTINGS = [
    # name, image_hidden, text_hidden, bits, batch
    ("paper (4096-8192-8192-64 / 1386-8192-64)", (8192, 8192), (8192,), 64, 128),
    ("small (4096-512-512-64 / 1386-512-64)", (512, 512), (512,), 64, 128),
    ("small, large batch", (512, 512), (512,), 64, 1024),
]


def bench(image_hidden, text_hidden, bits, batch, repeats):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(bits=bits, image_hidden=tuple(image_hidden),
                     text_hidden=tuple(text_hidden), batch_size=batch))
  rng = np.random.default_rng(0)
  labels = (rng.random((batch, 24)) < 0.1).astype(np.float32)
  method = ScbchMethod(config, image_dim=4096, text_dim=1386, num_classes=24)
  dp = parallel.DataParallel(method.step_body, mesh=parallel.make_mesh(jax.devices()[:1]),
                             max_phases=len(method.phases))
  state = dp.put_state(method.init_state())
  data = dp.put_rows({"image": rng.random((batch, 4096), np.float32),
                      "text": (rng.random((batch, 1386)) < 0.02).astype(np.float32),
                      "labels": labels, "index": np.arange(batch, dtype=np.int32)})
  extras = dp.put_rows({"weight": np.ones(batch, np.float32)})
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = dp.step(holder["state"], data, extras,
                                       context={"epoch": 0, "step_in_epoch": 0},
                                       phase=method.phases[0])
    return metrics["loss"]

  first, median, cpu = bench_util.time_steps_cpu(one_step, repeats=repeats)
  params = sum(x.size for x in jax.tree.leaves(dp.get_state(holder["state"]).params))
  bench.cpu = cpu
  return first, median, params


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cscc", action="store_true", help="also run scbch_cscc.py")
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--settings", default=None,
                      help="comma-separated indices into SETTINGS (default: all), "
                           "e.g. --settings=1 for the small one only")
  args = parser.parse_args()
  chosen = SETTINGS if args.settings is None else \
      [SETTINGS[int(i)] for i in args.settings.split(",")]
  rows = []
  for name, ih, th, bits, batch in chosen:
    first, median, params = bench(ih, th, bits, batch, args.repeats)
    rows.append([name, batch, f"{params / 1e6:.1f}M", f"{first:.2f}",
                 f"{median * 1e3:.1f}", f"{bench.cpu * 1e3:.1f}",
                 f"{batch / bench.cpu:.0f}"])
    print(rows[-1], flush=True)
  table = bench_util.markdown_table(
      ["setting", "batch", "params", "first step s (compile)", "step ms (median wall)",
       "step CPU ms (median)", "samples per CPU-s"], rows)
  body = (f"Machine: {bench_util.machine()}; backend {jax.default_backend()}; "
          f"date {bench_util.today()}; {bench_util.threads()} thread(s) (taskset); load "
          f"average {bench_util.load_average():.1f}; peak RSS "
          f"{bench_util.peak_rss_gb():.1f} GB. Command: `taskset -c 0 python "
          f"benchmarks/scbch_step.py`.\nMedian of {args.repeats} steps after the first "
          "(compile) step; wall time and this process's CPU seconds (at one thread "
          f"the steadier measure on a shared machine).\n\n{table}")
  print(body)
  if args.settings is not None:  # a subset would replace the full table
    print("(--settings given: RESULTS.md not updated)")
  elif not args.no_record:
    section = f"SCBCH train step (benchmarks/scbch_step.py, {jax.default_backend()})"
    bench_util.record(section, body)
  if args.cscc:
    from benchmarks import scbch_cscc  # pylint: disable=g-import-not-at-top
    sys.argv = [sys.argv[0]]
    scbch_cscc.main()


if __name__ == "__main__":
  main()
