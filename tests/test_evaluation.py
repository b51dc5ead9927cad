"""Evaluation helpers, result files and the evaluate launcher."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from common import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ref_map(qc, dc, ql, dl, empty):
  """Loop reference: stable argsort of Hamming distance, mean of AP."""
  dist = (qc.shape[1] - qc @ dc.T) / 2
  rel = (ql @ dl.T) > 0
  aps = []
  for i in range(qc.shape[0]):
    ranked = rel[i][np.argsort(dist[i], kind="stable")]
    pos = np.flatnonzero(ranked) + 1.0
    if pos.size:
      aps.append(np.mean(np.arange(1, pos.size + 1) / pos))
    elif empty == "zero":
      aps.append(0.0)
  return float(np.mean(aps))


def codes(rng, n, bits=12):
  centres = rng.choice([-1.0, 1.0], size=(4, bits))
  c = centres[rng.integers(0, 4, n)]
  return np.where(rng.random((n, bits)) < 0.1, -c, c)


@pytest.fixture(name="cross_modal")
def fixture_cross_modal():
  rng = np.random.default_rng(0)
  ql = (rng.random((9, 4)) < 0.3).astype(np.float64)
  ql[0] = 0  # a query with no relevant item
  dl = (rng.random((50, 4)) < 0.3).astype(np.float64)
  return {"image_query": codes(rng, 9), "text_query": codes(rng, 9),
          "image_db": codes(rng, 50), "text_db": codes(rng, 50),
          "query_labels": ql, "db_labels": dl}


def test_cross_modal_directions_and_settings(cross_modal):
  a = cross_modal
  res = evaluation.evaluate_cross_modal(
      a["image_query"], a["text_query"], a["image_db"], a["text_db"],
      a["query_labels"], a["db_labels"], precision_ns=(5, 20))
  assert evaluation.directions(res) == ["i2t", "t2i"]
  assert res["settings"] == {"ties": "index", "empty_queries": "skip",
                             "topk": None, "precision_ns": [5, 20],
                             "num_points": 15}
  i2t = ref_map(a["image_query"], a["text_db"], a["query_labels"],
                a["db_labels"], "skip")
  t2i = ref_map(a["text_query"], a["image_db"], a["query_labels"],
                a["db_labels"], "skip")
  assert res["i2t"]["map"] == pytest.approx(i2t, abs=1e-12)
  assert res["t2i"]["map"] == pytest.approx(t2i, abs=1e-12)
  assert res["i2t"]["num_queries"] == 9
  has_relevant = ((a["query_labels"] @ a["db_labels"].T) > 0).any(axis=1)
  assert res["i2t"]["num_queries_counted"] == has_relevant.sum() < 9
  assert len(res["i2t"]["topn_curve"]["cutoffs"]) == 15
  assert len(res["i2t"]["pr_by_radius"]["radius"]) == 13


def test_cross_modal_rejects_mismatched_modalities(cross_modal):
  a = cross_modal
  with pytest.raises(ValueError, match="image_db has 50 rows but text_db"):
    evaluation.evaluate_cross_modal(
        a["image_query"], a["text_query"], a["image_db"], a["text_db"][:10],
        a["query_labels"], a["db_labels"])


def test_cross_modal_checks_both_directions_before_computing(cross_modal,
                                                            monkeypatch):
  a = dict(cross_modal)
  a["image_db"] = (a["image_db"] > 0).astype(np.float64)  # 0/1 codes
  calls = []
  monkeypatch.setattr(evaluation.metrics, "retrieval_metrics",
                      lambda *args, **kwargs: calls.append(1))
  with pytest.raises(ValueError, match=r"image_db looks like \{0,1\} codes"):
    evaluation.evaluate_cross_modal(
        a["image_query"], a["text_query"], a["image_db"], a["text_db"],
        a["query_labels"], a["db_labels"])
  assert not calls


def test_multi_modal_defaults_to_zero_for_empty_queries(cross_modal):
  a = cross_modal
  res = evaluation.evaluate_multi_modal(
      a["image_query"], a["image_db"], a["query_labels"], a["db_labels"],
      ties="tie_aware", topk=10)
  assert evaluation.directions(res) == ["fused"]
  assert res["settings"]["empty_queries"] == "zero"
  assert res["settings"]["ties"] == "tie_aware"
  assert res["settings"]["topk"] == 10
  assert res["fused"]["num_queries_counted"] == 9


def test_write_results_json_png_and_table(cross_modal, tmp_path):
  a = cross_modal
  res = evaluation.evaluate_cross_modal(
      a["image_query"], a["text_query"], a["image_db"], a["text_db"],
      a["query_labels"], a["db_labels"], precision_ns=(5, 10, 20))
  paths = evaluation.write_results(res, str(tmp_path / "out"), prefix="run1")
  assert set(paths) == {"json", "pr_radius", "topn_pr", "precision_at_n"}
  with open(paths["json"], encoding="utf-8") as f:
    loaded = json.load(f)
  assert loaded["i2t"]["map"] == pytest.approx(res["i2t"]["map"])
  assert loaded["t2i"]["precision_at"]["n"] == [5, 10, 20]
  assert loaded["settings"]["empty_queries"] == "skip"
  # Radius 0 may retrieve nothing for every query: NaN must become null.
  for value in loaded["i2t"]["pr_by_radius"]["precision"]:
    assert value is None or 0.0 <= value <= 1.0
  for key in ("pr_radius", "topn_pr", "precision_at_n"):
    with open(paths[key], "rb") as f:
      head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(paths[key]) > 1000
  table = evaluation.format_table(res)
  lines = table.splitlines()
  assert lines[0].split() == ["direction", "mAP", "P@5", "P@20"]
  assert lines[1].split()[:2] == ["i2t", f"{res['i2t']['map']:.4f}"]
  assert lines[2].split()[0] == "t2i"
  assert "empty_queries=skip" in lines[-1]


def test_to_jsonable_converts_nan_and_numpy():
  out = evaluation.to_jsonable({"a": np.array([1.0, np.nan]),
                                "b": np.float32(2.5), "c": (np.int64(3),)})
  assert out == {"a": [1.0, None], "b": 2.5, "c": [3]}


def test_write_results_rejects_bad_prefix_and_empty(tmp_path):
  with pytest.raises(ValueError, match="prefix"):
    evaluation.write_results({"settings": {}, "x": {}}, str(tmp_path),
                             prefix="a/b")
  with pytest.raises(ValueError, match="no direction"):
    evaluation.write_results({"settings": {}}, str(tmp_path), prefix="p")


# ------------------------------------------------------------------ launcher


def run_evaluate(*args):
  return subprocess.run(
      [sys.executable, "-m", "launch.evaluate", *args], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False)


def test_launcher_end_to_end_on_npz(cross_modal, tmp_path):
  path = tmp_path / "codes.npz"
  np.savez(path, **cross_modal)
  out = tmp_path / "eval"
  proc = run_evaluate(f"--codes={path}", f"--out_dir={out}",
                      "--precision_ns=5,20", "--prefix=mir")
  assert proc.returncode == 0, proc.stderr
  with open(out / "mir_results.json", encoding="utf-8") as f:
    loaded = json.load(f)
  a = cross_modal
  assert loaded["i2t"]["map"] == pytest.approx(ref_map(
      a["image_query"], a["text_db"], a["query_labels"], a["db_labels"],
      "skip"), abs=1e-12)
  assert "i2t" in proc.stdout and "t2i" in proc.stdout
  assert (out / "mir_topn_pr.png").stat().st_size > 0


def test_launcher_npy_inputs_and_flag_errors(cross_modal, tmp_path):
  a = cross_modal
  files = {}
  for flag, key in (("query_codes", "image_query"), ("db_codes", "text_db"),
                    ("query_labels", "query_labels"),
                    ("db_labels", "db_labels")):
    files[flag] = tmp_path / f"{flag}.npy"
    np.save(files[flag], a[key])
  npy_flags = [f"--{k}={v}" for k, v in files.items()]
  out = tmp_path / "eval"
  proc = run_evaluate(*npy_flags, f"--out_dir={out}", "--direction=i2t")
  assert proc.returncode == 0, proc.stderr
  with open(out / "eval_results.json", encoding="utf-8") as f:
    loaded = json.load(f)
  assert loaded["settings"]["empty_queries"] == "zero"
  assert loaded["i2t"]["map"] == pytest.approx(ref_map(
      a["image_query"], a["text_db"], a["query_labels"], a["db_labels"],
      "zero"), abs=1e-12)

  both = run_evaluate(f"--codes={tmp_path / 'x.npz'}", npy_flags[0],
                      f"--out_dir={out}")
  assert both.returncode != 0
  assert "--codes cannot be combined with --query_codes" in both.stderr

  missing = run_evaluate(*npy_flags[:3], f"--out_dir={out}")
  assert missing.returncode != 0 and "Missing --db_labels" in missing.stderr


def test_launcher_missing_file_and_key(tmp_path):
  np.savez(tmp_path / "partial.npz", query=np.ones((2, 4)))
  script = (
      "import pytest\n"
      "from launch import evaluate as ev\n"
      f"with pytest.raises(FileNotFoundError, match='--codes'):\n"
      f"  ev.load_npz({str(tmp_path / 'absent.npz')!r})\n"
      "with pytest.raises(KeyError,\n"
      "                   match=r\"needs \\['db', 'query_labels'\"):\n"
      f"  ev.load_npz({str(tmp_path / 'partial.npz')!r})\n"
      f"with pytest.raises(FileNotFoundError, match='--db_labels'):\n"
      f"  ev.load_npy('db_labels', {str(tmp_path / 'absent.npy')!r})\n"
      "print('ok')\n")
  # Run apart so the launcher's absl flags never enter this process.
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
