"""Data identity and no silent garbage.

- Paths in a config are made absolute; config.json records a fingerprint of
  each data file, and the fingerprint, not the path, decides whether a
  workdir's run resumes: the same data under another path (or a relative
  path from another directory) is the same run, a changed file is refused
  by name and config.json is left as it was.
- Labels: training data where no item has a label is refused, some unlabeled
  training / database items are warned about with counts, and a split where
  no query can have a relevant item is refused instead of scoring mAP nan.
- NaN/inf features given to encode / nhj-encode / nhj-search are refused
  naming the row.
"""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from common import evaluation
from common import experiment
from common import run_config
from common import run_data
from common.data import Split, Splits
from common.encoder import load_encoder, load_inputs
from configs import scbch as scbch_configs

CLASSES, D_IMG, D_TXT = 6, 24, 12
SIZES = {"query": 24, "train": 64, "database": 96}


def _write_folder(path, rng, *, unlabeled_train=0):
  """query/train/database.npz, labels driven features; the first
  `unlabeled_train` training items without a label."""
  proj_i, proj_t = rng.normal(size=(CLASSES, D_IMG)), rng.normal(size=(CLASSES, D_TXT))
  os.makedirs(path)
  for part, n in SIZES.items():
    labels = np.eye(CLASSES, dtype=np.uint8)[rng.integers(0, CLASSES, n)]
    if part == "train":
      labels[:unlabeled_train] = 0
    np.savez(os.path.join(path, f"{part}.npz"),
             image=(labels @ proj_i + 0.5 * rng.normal(size=(n, D_IMG))).astype(np.float32),
             text=(labels @ proj_t + 0.5 * rng.normal(size=(n, D_TXT))).astype(np.float32),
             labels=labels)


def _config(dataset, **overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(dataset=dataset, image_hidden=(16,), text_hidden=(16,), bits=8,
                     batch_size=16, epochs=1, progress=False, eval_every=0, k=3,
                     cscc_start_epoch=1, checkpoint_every=0, noise_protocol="none"))
  config.update(overrides)
  return config


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [(r["kind"], r["step"]) for r in map(json.loads, f)]


# ------------------------------------------------------------- fingerprints


def test_file_fingerprint_sees_content_not_place_or_time(tmp_path):
  """Any byte of a file up to 2 MiB, and the head, tail and sampled blocks of
  a bigger one, change the hash; a copy elsewhere with another mtime does not."""
  rng = np.random.default_rng(0)
  mib = 1 << 20
  for size in (0, 1, 4097, mib, 2 * mib, 5 * mib + 3):
    path = tmp_path / f"f{size}"
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    fp = run_data.file_fingerprint(str(path))
    assert fp["size"] == size == os.path.getsize(path)
    copy = tmp_path / "elsewhere" / f"f{size}"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(data)
    os.utime(copy, (1e9, 1e9))
    other = run_data.file_fingerprint(str(copy))
    assert other["sha256"] == fp["sha256"] and other["mtime"] != fp["mtime"]
    if size == 0:
      continue
    # Positions a change must be seen at: anywhere in a small file; the first
    # and last MiB of a big one.
    if size <= 2 * mib:
      positions = [0, size - 1, int(rng.integers(0, size))]
    else:
      positions = [0, mib - 1, size - mib, size - 1]
    for pos in positions:
      changed = bytearray(data)
      changed[pos] ^= 0xFF
      copy.write_bytes(bytes(changed))
      assert run_data.file_fingerprint(str(copy))["sha256"] != fp["sha256"], (size, pos)
    # Not the same as a plain hash of the file's name or size alone.
    assert fp["sha256"] != hashlib.sha256(str(size).encode()).hexdigest()


# ---------------------------------------------------- paths and identity


