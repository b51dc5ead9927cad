"""Your own data end to end: a generic-layout folder -> train -> nhj-encode -> nhj-search.

The hits of nhj-search must be exactly the evaluator's ranking: the top k of
np.argsort(dist, kind="stable") over the Hamming distances between the run's
own query and database codes (<method>_codes.npz), and nhj-encode's
database codes must equal the run's byte for byte.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common import experiment
from common.data import read_dataset
from common.encoder import load_encoder
from common.index import HammingIndex, load_index, pack_codes
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 7
SIZES = {"query": 40, "train": 160, "database": 240}


def _launch_all(*commands):
  """Runs launcher commands (module, *args) side by side; their CompletedProcess."""
  procs = [subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
           for command in commands]
  done = []
  for command, proc in zip(commands, procs):
    out, err = proc.communicate(timeout=300)
    done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
  return done


def _ok(proc):
  assert proc.returncode == 0, f"{proc.args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


def _one_line_error(proc, needle):
  assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def _write_folder(path, *, one_hot, disjoint, rng):
  """8 classes, d_img 32, d_txt 16; features driven by the labels."""
  classes = 8
  proj_i, proj_t = rng.normal(size=(classes, 32)), rng.normal(size=(classes, 16))

  def items(n):
    if one_hot:
      labels = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, n)]
    else:
      labels = (rng.random((n, classes)) < 0.3).astype(np.uint8)
      labels[np.arange(n), rng.integers(0, classes, n)] = 1
    return {"image": labels @ proj_i + 0.5 * rng.normal(size=(n, 32)),
            "text": labels @ proj_t + 0.5 * rng.normal(size=(n, 16)),
            "labels": labels}

  query, train = items(SIZES["query"]), items(SIZES["train"])
  if disjoint:
    database = items(SIZES["database"])
  else:  # the training items are in the database (the SCBCH split)
    extra = items(SIZES["database"] - SIZES["train"])
    database = {k: np.concatenate([train[k], extra[k]]) for k in train}
  if one_hot:  # the user's own noisy labels: 20% moved to another class
    noisy = train["labels"].copy()
    flip = rng.random(len(noisy)) < 0.2
    noisy[flip] = np.roll(noisy[flip], 1, axis=1)
    train["labels_noisy"] = noisy
  os.makedirs(path)
  for name, arrays in (("query", query), ("train", train), ("database", database)):
    np.savez(os.path.join(path, f"{name}.npz"), **arrays)


def _train(tmp_path, method, *, one_hot, disjoint, seed):
  data = str(tmp_path / "data")
  _write_folder(data, one_hot=one_hot, disjoint=disjoint,
                rng=np.random.default_rng(seed))
  if method == "scbch":
    config = scbch_configs.get_config("synthetic:tiny")
    config.image_hidden, config.text_hidden = (32,), (32,)
  else:
    config = dcgmh_configs.get_config("synthetic:tiny")
    config.hidden, config.fused, config.warmup_epochs = 32, 32, 0
  config.dataset = f"folder:{data}"
  config.bits, config.batch_size, config.epochs, config.progress = 16, 32, 1, False
  if one_hot:  # labels_noisy in the folder: no injected noise
    config.noise_protocol = "none"
  else:
    config.noise_protocol, config.noise_rate = "dcgmh", 0.4
  workdir = str(tmp_path / "run")
  experiment.run(config, workdir, log=lambda _: None)
  with np.load(os.path.join(workdir, f"{method}_codes.npz")) as z:
    run_codes = dict(z)
  return data, workdir, run_codes


def _expected(query_codes, db_codes, db_ids, k):
  """The evaluator's ranking: stable argsort of the Hamming distances."""
  bits = query_codes.shape[1]
  dist = (bits - query_codes.astype(np.int32) @ db_codes.astype(np.int32).T) // 2
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return db_ids[order], np.take_along_axis(dist, order, axis=1)


def _assert_hits(hits, query_ids, want_ids, want_dist):
  assert [q["query"] for q in hits["queries"]] == [int(i) for i in query_ids]
  np.testing.assert_array_equal([q["ids"] for q in hits["queries"]], want_ids)
  np.testing.assert_array_equal([q["distances"] for q in hits["queries"]], want_dist)


