"""How well is τ (the noisy fraction) estimated when it is unknown? (issue 11.5)

For each noise protocol (scbch, dcgmh, symmetric) and true τ ∈ {0.2, 0.4, 0.6,
0.8} and seed: train DCGMH's warm-up phase on synthetic data, compute every
training item's consistency score κ with the trained model, then compare
estimators of τ on the SAME scores:

  batch_ema  the training-time estimator so far: a 2-component Gaussian
             mixture per global batch (B = 48), EMA over one epoch's steps
             (momentum 0.99, started at the first estimate)
  epoch_gmm  the same mixture fitted once on all N per-item scores
             (noise_filter.estimate_noise_ratio on N scores)
  margin     the fraction of items whose label margin r_i = κ_i − κ*_i is
             below −0.1 (noise_filter.margin_noise_ratio on all N items)

τ for symmetric noise is the fraction of items with any flipped bit; the
per-bit probability is chosen as p = 1 − (1 − τ)^(1/C).

  python benchmarks/noise_ratio.py [--seeds=2] [--epochs=5] [--save_scores=DIR]
  python benchmarks/noise_ratio.py --from_scores=DIR   # re-score saved cells
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench_util  # noqa: E402
from common import experiment, run_data  # noqa: E402
from common.data import pipeline  # noqa: E402
from common.train_loop import restore_for_eval  # noqa: E402
from configs import dcgmh as dcgmh_configs  # noqa: E402
from dcgmh_jax import noise_filter as nf  # noqa: E402
from common import methods  # noqa: E402
from dcgmh_jax.train import SPEC, for_inference  # noqa: E402

TAUS = (0.2, 0.4, 0.6, 0.8)
PROTOCOLS = ("scbch", "dcgmh", "symmetric")
BATCH = 48


def _config(protocol, tau, seed, epochs, classes):
  c = dcgmh_configs.get_config("synthetic:demo")
  rate = 1 - (1 - tau) ** (1 / classes) if protocol == "symmetric" else tau
  c.update(dict(noise_protocol=protocol, noise_rate=float(rate), noise_seed=seed,
                seed=seed, epochs=epochs, warmup_epochs=epochs, hidden=256, fused=256,
                batch_size=BATCH, eval_every=0, progress=False))
  return c


def item_scores(config, workdir):
  """κ of every training item (noisy labels) with the run's final model."""
  experiment.run(config, workdir, log=lambda _: None)
  data = run_data.load_run_data(config)
  plan = methods.resolve_plan(config, SPEC)
  record = experiment._record(config, data, SPEC.build(config, data, plan))
  method = for_inference(config, record["resolved"], plan)
  state, _ = restore_for_eval(method, config, workdir)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  h = pipeline.map_batches(lambda b: method._encode(variables, b["image"], b["text"]),
                           {"image": data.splits.train.image,
                            "text": data.splits.train.text}, 1024)
  sim = nf.center_similarity(jnp.asarray(h), state.params["centers"])
  scores = np.asarray(nf.consistency_scores(sim, jnp.asarray(data.train_labels)))
  return scores, np.asarray(data.corrupted), np.asarray(sim), data.train_labels


def batch_ema(scores, seed, momentum=0.99):
  order = pipeline.epoch_permutation(len(scores), seed, 0)
  estimate = jax.jit(nf.estimate_noise_ratio)
  value = None
  for lo in range(0, len(order) - BATCH + 1, BATCH):
    e = float(estimate(jnp.asarray(scores[order[lo:lo + BATCH]])))
    value = e if value is None else momentum * value + (1 - momentum) * e
  return value


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--save_scores", default=None,
                      help="folder to keep each cell's scores and truth (.npz)")
  parser.add_argument("--from_scores", default=None,
                      help="re-score the cells saved by --save_scores (no training)")
  args = parser.parse_args()
  classes = 12  # synthetic:demo
  rows = []
  estimates = {}
  for protocol in PROTOCOLS:
    for tau in TAUS:
      for seed in range(args.seeds):
        saved = os.path.join(args.from_scores or args.save_scores or "",
                             f"{protocol}_{tau}_{seed}.npz")
        if args.from_scores:
          with np.load(saved) as f:
            scores, corrupted, sim, labels = (f[k] for k in ("scores", "corrupted",
                                                               "sim", "labels"))
        else:
          with tempfile.TemporaryDirectory() as workdir:
            scores, corrupted, sim, labels = item_scores(
                _config(protocol, tau, seed, args.epochs, classes), workdir)
          if args.save_scores:
            os.makedirs(args.save_scores, exist_ok=True)
            np.savez(saved, scores=scores, corrupted=corrupted, sim=sim, labels=labels)
        truth = float(corrupted.mean())
        got = {"batch_ema": batch_ema(scores, seed),
               "epoch_gmm": float(nf.estimate_noise_ratio(jnp.asarray(scores))),
               "margin": float(nf.margin_noise_ratio(jnp.asarray(sim),
                                                     jnp.asarray(labels)))}
        for name, value in got.items():
          estimates.setdefault((protocol, tau, name), []).append(value - truth)
        print(f"{protocol} tau={tau} seed={seed}: true {truth:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
  for (protocol, tau, name), errors in sorted(estimates.items()):
    errors = np.asarray(errors)
    rows.append([protocol, f"{tau:.1f}", name, f"{errors.mean():+.3f}",
                 f"{errors.std(ddof=1) if len(errors) > 1 else 0.0:.3f}",
                 f"{np.abs(errors).max():.3f}"])
  table = bench_util.markdown_table(
      ["protocol", "true τ", "estimator", "bias (mean error)", "spread (sd)",
       "max |error|"], rows)
  print(table)
  notes = (f"{bench_util.machine()}, {bench_util.today()}. DCGMH warm-up "
           f"({args.epochs} epochs, widths 256, batch {BATCH}) on synthetic:demo (4000 "
           f"training items, 12 classes); {args.seeds} seeds per cell; error = "
           "estimate − true fraction of corrupted items.")
  bench_util.record("Noise-ratio estimator (benchmarks/noise_ratio.py)",
                    notes + "\n\n" + table)


if __name__ == "__main__":
  main()
