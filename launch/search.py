r"""Searches a Hamming index written by nhj-encode; writes the hits as JSON or CSV.

  nhj-search --workdir=runs/scbch_mine --index=index/ --queries=q.npz \
      --k=10 --out=hits.json                  # image queries -> text index (i2t)
  nhj-search --index=index/ --queries=codes.npz --direction=fused --out=hits.csv

--queries is an .npz with `image` and/or `text` features (encoded with the
run in --workdir, by default the run that built the index) or with `codes`
(±1, used as they are; then --workdir is not needed); optional `ids`.
Directions: i2t (image queries, text index), t2i, i2i, t2t for a cross-modal
run; fused for a multi-modal one. Ties are broken by index position, exactly
as the evaluator ranks (np.argsort(dist, kind="stable")).
"""

from __future__ import annotations

import csv
import os

from absl import app
from absl import flags

from launch import cli

# direction -> (query modality, index modality)
DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image"),
              "i2i": ("image", "image"), "t2t": ("text", "text"),
              "fused": ("fused", "fused")}

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The run that encodes the query features (default: the one "
    "recorded in the index); not needed with query codes.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint to encode the queries with (default: the index's, "
    "when --workdir is the run that built it; else best/latest).", lower_bound=0)
_INDEX = flags.DEFINE_string(
    "index", None, "An nhj-encode output folder (its <modality>/ indexes), or one "
    "index folder (with meta.json).")
_QUERIES = flags.DEFINE_string(
    "queries", None, "An .npz with image and/or text features, or codes (±1); "
    "optional ids. Or folder:<path> of the generic layout (with --split).")
_SPLIT = flags.DEFINE_enum(
    "split", "query", ["query", "train", "database"],
    "With --queries=folder:<path>: the split whose items are the queries.")
_DIRECTION = flags.DEFINE_enum(
    "direction", None, list(DIRECTIONS),
    "Query modality -> index modality. Default: fused for a multi-modal index, "
    "else i2t when the queries have images, t2i when they have text only.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.", lower_bound=1)
_RADIUS = flags.DEFINE_integer(
    "radius", None, "Keep only hits within this Hamming distance.", lower_bound=0)
