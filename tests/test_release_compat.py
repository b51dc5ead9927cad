"""config.release_compat: the releases' loops, reproduced on purpose and labelled.

Each quirk is checked against what the loop records (metrics.jsonl, the
batches the pipeline yields, the selected step), with the default
(release_compat=False) as the reference: evaluation AFTER epochs, the last
partial batch dropped, the configured selection and eval schedule. True
selects every quirk of the method; a comma-separated string only those.
"""

import collections
import json
import os

import jax

import numpy as np
import pytest

from common import evaluation
from common import experiment
from common import plots
from common import methods
from common import quirks
from common.data import pipeline
from common.reporting import read_jsonl
from common.run_config import ConfigError
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs

N = 256          # synthetic:tiny training items
B = 48           # N mod B = 16 rows: divisible by the 8 test devices
EPOCHS = 3
FULL, PARTIAL = N // B, N % B   # 5 full batches + one of 16 rows


def _scbch(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=B, bits=16, epochs=EPOCHS, image_hidden=(32, 32),
                     text_hidden=(32,), cscc_start_epoch=1, k=5, progress=False,
                     eval_every=0, checkpoint_every=5, release_compat=True))
  config.update(overrides)
  return config


def _dcgmh(**overrides):
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=B, bits=16, epochs=6, hidden=32, fused=32,
                     warmup_epochs=1, progress=False, eval_every=0,
                     checkpoint_every=0, release_compat=True))
  config.update(overrides)
  return config


@pytest.fixture
def batch_sizes(monkeypatch):
  """Rows of every batch the loop trains, per epoch: {epoch: [rows, ...]}."""
  sizes = {}
  original = pipeline.train_batches

  def recording(arrays, **kwargs):
    for batch in original(arrays, **kwargs):
      sizes.setdefault(kwargs["epoch"], []).append(len(batch["index"]))
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", recording)
  return sizes


