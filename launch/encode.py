r"""Encodes items with a trained run and writes their codes and a Hamming index.

  nhj-encode --workdir=runs/scbch_mine --data=db.npz --out=index/
  nhj-encode --workdir=runs/dcgmh_mine --data=folder:/data/mine \
      --split=database --out=index/

--data is an .npz with `image` and/or `text` (optional `ids`, `labels`), or
folder:<path> of the generic layout (docs/data.md) with --split. Writes
<out>/codes.npz (±1 int8 codes per modality, ids, labels if given) and one
index folder per modality, <out>/<modality>/ (common.index.save_index), that
nhj-search reads.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A workdir of nhj-scbch / nhj-dcgmh (its config.json and "
    "checkpoints).")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint (global step) to encode with; default: the best when "
    "the run selects, else the latest.", lower_bound=0)
_DATA = flags.DEFINE_string(
    "data", None, "Items to encode: an .npz with image and/or text (optional ids, "
    "labels), or folder:<path> of the generic layout (docs/data.md).")
_SPLIT = flags.DEFINE_enum(
    "split", "database", ["query", "train", "database"],
    "With --data=folder:<path>: the split to encode.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder: codes.npz and one index folder per modality.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Rows per encoding batch, sharded over the local devices "
    "(default: the run's config.eval_batch_size).", lower_bound=1)
_PROGRESS = flags.DEFINE_bool("progress", True, "Progress bar on stderr.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace the codes and indexes of an --out folder that is "
    "not empty (refused otherwise).")


def check_out_folder(out: str, overwrite: bool) -> None:
  """--out must be a new or empty folder, or --overwrite given."""
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f"--out={out}: exists and is not a folder")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ValueError(f"--out={out}: exists and is not empty; pass --overwrite to "
                     "replace its codes and indexes, or choose another folder")


def encode_to_dir(workdir: str, data: str, out: str, *, step: int | None = None,
                  split: str = "database", batch_size: int | None = None,
                  progress: bool = False, overwrite: bool = False) -> dict:
  """Encodes `data` with the run in `workdir`; writes codes.npz and the indexes.

  An `out` folder that is not empty is refused unless `overwrite`.

  Returns a summary dict (method, bits, step, count, modalities, paths).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common import index as index_lib  # pylint: disable=g-import-not-at-top
  from common import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from common.encoder import load_encoder, load_inputs, read_record  # pylint: disable=g-import-not-at-top
  check_out_folder(out, overwrite)
  record = read_record(workdir)
  sizes = {k: record.get(k) for k in ("query_size", "train_size")}
  items = load_inputs(data, split=split, flag="data", sizes=sizes)
  encoder = load_encoder(workdir, step)
  features = {k: items[k] for k in ("image", "text") if k in items}
  codes = encoder.encode(**features, batch_size=batch_size, progress=progress)
  os.makedirs(out, exist_ok=True)
  arrays = dict(codes, ids=items["ids"])
  if "labels" in items:
    arrays["labels"] = np.asarray(items["labels"])
  codes_path = os.path.join(out, "codes.npz")
  workdir_lib.atomic_savez(codes_path, **arrays)
  meta = {"method": encoder.method_name, "bits": encoder.bits,
          "workdir": encoder.workdir, "step": encoder.step,
          "data": data if data.startswith("folder:") else os.path.abspath(data),
          **({"split": split} if data.startswith("folder:") else {}),
          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  paths = {"codes": codes_path}
  for modality, c in codes.items():
    directory = os.path.join(out, modality)
    index_lib.save_index(directory, index_lib.pack_codes(c, name=modality),
                         items["ids"], encoder.bits, dict(meta, modality=modality))
    paths[modality] = directory
  return {"method": encoder.method_name, "bits": encoder.bits, "step": encoder.step,
          "count": len(items["ids"]), "modalities": list(codes), "paths": paths}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name, flag in (("workdir", _WORKDIR), ("data", _DATA), ("out", _OUT)):
    if not flag.value:
      raise ValueError(f"--{name} is required")
  if flags.FLAGS["split"].present and not _DATA.value.startswith("folder:"):
    raise ValueError("--split applies to --data=folder:<path> only")
  cli.quiet_library_logs()
  summary = encode_to_dir(_WORKDIR.value, _DATA.value, _OUT.value, step=_STEP.value,
                          split=_SPLIT.value, batch_size=_BATCH_SIZE.value,
                          progress=_PROGRESS.value, overwrite=_OVERWRITE.value)
  print(f"encoded {summary['count']} items with {summary['method']} "
        f"({summary['bits']} bits, step {summary['step']}): "
        f"{', '.join(summary['modalities'])} -> {_OUT.value} (codes.npz, "
        + ", ".join(f"{m}/" for m in summary["modalities"]) + ")")


def cli_main():
  """Console-script entry point (nhj-encode)."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
