r"""DCGMH train-step speed: warm-up vs robust phase, and the noise filter's share.

  python benchmarks/dcgmh_step.py    # prints a table and records RESULTS.md

For each setting: the real warm-up and robust steps (DcgmhMethod.step_body
under the shard_map driver on one device, state donated), and, separately,
the noise filter alone (center similarity, consistency scores, flagging, bank
update and top-k label reconstruction against the N-row bank) jitted on the
same batch, to show what fraction of a robust step it costs.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from common import parallel  # noqa: E402
from dcgmh_jax import noise_filter as nf  # noqa: E402
from configs import dcgmh as dcgmh_configs  # noqa: E402
from dcgmh_jax.train import DcgmhMethod  # noqa: E402

D_IMG, D_TXT, C, BITS, BANK = 4096, 1386, 24, 32, 10_000
SETTINGS = [
    # name, hidden, fused, batch
    ("paper (4096-4096-4096, K=32)", 4096, None, 48),
    ("paper widths, batch 1024", 4096, None, 1024),
    ("small (1024-1024), batch 4096", 1024, 1024, 4096),
]


def one_device_method(overrides, *, image_dim: int, text_dim: int, bank: int,
                      num_classes: int):
  """(DcgmhMethod at τ = 0.4 on random bank labels, its one-device shard_map
  driver, the labels, the rng that drew them) for a step benchmark."""
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(overrides)
  rng = np.random.default_rng(0)
  labels = (rng.random((bank, num_classes)) < 0.1).astype(np.float32)
  method = DcgmhMethod(config, image_dim=image_dim, text_dim=text_dim,
                       train_labels=labels, noise_ratio=0.4)
  dp = parallel.DataParallel(method.step_body, mesh=parallel.make_mesh(jax.devices()[:1]),
                             max_phases=len(method.phases))
  return method, dp, labels, rng


def filter_only(batch: int, key) -> float:
  """Median seconds of the filter + bank update + reconstruction alone."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  h = jax.random.normal(k1, (batch, BITS))
  centers = jax.random.normal(k2, (C, BITS))
  labels = (jax.random.uniform(k3, (batch, C)) < 0.1).astype(jnp.float32)
  bank_sim, bank_clean = nf.init_bank(BANK, C, key=k4)
  bank_labels = (jax.random.uniform(k4, (BANK, C)) < 0.1).astype(jnp.float32)
  index = jnp.arange(batch, dtype=jnp.int32) % BANK

  @jax.jit
  def run(h, bank_sim, bank_clean):
    sim = nf.center_similarity(h, centers)
    scores = nf.consistency_scores(sim, labels)
    noisy = nf.flag_noisy(scores, 0.4)
    bank_sim, bank_clean = nf.update_bank(bank_sim, bank_clean, index, sim, noisy)
    new_labels, rec = nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels,
                                            k=2, noisy=noisy, self_indices=index)
    return new_labels, rec, bank_sim, bank_clean

  _, median = bench_util.time_steps(lambda: run(h, bank_sim, bank_clean))
  return median


def bench(hidden, fused, batch, repeats):
  method, dp, labels, rng = one_device_method(
      dict(bits=BITS, hidden=hidden, fused=fused, warmup_epochs=1, batch_size=batch),
      image_dim=D_IMG, text_dim=D_TXT, bank=BANK, num_classes=C)
  idx = rng.permutation(BANK)[:batch].astype(np.int32) if batch <= BANK else \
      np.arange(batch, dtype=np.int32) % BANK
  data = dp.put_rows({"image": rng.random((batch, D_IMG), np.float32),
                      "text": (rng.random((batch, D_TXT)) < 0.02).astype(np.float32),
                      "labels": labels[idx], "index": idx})
  extras = dp.put_rows({})
  out = {}
  holder = {"state": dp.put_state(method.init_state())}
  for epoch, phase in enumerate(method.phases):  # ("warmup", "robust")
    def one_step(phase=phase, epoch=epoch):
      holder["state"], metrics = dp.step(holder["state"], data, extras,
                                         context={"epoch": epoch, "step_in_epoch": 0},
                                         phase=phase)
      return metrics["loss"]
    out[phase] = bench_util.time_steps_cpu(one_step, repeats=repeats)[1:]
  return out["warmup"], out["robust"], filter_only(batch, jax.random.key(0))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no_record", action="store_true")
  parser.add_argument("--settings", default=None,
                      help="comma-separated indices into SETTINGS (default: all), "
                           "e.g. --settings=0 for the paper widths at batch 48")
  args = parser.parse_args()
  chosen = SETTINGS if args.settings is None else \
      [SETTINGS[int(i)] for i in args.settings.split(",")]
  rows = []
  for name, hidden, fused, batch in chosen:
    (warm, warm_cpu), (robust, robust_cpu), filt = bench(hidden, fused, batch,
                                                         args.repeats)
    rows.append([name, batch, f"{warm * 1e3:.1f}", f"{warm_cpu * 1e3:.1f}",
                 f"{robust * 1e3:.1f}", f"{robust_cpu * 1e3:.1f}",
                 f"{batch / robust_cpu:.0f}", f"{filt * 1e3:.2f}",
                 f"{100 * filt / robust:.1f}%"])
    print(rows[-1], flush=True)
  table = bench_util.markdown_table(
      ["setting", "batch", "warm-up step ms (wall)", "warm-up CPU ms",
       "robust step ms (wall)", "robust CPU ms", "robust samples per CPU-s",
       "filter+reconstruction ms (wall)", "filter share of robust step"], rows)
  body = (f"Machine: {bench_util.machine()}; backend {jax.default_backend()}; "
          f"date {bench_util.today()}; {bench_util.threads()} thread(s) (taskset); load "
          f"average {bench_util.load_average():.1f}; bank N = {BANK}, C = {C}, K = {BITS}; "
          f"peak RSS {bench_util.peak_rss_gb():.1f} GB. Command: `taskset -c 0 python "
          "benchmarks/dcgmh_step.py`.\n"
          f"Median of {args.repeats} steps after the first (compile) step; wall time and "
          "this process's CPU seconds (at one thread the steadier measure on a shared "
          "machine). The robust step runs the network twice (clean + augmented "
          "views).\n\n" + table)
  print(body)
  if args.settings is not None:  # a subset would replace the full table
    print("(--settings given: RESULTS.md not updated)")
  elif not args.no_record:
    bench_util.record(f"DCGMH train step (benchmarks/dcgmh_step.py, "
                      f"{jax.default_backend()})", body)


if __name__ == "__main__":
  main()