@pytest.fixture
def compiled_programs():
  """Names of the XLA programs compiled (or loaded from the persistent cache)
  while the test runs, one entry per program: a compile counter."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(kwargs.get("fun_name"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield names
  jax.monitoring.unregister_event_duration_listener(listener)


def _records(workdir, kind):
  return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r.get("kind") == kind]


def _codes(workdir, name):
  with np.load(os.path.join(workdir, f"{name}_codes.npz")) as f:
    return {k: f[k] for k in f.files}


def _maps(results):
  return {k: v["map"] for k, v in results.items() if isinstance(v, dict) and "map" in v}


def test_scbch_release_loop_evaluates_at_epoch_starts_selects_on_test_and_trains_the_partial_batch(
    tmp_path, batch_sizes):
  workdir = str(tmp_path / "run")
  lines = []
  results = experiment.run(_scbch(), workdir, log=lines.append)
  steps = FULL + 1  # ceil(N / B)

  # The partial last batch is trained, last, in every epoch.
  assert batch_sizes == {e: [B] * FULL + [PARTIAL] for e in range(EPOCHS)}
  assert [r["epoch"] for r in _records(workdir, "epoch")] == list(range(EPOCHS))
  assert _records(workdir, "epoch")[-1]["step"] == EPOCHS * steps

  # Evaluation at the START of epochs 0..E-1 (the model after e epochs, at
  # global step e * steps); the final model is never evaluated in the loop.
  evals = _records(workdir, "eval")
  assert [r["epoch"] for r in evals] == list(range(EPOCHS))
  assert [r["step"] for r in evals] == [e * steps for e in range(EPOCHS)]
  assert all(r["at"] == "epoch_start" and r["split"] == "test" for r in evals)

  # Selection: the best evaluation on the test queries (latest among equals),
  # forced although config.selection is 'last'; its results are the final ones.
  best = max(evals, key=lambda r: (r["score"], r["step"]))
  settings = results["settings"]
  assert settings["selection"] == "test_queries"
  assert settings["selected_step"] == best["step"]
  assert _maps(results) == pytest.approx(
      {k: v["map"] for k, v in best.items() if isinstance(v, dict) and "map" in v})

  # Labelled everywhere: settings, the results file, run_summary, the table line.
  assert list(settings["release_compat"]) == ["partial_last_batch", "eval_at_epoch_start"]
  assert "START of each epoch" in settings["release_compat"]["eval_at_epoch_start"]
  assert "partial last batch" in settings["release_compat"]["partial_last_batch"]
  with open(os.path.join(workdir, "scbch_final_results.json")) as f:
    assert json.load(f)["settings"]["release_compat"] == settings["release_compat"]
  with open(os.path.join(workdir, "run_summary.json")) as f:
    summary = json.load(f)
  assert summary["release_compat"] == settings["release_compat"]
  assert summary["selected_step"] == best["step"]
  assert any("RELEASE_COMPAT: partial_last_batch (" in line and "TEST QUERIES" in line
             for line in lines)
  assert any("[release_compat: partial_last_batch, eval_at_epoch_start]" in line
             for line in lines)   # the table


def test_scbch_release_loop_resumes_exactly_inside_the_partial_batch(tmp_path):
  # Checkpoint at global step 5 (before epoch 0's partial batch); crash after it.
  uninterrupted = str(tmp_path / "a")
  experiment.run(_scbch(), uninterrupted, log=lambda _: None)

  def crash(step):
    if step == FULL + 1:
      raise KeyboardInterrupt("simulated crash")

  resumed = str(tmp_path / "b")
  with pytest.raises(KeyboardInterrupt):
    experiment.run(_scbch(), resumed, log=lambda _: None, on_step=crash)
  experiment.run(_scbch(), resumed, log=lambda _: None)
  a, b = _codes(uninterrupted, "scbch"), _codes(resumed, "scbch")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  key = lambda r: (r["epoch"], r["step"], r["score"])
  assert ([key(r) for r in _records(uninterrupted, "eval")]
          == [key(r) for r in _records(resumed, "eval")])


def test_default_loop_drops_the_partial_batch_and_evaluates_after_epochs(
    tmp_path, batch_sizes):
  workdir = str(tmp_path / "run")
  results = experiment.run(_scbch(release_compat=False, eval_every=1), workdir,
                           log=lambda _: None)
  assert batch_sizes == {e: [B] * FULL for e in range(EPOCHS)}
  evals = _records(workdir, "eval")
  assert [r["epoch"] for r in evals] == list(range(EPOCHS))
  assert [r["step"] for r in evals] == [(e + 1) * FULL for e in range(EPOCHS)]
  assert all("at" not in r for r in evals)
  assert results["settings"]["selection"] == "last"
  assert results["settings"]["selected_step"] == EPOCHS * FULL
  assert "release_compat" not in results["settings"]
  with open(os.path.join(workdir, "run_summary.json")) as f:
    assert "release_compat" not in json.load(f)


def test_dcgmh_release_loop_evaluates_every_5_epochs_and_at_the_end(
    tmp_path, batch_sizes, compiled_programs):
  workdir = str(tmp_path / "run")
  results = experiment.run(_dcgmh(), workdir, log=lambda _: None)
  assert batch_sizes == {e: [B] * FULL + [PARTIAL] for e in range(6)}
  # Issue 22: 4 step programs (2 phases x {full, partial batch}); the BatchNorm
  # switch at epoch 5 is data, the clean labels state: neither adds one.
  programs = collections.Counter(compiled_programs)
  assert programs["jit(step_body)"] == 4, programs
  assert programs["jit(_init_state)"] == 1, programs
  evals = _records(workdir, "eval")
  assert [r["epoch"] for r in evals] == [4, 5]   # after the 5th and the last epoch
  assert all("at" not in r for r in evals)
  settings = results["settings"]
  assert settings["selection"] == "last"
  assert settings["selected_step"] == 6 * (FULL + 1)
  assert list(settings["release_compat"]) == [
      "partial_last_batch", "eval_every_5", "bn_eval_after_first_eval",
      "augment_unlabeled_only", "clean_label_reconstruction", "bn_unbiased_running_var"]
  assert "every 5 epochs" in settings["release_compat"]["eval_every_5"]
  assert "leaks ground truth" in settings["release_compat"]["clean_label_reconstruction"]


def test_dcgmh_default_loop_compiles_one_step_program_per_phase(tmp_path,
                                                              compiled_programs):
  """The default's count beside the compat run's 4 above: one per phase."""
  experiment.run(_dcgmh(release_compat=False, epochs=2), str(tmp_path / "run"),
                 log=lambda _: None)
  programs = collections.Counter(compiled_programs)
  assert programs["jit(step_body)"] == 2, programs
  assert programs["jit(_init_state)"] == 1, programs


@pytest.mark.parametrize("selection", ["val"])
def test_scbch_release_loop_refuses_another_selection(tmp_path, selection):
  with pytest.raises(ConfigError, match=r"config\.selection"):
    experiment.run(_scbch(selection=selection), str(tmp_path / "w"),
                   log=lambda _: None)
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


def test_partial_batch_must_divide_over_the_devices(tmp_path):
  # 260 mod 48 = 20 rows cannot be split over 8 devices.
  with pytest.raises(ConfigError, match=r"config\.batch_size.*20 rows.*8 devices"):
    experiment.run(_scbch(train_size=260), str(tmp_path / "w"), log=lambda _: None)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# --- one key per quirk ---------------------------------------------------------------


def test_registries_name_every_quirk_with_a_label_and_its_methods():
  scbch = methods.all_quirks(methods.get_spec("scbch"))
  dcgmh = methods.all_quirks(methods.get_spec("dcgmh"))
  assert list(scbch) == ["partial_last_batch", "eval_at_epoch_start"]
  assert list(dcgmh) == ["partial_last_batch", "eval_every_5", "bn_eval_after_first_eval",
                         "augment_unlabeled_only", "clean_label_reconstruction",
                         "bn_unbiased_running_var"]
  for name, quirk in {**scbch, **dcgmh}.items():
    assert quirk.name == name and quirk.label and "\n" not in quirk.label
  assert quirks.LOOP_QUIRKS["partial_last_batch"].methods is None  # both releases
  assert quirks.LOOP_QUIRKS["eval_at_epoch_start"].methods == ("scbch",)
  assert quirks.LOOP_QUIRKS["eval_every_5"].methods == ("dcgmh",)


@pytest.mark.parametrize("method, value, want", [
    ("scbch", False, dict(selection="last", eval_every=0, eval_at_epoch_start=False,
                          keep_partial=False, release_compat=None)),
    ("scbch", "partial_last_batch", dict(selection="last", eval_every=0,
                                         eval_at_epoch_start=False, keep_partial=True)),
    ("scbch", "eval_at_epoch_start", dict(selection="test_queries", eval_every=1,
                                          eval_at_epoch_start=True, keep_partial=False)),
    ("scbch", True, dict(selection="test_queries", eval_every=1, eval_at_epoch_start=True,
                         keep_partial=True)),
    ("dcgmh", "eval_every_5", dict(selection="last", eval_every=5, keep_partial=False)),
    ("dcgmh", " bn_unbiased_running_var , partial_last_batch", dict(
        selection="last", eval_every=0, keep_partial=True,
        release_compat=["partial_last_batch", "bn_unbiased_running_var"])),
    ("dcgmh", "clean_label_reconstruction", dict(
        selection="last", eval_every=0, keep_partial=False,
        release_compat=["clean_label_reconstruction"])),
])
def test_each_quirk_sets_only_its_part_of_the_loop(method, value, want):
  config = (_scbch if method == "scbch" else _dcgmh)(release_compat=value)
  plan = methods.resolve_plan(config)
  want = dict(want)
  names = want.pop("release_compat", None if value is False else
                   list(methods.all_quirks(methods.get_spec(method))) if value is True
                   else [value])
  assert plan.release_compat is None if names is None else list(plan.release_compat) == names
  assert plan.quirks == frozenset(names or ())
  for key, value in want.items():
    assert getattr(plan.loop, key) == value, key


@pytest.mark.parametrize("method, value, match", [
    ("scbch", "bn_eval_after_first_eval", r"quirk of the DCGMH release.*valid for SCBCH.*"
     r"partial_last_batch, eval_at_epoch_start"),
    ("dcgmh", "eval_at_epoch_start", r"quirk of the SCBCH release.*valid for DCGMH.*"
     r"bn_unbiased_running_var"),
    ("dcgmh", "partial_last_batch,bn_eval_after_1st_eval",
     r"unknown quirk 'bn_eval_after_1st_eval'.*valid for DCGMH"),
    ("scbch", "", r"expected a bool or quirk names"),
    ("scbch", 1, r"expected a bool or quirk names"),
])
def test_a_bad_quirk_name_is_refused_before_any_compute(tmp_path, method, value, match):
  config = (_scbch if method == "scbch" else _dcgmh)(release_compat=value)
  with pytest.raises(ConfigError, match=r"config\.release_compat=.*" + match):
    experiment.run(config, str(tmp_path / "w"), log=lambda _: None)
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_the_start_of_epoch_quirk_alone_keeps_full_batches(tmp_path, batch_sizes):
  workdir = str(tmp_path / "run")
  lines = []
  results = experiment.run(_scbch(release_compat="eval_at_epoch_start", epochs=2),
                           workdir, log=lines.append)
  assert batch_sizes == {e: [B] * FULL for e in range(2)}   # partial batch dropped
  evals = _records(workdir, "eval")
  assert [r["step"] for r in evals] == [0, FULL]
  assert all(r["at"] == "epoch_start" for r in evals)
  assert list(results["settings"]["release_compat"]) == ["eval_at_epoch_start"]
  assert results["settings"]["selection"] == "test_queries"
  assert any("[release_compat: eval_at_epoch_start]" in line for line in lines)


def test_labels_in_tables_and_plot_titles():
  labels = {n: q.label for n, q in methods.all_quirks(methods.get_spec("dcgmh")).items()}
  short = plots.release_compat_note(labels)
  assert short.startswith("[release_compat: partial_last_batch, eval_every_5, ")
  assert "clean_label_reconstruction (leaks ground truth)" in short
  long = plots.release_compat_note(labels, labels=True)
  assert all(f"{n} ({l})" in long for n, l in labels.items())
  assert plots.release_compat_note(None) == plots.release_compat_note({}) == ""
  assert plots.release_compat_note("an older run's note") == "[release_compat]"
  title = plots.titled("PR by Hamming radius", short)
  assert title.count("\n") >= 2 and all(len(l) <= 64 for l in title.split("\n")[1:])
  results = {"fused": {"map": 0.5, "precision_at": {"n": [1, 2], "precision": [1.0, 0.5]}},
             "settings": {"ties": "index", "release_compat": {"eval_every_5": "x"}}}
  assert evaluation.format_table(results).splitlines()[-1] == "[release_compat: eval_every_5]"