def test_scbch_own_folder_encode_and_search_match_the_evaluator(tmp_path):
  # One-hot labels, the user's own noisy labels, a database disjoint from train.
  data, workdir, run_codes = _train(tmp_path, "scbch", one_hot=True, disjoint=True,
                                    seed=0)
  splits = read_dataset(data).splits
  out = tmp_path / "index"
  [encoded] = _launch_all(("launch.encode", f"--workdir={workdir}",
                           f"--data=folder:{data}", f"--out={out}", "--batch_size=50",
                           "--progress=false"))
  line = _ok(encoded)
  assert line.count("\n") == 1 and "encoded 240 items with scbch" in line, line
  with np.load(out / "codes.npz") as z:
    assert z["image"].dtype == np.int8 and z["image"].tobytes() == \
        run_codes["image_db"].tobytes()
    assert z["text"].tobytes() == run_codes["text_db"].tobytes()
    np.testing.assert_array_equal(z["ids"], splits.database.index)
  text_index = load_index(str(out / "text"))
  assert text_index.packed.shape == (240, 2) and text_index.bits == 16
  np.testing.assert_array_equal(text_index.packed, pack_codes(run_codes["text_db"]))
  assert text_index.meta["method"] == "scbch" and text_index.meta["workdir"] == workdir
  assert text_index.meta["step"] == 5

  # Query features from an .npz (the folder's own query file), i2t by default
  # with the run recorded in the index; beside it, two mistakes (one line, exit 2).
  queries = os.path.join(data, "query.npz")
  hits_path = tmp_path / "hits.json"
  np.savez(tmp_path / "labels_only.npz", labels=splits.query.labels)
  searched, bad_direction, no_features = _launch_all(
      ("launch.search", f"--index={out}", f"--queries={queries}", f"--k={K}",
       f"--out={hits_path}"),
      ("launch.search", f"--index={out}", f"--queries={queries}",
       f"--out={tmp_path / 'x.json'}", "--direction=fused"),
      ("launch.encode", f"--workdir={workdir}",
       f"--data={tmp_path / 'labels_only.npz'}", f"--out={tmp_path / 'y'}"))
  line = _ok(searched)
  assert line.count("\n") == 1 and "i2t" in line, line
  _one_line_error(bad_direction, "--direction=fused")
  _one_line_error(no_features, "'image' or 'text'")
  assert not (tmp_path / "y").exists()
  hits = json.load(open(hits_path))
  assert hits["direction"] == "i2t" and hits["k"] == K and hits["radius"] is None
  want_ids, want_dist = _expected(run_codes["image_query"], run_codes["text_db"],
                                  splits.database.index, K)
  _assert_hits(hits, np.arange(SIZES["query"]), want_ids, want_dist)

  # The Python API gives the same codes and hits (8 devices, batch rounded up).
  enc = load_encoder(workdir)
  assert (enc.method_name, enc.bits, enc.modalities) == ("scbch", 16, ("image", "text"))
  assert len(enc.devices) == 8 and enc.batch_size(5) == 8
  codes = enc.encode(image=splits.query.image, batch_size=13)
  assert list(codes) == ["image"]
  assert codes["image"].tobytes() == run_codes["image_query"].tobytes()
  ids, dist = HammingIndex.from_codes(run_codes["text_db"], splits.database.index
                                      ).search(pack_codes(codes["image"]), k=K)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(dist, want_dist)
  with pytest.raises(ValueError, match="image: expected features of shape"):
    enc.encode(image=splits.query.text)



def test_dcgmh_own_folder_encode_and_search_match_the_evaluator(tmp_path):
  # Multi-hot labels, injected DCGMH noise, the training items in the database.
  data, workdir, run_codes = _train(tmp_path, "dcgmh", one_hot=False, disjoint=False,
                                    seed=1)
  splits = read_dataset(data).splits
  out = tmp_path / "index"
  _ok(*_launch_all(("launch.encode", f"--workdir={workdir}", f"--data=folder:{data}",
                    "--split=database", f"--out={out}", "--progress=false")))
  with np.load(out / "codes.npz") as z:
    assert sorted(z.files) == ["fused", "ids", "labels"]
    assert z["fused"].tobytes() == run_codes["db"].tobytes()
  # Queries straight from the folder's query split, CSV output; and query
  # codes used as they are (no --workdir), with a radius.
  hits_path = tmp_path / "hits.csv"
  np.savez(tmp_path / "qcodes.npz", codes=run_codes["query"])
  searched, by_codes = _launch_all(
      ("launch.search", f"--workdir={workdir}", f"--index={out}",
       f"--queries=folder:{data}", f"--k={K}", f"--out={hits_path}"),
      ("launch.search", f"--index={out}", f"--queries={tmp_path / 'qcodes.npz'}",
       f"--k={K}", "--radius=3", f"--out={tmp_path / 'r.json'}"))
  assert "fused" in _ok(searched)
  _ok(by_codes)
  rows = np.loadtxt(hits_path, delimiter=",", skiprows=1, dtype=np.int64)
  assert open(hits_path).readline().strip() == "query,rank,id,distance"
  want_ids, want_dist = _expected(run_codes["query"], run_codes["db"],
                                  splits.database.index, K)
  np.testing.assert_array_equal(rows[:, 0].reshape(-1, K),
                                np.repeat(splits.query.index[:, None], K, axis=1))
  np.testing.assert_array_equal(rows[:, 1].reshape(-1, K),
                                np.tile(np.arange(1, K + 1), (len(want_ids), 1)))
  np.testing.assert_array_equal(rows[:, 2].reshape(-1, K), want_ids)
  np.testing.assert_array_equal(rows[:, 3].reshape(-1, K), want_dist)
  hits = json.load(open(tmp_path / "r.json"))
  assert hits["direction"] == "fused" and hits["radius"] == 3
  for q, ids, dist in zip(hits["queries"], want_ids, want_dist):
    assert q["ids"] == [int(i) for i, d in zip(ids, dist) if d <= 3]

  enc = load_encoder(workdir)
  assert enc.modalities == ("fused",)
  with pytest.raises(ValueError, match="text= is missing"):
    enc.encode(image=splits.query.image)
