r"""Train and evaluate SCBCH (cross-modal hashing under noisy labels).

With no flags: trains on the embedded synthetic data (small widths) in a few
minutes on a CPU and prints I->T / T->I mAP per evaluation and a final table.

  python -m launch.scbch                                   # synthetic demo
  python -m launch.scbch --dataset=mirflickr25k --data_dir=/data/mir \
      --bits=64 --noise_rate=0.5 --workdir=runs/mir64_n50   # paper preset

Hyperparameter flags left unset take their value from --preset (default: the
preset of --dataset). Re-running a command with the same --workdir resumes.
"""

from __future__ import annotations

from absl import flags

from common import cli
from scbch_jax import presets
from scbch_jax.train import ScbchConfig, ScbchMethod

FLAGS = flags.FLAGS

cli.define_data_flags(default_noise_protocol="scbch", default_noise_rate=0.5)
cli.define_loop_flags(epochs=None, batch_size=None, eval_every=5)
flags.DEFINE_string("preset", None, "Hyperparameter preset (default: --dataset's): "
                    + ", ".join(sorted(presets.PRESETS)))
flags.DEFINE_integer("bits", None, "Code length K (paper: 16, 32, 64, 128).")
flags.DEFINE_float("alpha", None, "Weight of L_bsch.")
flags.DEFINE_float("beta", None, "Weight of L_q.")
flags.DEFINE_float("margin", None, "Hard-negative margin m of L_bsch.")
flags.DEFINE_float("shift", None, "Shift s of L_bsch (damps easy negatives by e^-s).")
flags.DEFINE_float("tau", None, "Temperature of L_bsch.")
flags.DEFINE_integer("k", None, "CSCC neighbours.")
flags.DEFINE_float("gamma", None, "CSCC weight floor: w = gamma + (1 - gamma) r.")
flags.DEFINE_integer("cscc_start_epoch", None, "Epoch index from which CSCC weights apply.")
flags.DEFINE_integer("cscc_block_size", 1024, "Rows per block of the CSCC top-k pass "
                     "(memory ~ block x N floats).")
flags.DEFINE_float("lr", None, "Adam learning rate.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay added to the gradient.")
flags.DEFINE_list("image_hidden", None, "Hidden widths of the image tower (paper 8192,8192).")
flags.DEFINE_list("text_hidden", None, "Hidden widths of the text tower (paper 8192).")
flags.DEFINE_integer("seed", None, "Seed of init and data order.")

HYPER = ("bits", "alpha", "beta", "margin", "shift", "tau", "k", "gamma",
         "cscc_start_epoch", "lr", "weight_decay", "seed")
RUN_FLAGS = ("dataset", "data_dir", "layout", "tfds_dir", "query_size", "train_size",
             "data_seed", "noise_protocol", "noise_rate", "noise_seed", "preset",
             "batch_size", "selection", "val_size", "image_hidden", "text_hidden",
             "cscc_block_size", *HYPER)


def build_config() -> tuple[ScbchConfig, presets.ScbchPreset]:
  """Preset values overridden by the given flags; validated before any compute."""
  preset = cli.get_preset(presets.get_preset)
  values = cli.resolve(preset, HYPER)
  values["cscc_block_size"] = FLAGS.cscc_block_size
  for flag_name, widths in (("image_hidden", FLAGS.image_hidden),
                        ("text_hidden", FLAGS.text_hidden)):
    try:
      values[flag_name] = tuple(int(w) for w in widths) if widths else tuple(
          getattr(preset, flag_name))
    except ValueError:
      raise flags.ValidationError(f"--{flag_name}={','.join(widths)}: widths must be "
                                  "integers") from None
    if not values[flag_name] or min(values[flag_name]) < 1:
      raise flags.ValidationError(f"--{flag_name}: widths must be positive")
  for positive in ("bits", "k", "lr", "cscc_block_size"):
    if values[positive] <= 0:
      raise flags.ValidationError(f"--{positive}={values[positive]}: must be > 0")
  if not 0.0 <= values["gamma"] <= 1.0:
    raise flags.ValidationError(f"--gamma={values['gamma']}: must be in [0, 1]")
  return ScbchConfig(num_classes=0, **values), preset


def main(argv):
  setup = cli.prepare_run("scbch", argv, build_config)
  config, data, splits = setup.config, setup.data, setup.data.splits
  method = ScbchMethod(
      config, image_dim=splits.image_dim, text_dim=splits.text_dim,
      train_labels=data.train_labels, train_image=splits.train.image,
      train_text=splits.train.text, eval_sets=setup.eval_sets, corrupted=data.corrupted,
      empty_queries="skip")
  cli.say(f"SCBCH on {splits.name}: {len(splits.train)} train / {len(splits.query)} "
        f"query / {len(splits.database)} database, C={splits.num_classes}, "
        f"{config.bits} bits; noise {data.noise_summary}")
  arrays = {"image": splits.train.image, "text": splits.train.text,
            "labels": data.train_labels}
  state, results = cli.train_or_restore(method, arrays, setup.loop, RUN_FLAGS + ("epochs",))
  cli.finish(results, codes=method.export_codes(state), workdir=setup.workdir,
             method="scbch", dataset_name=splits.name,
             extra={"bits": config.bits, "noise": data.noise_summary,
                    "empty_queries": "skip"},
             diagnostics={"CSCC weight AUC vs corrupted": "weight_auc_corrupted",
                          "mean weight, corrupted": "weight_mean_corrupted",
                          "mean weight, clean": "weight_mean_clean"})


def run():
  cli.run_main(main)


if __name__ == "__main__":
  run()
