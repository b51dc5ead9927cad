r"""Train and evaluate DCGMH (multi-modal hashing under noisy labels).

With no flags: trains on the embedded synthetic data (small widths) in a few
minutes on a CPU, logs the noise filter's precision/recall per epoch, and
prints the fused-code mAP per evaluation and a final table.

  python -m launch.dcgmh                                   # synthetic demo
  python -m launch.dcgmh --dataset=mirflickr25k --data_dir=/data/mir \
      --layout=dcgmh_mat --noise_rate=0.4 --workdir=runs/mir_dcgmh  # paper preset

Hyperparameter flags left unset take their value from --preset (default: the
preset of --dataset). Re-running a command with the same --workdir resumes.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from common import cli
from common.data import pipeline
from dcgmh_jax import presets
from dcgmh_jax.train import DcgmhConfig, DcgmhMethod

FLAGS = flags.FLAGS

cli.define_data_flags(default_noise_protocol="dcgmh", default_noise_rate=0.4)
cli.define_loop_flags(epochs=None, batch_size=None, eval_every=5)
flags.DEFINE_string("preset", None, "Hyperparameter preset (default: --dataset's): "
                    + ", ".join(sorted(presets.PRESETS)))
flags.DEFINE_integer("bits", None, "Code length K.")
flags.DEFINE_integer("hidden", None, "Width of the modality MLPs' first layer (paper 4096).")
flags.DEFINE_integer("fused", None, "Fused width (paper 128*bits).")
flags.DEFINE_float("alpha", None, "Weight of L_q.")
flags.DEFINE_float("beta", None, "Weight of L_unsup.")
flags.DEFINE_float("gamma", None, "Weight of L_sep.")
flags.DEFINE_float("eta", None, "Weight of L_pair.")
flags.DEFINE_float("margin", None, "Margin mu of L_unsup.")
flags.DEFINE_integer("k", None, "Bank neighbours for label reconstruction.")
flags.DEFINE_integer("warmup_epochs", None, "Epochs before the noise filter starts.")
flags.DEFINE_string("noise_ratio", None,
                    "tau, the fraction of each batch flagged noisy: a number in [0, 1), "
                    "or 'auto' to estimate it (two-component mixture on the "
                    "consistency scores; EMA over steps). Default: --noise_rate when "
                    "noise is injected, else the preset's.")
flags.DEFINE_bool("refresh_clean", False,
                  "Let the bank's clean flags recover when an item is judged clean "
                  "again (the release never resets them, so its clean set only shrinks).")
flags.DEFINE_float("lr", None, "SGD learning rate.")
flags.DEFINE_float("momentum", None, "SGD momentum.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay added to the gradient.")
flags.DEFINE_integer("lr_decay_every", None, "Epochs between x lr_decay_factor steps.")
flags.DEFINE_float("lr_decay_factor", None, "Step decay factor of the learning rate.")
flags.DEFINE_integer("seed", None, "Seed of init, augmentation and data order.")

HYPER = ("bits", "hidden", "alpha", "beta", "gamma", "eta", "margin", "k",
         "warmup_epochs", "lr", "momentum", "weight_decay", "lr_decay_every",
         "lr_decay_factor", "seed")
RUN_FLAGS = ("dataset", "data_dir", "layout", "tfds_dir", "query_size", "train_size",
             "data_seed", "noise_protocol", "noise_rate", "noise_seed", "preset",
             "batch_size", "selection", "val_size", "fused", "noise_ratio",
             "refresh_clean", *HYPER)


def parse_noise_ratio(preset: presets.DcgmhPreset) -> float | None:
  """--noise_ratio -> a number, or None for 'auto'."""
  value = FLAGS.noise_ratio
  if value is None:
    injected = FLAGS.noise_protocol not in ("none", "symmetric")
    return FLAGS.noise_rate if injected else preset.noise_ratio
  if value == "auto":
    return None
  try:
    ratio = float(value)
  except ValueError:
    raise flags.ValidationError(
        f"--noise_ratio={value!r}: expected a number in [0, 1) or 'auto'") from None
  if not 0.0 <= ratio < 1.0:
    raise flags.ValidationError(f"--noise_ratio={ratio}: must be in [0, 1)")
  return ratio


def build_config() -> tuple[DcgmhConfig, presets.DcgmhPreset]:
  preset = cli.get_preset(presets.get_preset)
  values = cli.resolve(preset, HYPER)
  values["fused"] = FLAGS.fused if FLAGS.fused is not None else preset.fused
  for positive in ("bits", "hidden", "k", "lr"):
    if values[positive] <= 0:
      raise flags.ValidationError(f"--{positive}={values[positive]}: must be > 0")
  if values["fused"] is not None and values["fused"] <= 0:
    raise flags.ValidationError(f"--fused={values['fused']}: must be > 0")
  if values["warmup_epochs"] < 0:
    raise flags.ValidationError(f"--warmup_epochs={values['warmup_epochs']}: must be >= 0")
  return DcgmhConfig(num_classes=0, noise_ratio=parse_noise_ratio(preset),
                     refresh_clean=FLAGS.refresh_clean, **values), preset


def main(argv):
  setup = cli.prepare_run("dcgmh", argv, build_config)
  config, data, splits = setup.config, setup.data, setup.data.splits
  steps = pipeline.steps_per_epoch(len(data.train_labels), setup.loop.batch_size)
  injected = data.noise_summary["protocol"] != "none"
  method = DcgmhMethod(
      config, image_dim=splits.image_dim, text_dim=splits.text_dim,
      train_labels=data.train_labels, steps_per_epoch=steps, eval_sets=setup.eval_sets,
      true_noise_ratio=(float(np.mean(data.corrupted)) if injected else None),
      empty_queries="zero")
  ratio = "auto" if config.noise_ratio is None else config.noise_ratio
  cli.say(f"DCGMH on {splits.name}: {len(splits.train)} train / {len(splits.query)} "
        f"query / {len(splits.database)} database, C={splits.num_classes}, "
        f"{config.bits} bits, filter tau={ratio}; noise {data.noise_summary}")
  arrays = {"image": splits.train.image, "text": splits.train.text,
            "labels": data.train_labels,
            # Ground truth for the filter diagnostics only; no loss reads these.
            "truth_labels": splits.train.labels,
            "truth_corrupted": np.asarray(data.corrupted, bool)}
  state, results = cli.train_or_restore(method, arrays, setup.loop, RUN_FLAGS + ("epochs",))
  cli.finish(results, codes=method.export_codes(state), workdir=setup.workdir,
             method="dcgmh", dataset_name=splits.name,
             extra={"bits": config.bits, "noise": data.noise_summary,
                    "filter_noise_ratio": ratio, "empty_queries": "zero"},
             diagnostics={"flag precision": "filter.precision",
                          "flag recall": "filter.recall",
                          "reconstructed / flagged": "filter.reconstructed_fraction",
                          "reconstruction accuracy": "filter.reconstruction_accuracy",
                          "unlabeled / flagged": "filter.unlabeled_fraction",
                          "tau estimate": "noise_ratio_estimate",
                          "bank clean fraction": "bank_clean_fraction"})


def run():
  cli.run_main(main)


if __name__ == "__main__":
  run()