_OUT = flags.DEFINE_string(
    "out", None, "Output file: .json ({direction, k, radius, queries: [{query, ids, "
    "distances}]}) or .csv (query,rank,id,distance).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Rows per encoding batch (default: the run's "
    "config.eval_batch_size).", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an existing --out file (refused otherwise).")


def check_out_file(out: str, overwrite: bool) -> None:
  """--out must end in .json/.csv, not be a folder, and be new unless overwrite."""
  if not out.endswith((".json", ".csv")):
    raise ValueError(f"--out={out}: must end in .json or .csv")
  if os.path.isdir(out):
    raise ValueError(f"--out={out}: is a folder; give a file name ending in "
                     ".json or .csv")
  if os.path.lexists(out) and not overwrite:
    raise ValueError(f"--out={out}: exists; pass --overwrite to replace it, or "
                     "choose another name")


def _index_meta(folder: str) -> dict:
  """The user meta nhj-encode stored in an index folder's meta.json."""
  from common import run_config  # pylint: disable=g-import-not-at-top
  return run_config.read_json_object(os.path.join(folder, "meta.json")).get("meta") or {}


def _load_index(index_lib, folder: str):
  """index_lib.load_index, a damaged index folder reported as one line."""
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    return index_lib.load_index(folder)
  except (EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
    if isinstance(e, FileNotFoundError) or str(e).startswith(("--", "file ")):
      raise
    raise ValueError(f"--index: {folder}: a damaged index ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}); rebuild it "
                     "with nhj-encode") from e


def _index_folders(path: str) -> dict[str, str]:
  """modality -> index folder, for an nhj-encode folder or one index folder."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--index: no folder at {path!r}")
  if os.path.isfile(os.path.join(path, "meta.json")):
    modality = _index_meta(path).get("modality")
    if not modality:
      raise KeyError(f"--index={path}: meta.json names no modality (not written by "
                     "nhj-encode); pass the folder nhj-encode wrote")
    return {modality: path}
  found = {m: os.path.join(path, m) for m in ("image", "text", "fused")
           if os.path.isfile(os.path.join(path, m, "meta.json"))}
  if not found:
    raise FileNotFoundError(f"--index={path}: no index here (expected meta.json, or "
                            "the image/, text/ or fused/ folders nhj-encode writes)")
  return found


def _direction(given: str | None, folders: dict[str, str], queries: dict) -> str:
  if given is None:
    if "fused" in folders:
      given = "fused"
    elif "codes" in queries and not ({"image", "text"} & set(queries)):
      raise ValueError("--direction is required with query codes and a cross-modal "
                       f"index (one of {', '.join(d for d in DIRECTIONS if d != 'fused')})")
    else:
      given = "i2t" if "image" in queries else "t2i"
  query_modality, index_modality = DIRECTIONS[given]
  if index_modality not in folders:
    raise ValueError(f"--direction={given}: searches a {index_modality!r} index, but "
                     f"--index has {sorted(folders)}")
  if "codes" not in queries and query_modality == "fused":
    missing = [k for k in ("image", "text") if k not in queries]
    if missing:
      raise KeyError(f"--direction={given} needs 'image' and 'text' in --queries; "
                     f"missing {missing}")
  elif "codes" not in queries and query_modality not in queries:
    raise KeyError(f"--direction={given} needs {query_modality!r} features (or "
                   f"'codes') in --queries; found {sorted(queries)}")
  return given


def search(index_path: str, queries_spec: str, *, k: int = 10,
           radius: int | None = None, direction: str | None = None,
           workdir: str | None = None, step: int | None = None,
           split: str = "query", batch_size: int | None = None) -> dict:
  """The hits of the queries, as the JSON nhj-search writes (a dict)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from common import index as index_lib  # pylint: disable=g-import-not-at-top
  from common.encoder import load_encoder, load_inputs, read_record  # pylint: disable=g-import-not-at-top
  folders = _index_folders(index_path)
  sizes = None
  if queries_spec.startswith("folder:"):
    run = workdir or _index_meta(next(iter(folders.values()))).get("workdir")
    record = read_record(run) if run else {}
    sizes = {k_: record.get(k_) for k_ in ("query_size", "train_size")}
  queries = load_inputs(queries_spec, split=split, flag="queries", sizes=sizes,
                        allowed_codes=True)
  direction = _direction(direction, folders, queries)
  query_modality, index_modality = DIRECTIONS[direction]
  index = _load_index(index_lib, folders[index_modality])
  meta = index.meta
  if "codes" in queries:
    codes = np.asarray(queries["codes"])
    if codes.ndim != 2 or codes.shape[1] != index.bits:
      raise ValueError(f"--queries: 'codes' must be (Q, {index.bits}) for this "
                       f"{index.bits}-bit index; got shape {codes.shape}")
  else:
    run = workdir or meta.get("workdir")
    if not run:
      raise ValueError("--workdir is required to encode the query features (or give "
                       "'codes' in --queries)")
    same_run = meta.get("workdir") and os.path.abspath(run) == meta["workdir"]
    index_step = step is None and same_run and meta.get("step") is not None
    if index_step:
      step = meta.get("step")
    try:
      encoder = load_encoder(run, step)
    except FileNotFoundError:
      if not index_step:
        raise
      # (e.g. the index was built while the run trained; it keeps config.keep.)
      raise FileNotFoundError(
          f"--index was built with checkpoint {step} of {run}, which is no longer "
          "kept; re-run nhj-encode, or pass --step to encode the queries with a kept "
          "checkpoint (a model other than the index's)") from None
    if meta.get("method") not in (None, encoder.method_name) or \
        index.bits != encoder.bits:
      raise ValueError(f"--index was written by {meta.get('method')} with {index.bits} "
                       f"bits; --workdir={run} is {encoder.method_name} with "
                       f"{encoder.bits} bits")
    features = {m: queries[m] for m in ("image", "text")
                if m in queries and (m == query_modality or query_modality == "fused")}
    codes = encoder.encode(**features, batch_size=batch_size)[query_modality]
  if len(codes) == 0:
    raise ValueError("--queries holds no items")
  ids, dist = index.search(index_lib.pack_codes(codes, name="codes"), k=k,
                           radius=radius)
  return {"direction": direction, "k": k, "radius": radius,
          "index": os.path.abspath(folders[index_modality]), "count": len(index),
          "queries": [{"query": int(q), "ids": [int(i) for i in row_ids],
                       "distances": [int(d) for d in row_dist]}
                      for q, row_ids, row_dist in zip(queries["ids"], ids, dist)]}


def write_hits(hits: dict, out: str) -> None:
  """JSON or CSV (query,rank,id,distance; rank from 1) by the extension of `out`."""
  from common import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  if out.endswith(".json"):
    workdir_lib.atomic_write_json(out, {key: hits[key] for key in
                                        ("direction", "k", "radius", "queries")})
    return
  def write_csv(f):
    writer = csv.writer(f)
    writer.writerow(["query", "rank", "id", "distance"])
    for q in hits["queries"]:
      for rank, (i, d) in enumerate(zip(q["ids"], q["distances"]), start=1):
        writer.writerow([q["query"], rank, i, d])
  # A unique temporary file beside `out` (mkstemp: never a planted link),
  # fsynced and renamed over it, with the mode the umask gives.
  workdir_lib.atomic_write_text(out, _csv_text(write_csv))


def _csv_text(write) -> str:
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.StringIO(newline="")
  write(buffer)
  return buffer.getvalue()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name, flag in (("index", _INDEX), ("queries", _QUERIES), ("out", _OUT)):
    if not flag.value:
      raise ValueError(f"--{name} is required")
  check_out_file(_OUT.value, _OVERWRITE.value)
  if flags.FLAGS["split"].present and not _QUERIES.value.startswith("folder:"):
    raise ValueError("--split applies to --queries=folder:<path> only")
  cli.quiet_library_logs()
  hits = search(_INDEX.value, _QUERIES.value, k=_K.value, radius=_RADIUS.value,
                direction=_DIRECTION.value, workdir=_WORKDIR.value, step=_STEP.value,
                split=_SPLIT.value, batch_size=_BATCH_SIZE.value)
  write_hits(hits, _OUT.value)
  found = [len(q["ids"]) for q in hits["queries"]]
  print(f"{len(found)} queries, {hits['direction']}, k={hits['k']}"
        + (f", radius {hits['radius']}" if hits["radius"] is not None else "")
        + f" over {hits['count']} items: {sum(found)} hits "
        f"({min(found)}-{max(found)} per query) -> {_OUT.value}")


def cli_main():
  """Console-script entry point (nhj-search)."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
