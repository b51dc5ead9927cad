"""Keys every method's config shares: data, label noise and the training loop."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


# One line of documentation per shared key: `nhj-<method> --help` prints it
# beside the key's value, and docs/config.md's key table is generated from it
# (tests/test_readme.py keeps both in sync with get_config()).
DOCS = {
    "method": "which method (common.methods.REGISTRY): scbch, dcgmh or nrch",
    "variant": "a named loss variant / ablation: SCBCH full, no_cscc, no_quant, "
               "no_shift, no_bsch, ce_only (scbch_jax.objectives); DCGMH full, "
               "no_filter, no_reconstruction, no_unsup, no_separation, "
               "center_only (dcgmh_jax.objectives); NRCH full, no_dns, no_quant, "
               "no_shift, label_negatives (nrch_jax.objectives)",
    "dataset": "synthetic:<size> (tiny, demo, mirflickr25k, nuswide21, mscoco, "
               "iaprtc12), a benchmark name read from data_dir, tfds:<name> read "
               "from tfds_dir (built by nhj-prepare-data), folder:<path> (your "
               "own data, docs/data.md), or real:<name> (yeast, digits, segment: "
               "real sets shipped in package wheels, docs/real_data.md)",
    "data_dir": "the benchmark's files (benchmark datasets only)",
    "layout": "benchmark file layout: ucch, scbch_h5 or dcgmh_mat (None: detected)",
    "tfds_dir": "TFDS data dir for tfds:<name>",
    "input": "memory: features loaded into host memory; storage (tfds: data "
             "only): each process reads its rows from the array_record files, a "
             "batch at a time (docs/scaling.md)",
    "prefetch": "training batches read ahead in a background thread (any input; "
                "with storage the reads overlap the steps); 0: read in the "
                "training loop's thread; may change on resume",
    "query_size": "query split size (None: the dataset's split; all.npz of "
                  "folder: data needs it)",
    "train_size": "training split size (None: the dataset's split; all.npz of "
                  "folder: data needs it)",
    "data_seed": "synthetic generator seed",
    "noise_protocol": "label noise injected into the TRAINING labels: scbch "
                      "(one pair flipped), dcgmh (four-way; on data where every "
                      "item has the same label count, e.g. single-label, its "
                      "new-count chunks keep the count, docs/data.md), symmetric "
                      "(per-bit), release (the SCBCH release's noise file), none",
    "noise_rate": "fraction of corrupted training items (bit-flip probability "
                  "for symmetric)",
    "noise_seed": "seed of the noise draw",
    "epochs": "training epochs (benchmark presets: SCBCH 50, DCGMH 150, NRCH 100)",
    "batch_size": "GLOBAL batch over all devices and processes; an epoch drops "
                  "the last partial batch (trained with release_compat's "
                  "partial_last_batch)",
    "seed": "init, data order and augmentation seed",
    "eval_every": "epochs between evaluations (0: only at the end)",
    "checkpoint_every": "global steps between mid-epoch checkpoints (0: epoch "
                        "ends only)",
    "keep": "checkpoints kept (plus the best when selecting)",
    "log_every": "steps between metric fetches to the host",
    "parallel": "shard_map (jit + jax.shard_map over a 1-D mesh) or pmap",
    "selection": "last; val (best on a validation split carved from the "
                 "training set, noisy labels); test_queries (best on the TEST "
                 "queries, the releases' protocol; labelled in every output)",
    "val_size": "validation queries with selection=val",
    "progress": "progress bar (tqdm, stderr)",
    "eval_batch_size": "rows per encoding batch",
    "compute_dtype": "float32 or bfloat16 for the networks' matmuls and "
                     "activations; losses, filter, CSCC and codes stay float32",
    "param_dtype": "dtype of parameters and optimiser state",
    "release_compat": "reproduce the releases' quirks on purpose: False; True "
                      "(every quirk of the method's release); or a comma-"
                      "separated list of quirk names (docs/release_compat.md); "
                      "active quirks are named in every output",
}


def split_arg(arg: str | None, presets) -> tuple[str, str]:
  """(preset, dataset) from a config argument.

  "" / None / "synthetic" -> the synthetic preset on `synthetic:demo`;
  "synthetic:<size>" -> the synthetic preset on that generator size;
  a benchmark name -> its preset on that benchmark (set config.data_dir).
  """
  arg = (arg or "synthetic").strip()
  if arg == "synthetic":
    return "synthetic", "synthetic:demo"
  if arg.startswith("synthetic:"):
    return "synthetic", arg
  if arg not in presets:
    raise ValueError(f"unknown config argument {arg!r}: expected synthetic, "
                     f"synthetic:<size> or one of {sorted(set(presets) - {'synthetic'})}")
  return arg, arg


def base_config(method: str, dataset: str, *, noise_protocol: str,
                noise_rate: float) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = method
  # A named loss variant / ablation of the method (<method>_jax.variants).
  c.variant = "full"
  # --- data ------------------------------------------------------------------
  # synthetic:<size> (tiny, demo, mirflickr25k, ...), a benchmark name read from
  # data_dir, tfds:<config> read from tfds_dir, folder:<path> (your own data), or
  # real:<name> (yeast, digits, segment from package wheels; docs/real_data.md).
  c.dataset = dataset
  c.data_dir = config_dict.placeholder(str)
  c.layout = config_dict.placeholder(str)      # ucch | scbch_h5 | dcgmh_mat
  c.tfds_dir = config_dict.placeholder(str)
  # memory: features loaded into host memory; storage: tfds: features read by
  # row from the array_record files (a process reads only the rows it uses).
  c.input = "memory"
  # Training batches read ahead in a background thread (any input; storage
  # reads then overlap the steps); 0: read in the training loop's thread.
  c.prefetch = 2
  c.query_size = config_dict.placeholder(int)  # default: the dataset's split
  c.train_size = config_dict.placeholder(int)
  c.data_seed = 0                              # synthetic generator
  # --- label noise injected into the TRAINING labels ------------------------
  # scbch (one pair flipped) | dcgmh (four-way) | symmetric (per-bit) |
  # release (the SCBCH release's noise file) | none
  c.noise_protocol = noise_protocol
  c.noise_rate = noise_rate
  c.noise_seed = 0
  # --- loop --------------------------------------------------------------------
  c.epochs = 50
  c.batch_size = 128            # GLOBAL: all devices of all processes
  c.seed = 0                    # init, data order, augmentation
  c.eval_every = 5              # epochs; 0: only at the end
  c.checkpoint_every = 0        # global steps between mid-epoch checkpoints
  c.keep = 3
  c.log_every = 20
  c.parallel = "shard_map"      # shard_map | pmap
  c.selection = "last"          # last | val | test_queries
  c.val_size = 500              # with selection=val
  c.progress = True
  c.eval_batch_size = 1024
  # --- numerics ------------------------------------------------------------------
  c.compute_dtype = "float32"   # float32 | bfloat16 (matmuls/activations)
  c.param_dtype = "float32"     # parameters and optimiser state
  # --- reproducing the releases on purpose (labelled in every output) ----------
  # False | True (every quirk of the method's release) | "name1,name2" (only
  # those; common.methods.all_quirks(spec) lists them). Typed `object` so that
  # --config.release_compat takes a bool or a string.
  c.release_compat = config_dict.FieldReference(False, field_type=object)
  return c