def test_paths_resolve_absolute_and_the_fingerprint_decides_identity(
    tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  _write_folder(str(tmp_path / "data"), rng)
  workdir = str(tmp_path / "run")
  monkeypatch.chdir(tmp_path)
  experiment.run(_config("folder:data"), workdir, log=lambda _: None)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["dataset"] == f"folder:{tmp_path / 'data'}"   # absolute
  assert saved["config_version"] == run_config.SCHEMA_VERSION
  files = saved["data_files"]["files"]
  assert sorted(files) == ["database.npz", "query.npz", "train.npz"]
  for name, fp in files.items():
    assert fp["size"] == os.path.getsize(tmp_path / "data" / name)

  # The same data by a relative path from another directory: the same run.
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  experiment.run(_config("folder:../data"), workdir, log=lambda _: None)
  # The same data copied elsewhere (new mtimes): the same run; config.json
  # now names where the data is.
  moved = tmp_path / "moved"
  shutil.copytree(tmp_path / "data", moved, copy_function=shutil.copyfile)
  experiment.run(_config(f"folder:{moved}"), workdir, log=lambda _: None)
  assert json.load(open(os.path.join(workdir, "config.json")))["dataset"] == \
      f"folder:{moved}"
  keys = _records(workdir)
  assert len(keys) == len(set(keys)) and keys.count(("final", 4)) == 1, keys

  # A changed training file (same size, one label moved): refused by name,
  # before anything is written.
  before = open(os.path.join(workdir, "config.json"), "rb").read()
  with np.load(moved / "train.npz") as z:
    arrays = dict(z)
  arrays["labels"][0] = np.roll(arrays["labels"][0], 1)
  np.savez(moved / "train.npz", **arrays)
  assert os.path.getsize(moved / "train.npz") == files["train.npz"]["size"]
  with pytest.raises(run_config.ConfigError,
                     match=f"data file {moved / 'train.npz'} changed: same size, "
                           "other content"):
    experiment.run(_config(f"folder:{moved}"), workdir, log=lambda _: None)
  # Another size: named with both sizes.
  arrays["labels"] = arrays["labels"][:-1]
  for k in ("image", "text"):
    arrays[k] = arrays[k][:-1]
  np.savez(moved / "train.npz", **arrays)
  with pytest.raises(run_config.ConfigError, match=r"train.npz changed: \d+ bytes "
                                                   r"saved vs \d+ now"):
    experiment.run(_config(f"folder:{moved}"), workdir, log=lambda _: None)
  assert open(os.path.join(workdir, "config.json"), "rb").read() == before


def test_resolve_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", "/home/someone")
  config = _config("folder:sub/../data")
  with config.unlocked():
    config.data_dir, config.tfds_dir = "~/mir", "gs://bucket/tfds"
  run_data.resolve_paths(config)
  assert config.dataset == "folder:" + str(tmp_path / "data")
  assert config.data_dir == "/home/someone/mir"
  assert config.tfds_dir == "gs://bucket/tfds"   # a URL stays as it is
  synthetic = _config("synthetic:tiny")
  run_data.resolve_paths(synthetic)
  assert synthetic.dataset == "synthetic:tiny" and synthetic.data_dir is None


def test_data_differences_name_each_file():
  fp = lambda size, sha: {"size": size, "mtime": 1.0, "sha256": sha}
  saved = {"data_files": {"root": "/old", "files": {
      "a.npz": fp(10, "x"), "b.npz": fp(10, "y"), "gone.npz": fp(1, "z")}}}
  now = {"data_files": {"root": "/new", "files": {
      "a.npz": dict(fp(10, "x"), mtime=99.0), "b.npz": fp(11, "y"),
      "new.npz": fp(1, "w")}}}
  assert run_config.data_differences(saved, now) == [
      "data file /new/b.npz changed: 10 bytes saved vs 11 now",
      "data file /new/gone.npz: read by the saved run, not there now",
      "data file /new/new.npz: not read by the saved run"]


# ------------------------------------------------------------------ labels


def _split(labels, rng, offset=0):
  n = len(labels)
  return Split(image=rng.normal(size=(n, 4)).astype(np.float32),
               text=rng.normal(size=(n, 3)).astype(np.float32),
               labels=np.asarray(labels, np.float32),
               index=np.arange(offset, offset + n, dtype=np.int64))


def _splits(query, train, database, rng):
  return Splits(name="t", query=_split(query, rng), train=_split(train, rng, 1000),
                database=_split(database, rng, 2000))


def _random_labels(rng, n, c, empty):
  labels = (rng.random((n, c)) < 0.3).astype(np.float32)
  labels[rng.permutation(n)[:empty]] = 0
  return labels


def test_relevant_queries_match_a_brute_force_count():
  rng = np.random.default_rng(2)
  for q, n, c in ((1, 1, 1), (7, 13, 5), (30, 50, 9)):
    query = _random_labels(rng, q, c, rng.integers(0, q + 1))
    database = _random_labels(rng, n, c, rng.integers(0, n + 1))
    brute = int(np.sum((query @ database.T > 0).any(axis=1)))
    assert run_data._relevant_queries(query, database) == brute


def test_unlabeled_items_are_refused_or_counted():
  rng = np.random.default_rng(3)
  c = 5
  query, database = _random_labels(rng, 10, c, 3), _random_labels(rng, 40, c, 7)
  train = _random_labels(rng, 20, c, 0)
  train[:, 0] = 1  # every training item labelled
  splits = _splits(query, train, database, rng)
  # No training item has a label: refused with the count.
  with pytest.raises(ValueError, match="all 20 training items have no label"):
    run_data.check_labels(splits, np.zeros_like(train))
  # Some: warned with counts (training, query and database), computed here.
  some = train.copy()
  some[[0, 4, 19]] = 0
  with pytest.warns(UserWarning) as caught:
    run_data.check_labels(splits, some)
  messages = [str(w.message) for w in caught]
  want = [f"{int(np.sum(~some.any(1)))} of 20 training items have no label",
          f"{int(np.sum(~query.any(1)))} of 10 query items have no label",
          f"{int(np.sum(~database.any(1)))} of 40 database items have no label"]
  for needle in want:
    assert any(needle in m for m in messages), (needle, messages)
  # No query can have a relevant item (the database holds other classes, or
  # no labels at all): refused before any run, where mAP would be nan.
  for db in (np.zeros_like(database),
             np.concatenate([np.zeros((40, 2)), np.ones((40, c - 2))], 1)):
    q = np.concatenate([np.ones((10, 2)), np.zeros((10, c - 2))], 1)
    with pytest.raises(ValueError, match="no test query has a relevant database item"):
      run_data.check_labels(_splits(q, train, db, rng), train)


def test_all_training_items_unlabeled_is_refused_before_a_run(tmp_path):
  rng = np.random.default_rng(4)
  _write_folder(str(tmp_path / "data"), rng, unlabeled_train=SIZES["train"])
  with pytest.raises(ValueError, match=f"all {SIZES['train']} training items have "
                                       "no label"):
    experiment.run(_config(f"folder:{tmp_path / 'data'}"), str(tmp_path / "run"),
                   log=lambda _: None)
  assert not (tmp_path / "run" / "config.json").exists()


def test_map_is_never_nan():
  """No query with a relevant item: refused under empty_queries="skip", 0.0
  under "zero"; with one relevant query the mean is over it alone."""
  rng = np.random.default_rng(5)
  codes = lambda n: np.where(rng.random((n, 8)) < 0.5, -1, 1).astype(np.int8)
  query_labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
  db_labels = np.zeros((9, 4), np.float32)
  q, d = codes(6), codes(9)
  with pytest.raises(ValueError, match="no query has a relevant database item "
                                       r"\(0 of 6 queries counted; 9 of 9 database"):
    evaluation.evaluate_direction(q, d, query_labels, db_labels, empty_queries="skip")
  zero = evaluation.evaluate_direction(q, d, query_labels, db_labels,
                                       empty_queries="zero")
  assert zero["map"] == 0.0


# ------------------------------------------------------------- non-finite


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("trained")
  _write_folder(str(root / "data"), np.random.default_rng(6))
  workdir = str(root / "run")
  experiment.run(_config(f"folder:{root / 'data'}"), workdir, log=lambda _: None)
  return root, workdir


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused_naming_the_row(trained, bad, tmp_path):
  _, workdir = trained
  encoder = load_encoder(workdir)
  rng = np.random.default_rng(7)
  for n, row in ((1, 0), (9, 8), (5000, 4321)):  # one row; last; past a check block
    image = rng.normal(size=(n, D_IMG)).astype(np.float32)
    image[row, row % D_IMG] = bad
    with pytest.raises(ValueError, match=f"^image: non-finite value \\(NaN/inf\\) "
                                         f"in row {row}$"):
      encoder.encode(image=image)
  text = rng.normal(size=(4, D_TXT))  # float64 is fine; a bad value is not
  assert encoder.encode(text=text)["text"].shape == (4, 8)
  text[2, 0] = bad
  with pytest.raises(ValueError, match="text: non-finite value .* in row 2"):
    encoder.encode(text=text)
  # From a file (nhj-encode --data, nhj-search --queries): the file, key, row and id.
  path = str(tmp_path / "q.npz")
  np.savez(path, image=rng.normal(size=(6, D_IMG)).astype(np.float32),
           ids=np.arange(100, 106))
  with np.load(path) as z:
    arrays = dict(z)
  arrays["image"][3, 1] = bad
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=f"--data={path}, key 'image': non-finite "
                                       r"value \(NaN/inf\) in row 3 \(id 103\)"):
    load_inputs(path)


def test_search_names_an_index_checkpoint_that_is_gone(trained, tmp_path):
  """nhj-search encodes queries with the checkpoint the index was built with;
  when the run no longer keeps it (it kept training), one line says so."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from common import index as index_lib  # pylint: disable=g-import-not-at-top
  _, workdir = trained
  run = shutil.copytree(workdir, tmp_path / "run")
  codes = np.where(np.random.default_rng(8).random((5, 8)) < 0.5, -1, 1)
  index_lib.save_index(str(tmp_path / "index" / "text"), index_lib.pack_codes(codes),
                       np.arange(5), 8, {"method": "scbch", "workdir": str(run),
                                         "step": 3, "modality": "text"})
  queries = str(tmp_path / "q.npz")
  np.savez(queries, image=np.zeros((2, D_IMG), np.float32))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, "-m", "launch.search", f"--index={tmp_path / 'index'}",
       f"--queries={queries}", f"--out={tmp_path / 'hits.json'}"],
      cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 2, done.stderr
  assert done.stderr.strip() == (
      f"error: --index was built with checkpoint 3 of {run}, which is no longer kept; "
      "re-run nhj-encode, or pass --step to encode the queries with a kept checkpoint "
      "(a model other than the index's)"), done.stderr
