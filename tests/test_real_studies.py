"""The real-suite studies' bookkeeping (studies/real_*.py): paired statistics,
the decision rule, run naming under a seed split, borrowed runs' identity."""

import os

import numpy as np
import pytest

from studies import real_dcgmh_defaults, real_noise_ratio, real_release_compat
from studies import real_scbch_cscc, real_suite, real_variants
from studies.real_suite import Setting

STUDIES = (real_dcgmh_defaults, real_scbch_cscc, real_noise_ratio, real_release_compat,
           real_variants)


def _rows(rng, effects, seeds, missing=()):
  """Fake finished runs: reference 'ref' and settings with per-cell effects."""
  rows = []
  for (dataset, rate), effect in effects.items():
    base = rng.uniform(0.3, 0.8, size=len(seeds))
    noise = rng.normal(0, 0.004, size=len(seeds))
    for i, seed in enumerate(seeds):
      for name, value in (("ref", base[i]), ("a", base[i] + effect + noise[i]),
                          ("same", base[i])):
        if (name, dataset, rate, seed) in missing:
          continue
        rows.append(dict(method="dcgmh", setting=name, dataset=dataset, rate=rate,
                         bits=32, seed=seed, maps={"fused": float(value)}))
  return rows


SETTINGS = (Setting("dcgmh", "ref", {}), Setting("dcgmh", "a", {}),
            Setting("dcgmh", "same", {}))


def test_paired_table_matches_numpy():
  rng = np.random.default_rng(0)
  effects = {("yeast", 0.2): 0.01, ("digits", 0.2): 0.02, ("segment", 0.4): -0.005}
  seeds = [0, 1, 2, 3, 4]
  missing = {("a", "digits", 0.2, 3)}  # one seed lost: n = 4 there, paired on 4
  rows = _rows(rng, effects, seeds, missing)
  table = real_suite.paired_table(rows, SETTINGS, {"dcgmh": "ref"})
  by = {(r["dataset"], r["rate"], r["setting"]): r for r in table}
  for (dataset, rate) in effects:
    ref = {r["seed"]: r["maps"]["fused"] for r in rows
           if (r["dataset"], r["rate"], r["setting"]) == (dataset, rate, "ref")}
    other = {r["seed"]: r["maps"]["fused"] for r in rows
             if (r["dataset"], r["rate"], r["setting"]) == (dataset, rate, "a")}
    common = sorted(set(ref) & set(other))
    d = np.array([100 * (other[s] - ref[s]) for s in common])
    row = by[(dataset, rate, "a")]
    assert row["n"] == len(common)
    np.testing.assert_allclose(row["diff"], d.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["se"], d.std(ddof=1) / np.sqrt(len(d)), rtol=1e-12)
    np.testing.assert_allclose(row["ref_mean"], 100 * np.mean(list(ref.values())))
  assert by[("digits", 0.2, "a")]["n"] == 4


def test_pooled_and_the_decision_rule():
  rng = np.random.default_rng(1)
  seeds = [0, 1, 2, 3, 4]
  table = real_suite.paired_table(
      _rows(rng, {("yeast", 0.2): 0.01, ("digits", 0.2): 0.02, ("segment", 0.2): 0.015},
            seeds), SETTINGS, {"dcgmh": "ref"})
  pool = {p["setting"]: p for p in real_suite.pooled(table)}
  cells = [r for r in table if r["setting"] == "a"]
  np.testing.assert_allclose(pool["a"]["diff"], np.mean([c["diff"] for c in cells]))
  np.testing.assert_allclose(pool["a"]["se"],
                             np.sqrt(sum(c["se"] ** 2 for c in cells)) / len(cells))
  assert pool["a"]["verdict"] == "better" and pool["a"]["cells_down"] == 0
  assert pool["same"]["verdict"] == "identical"
  # One cell significantly the other way: no verdict, however large the mean.
  mixed = real_suite.paired_table(
      _rows(rng, {("yeast", 0.2): 0.05, ("digits", 0.2): 0.05, ("segment", 0.2): -0.02},
            seeds), SETTINGS, {"dcgmh": "ref"})
  pool = {p["setting"]: p for p in real_suite.pooled(mixed)}
  assert pool["a"]["diff"] > 2 * pool["a"]["se"] and pool["a"]["cells_down"] == 1
  assert pool["a"]["verdict"] == "within noise"
  # A cell with one seed has no s.e.: it stays out of the pool.
  single = real_suite.paired_table(_rows(rng, {("yeast", 0.2): 0.01}, [0]),
                                   SETTINGS, {"dcgmh": "ref"})
  assert real_suite.pooled(single) == []


@pytest.fixture
def real_packages_present(monkeypatch):
  """These tests check the study configs, not the data: without the [real]
  extra (CI installs only [test]) the package-presence check is stubbed, so
  every other check of the config still runs."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from common.data import real  # pylint: disable=g-import-not-at-top
  found = real.source_file
  def source_file(name):
    if importlib.util.find_spec(real.REAL_DATASETS[name].module) is None:
      return f"<{real.REAL_DATASETS[name].package} not installed>"
    return found(name)
  monkeypatch.setattr(real, "source_file", source_file)


@pytest.mark.parametrize("study", STUDIES, ids=lambda m: m.NAME)
@pytest.mark.usefixtures("real_packages_present")
def test_every_study_config_is_valid_and_named_once(study):
  from common import experiment, sweep
  planned = study.all_entries(None)
  configs = [e.config for e in planned]
  names = [n for n, _ in sweep.run_names(configs)]
  assert len(set(names)) == len(names)
  for entry in planned[:: max(1, len(planned) // 7)]:
    experiment.check_config(entry.config)
    assert entry.config.dataset == f"real:{entry.dataset}"
    assert entry.config.seed == entry.config.noise_seed == entry.seed


@pytest.mark.usefixtures("real_packages_present")
def test_a_seed_split_runs_the_full_lists_directories(tmp_path, monkeypatch):
  """Two processes with --seeds=0,1,2 and --seeds=3,4 run exactly the
  directories the report reads (names over the study's full entry list)."""
  from common import sweep
  ran = []
  monkeypatch.setattr(sweep, "_run_in_process",
                      lambda run: ran.append(run.workdir) or sweep.RunOutcome(
                          run.name, "finished", workdir=run.workdir))
  planned = real_scbch_cscc.all_entries(None)
  root = str(tmp_path)
  for seeds in ("0,1,2", "3,4"):
    real_suite.run_interleaved([(planned, root)], keep=real_suite.entry_filter(None, seeds),
                               print_fn=lambda _: None)
  assert sorted(ran) == sorted(real_suite.run_dirs(planned, root))
  assert len(ran) == len(planned)
  one_seed = [e for e in planned if e.seed == 3]
  # Planned alone, one seed's runs would be named without the seed: not the same.
  assert set(real_suite.run_dirs(one_seed, root)) - set(ran)


def test_borrowed_settings_are_the_same_configs():
  """The reports read some settings from another study's runs: their configs
  must be identical to what this study would have run."""
  def config(method, overrides, dataset="digits", rate=None):
    rate = rate or real_suite.RATES[method][0]
    return real_suite.make_config(method, dataset, rate, 32, 2, overrides).to_dict()
  for dataset in real_suite.SETS:
    assert config("dcgmh", {"variant": "full"}, dataset) == config("dcgmh", {}, dataset)
    assert config("scbch", {"variant": "full"}, dataset) == config("scbch", {}, dataset)
    # real_release_compat's `off` is release_compat=False, the default.
    assert config("dcgmh", {"release_compat": False}, dataset) == config("dcgmh", {}, dataset)
  names = {s.name for s in real_dcgmh_defaults.SETTINGS}
  assert set(real_release_compat.FROM_DEFAULTS) <= names
  assert {"default"} <= names
  assert {"full", "no_cscc"} <= {s.name for s in real_scbch_cscc.SETTINGS}
  assert {s.name for s in real_variants.ALL_SETTINGS if s.method == "scbch"} >= {"no_cscc"}


def test_report_writes_markdown_and_csv(tmp_path):
  rng = np.random.default_rng(2)
  rows = _rows(rng, {("yeast", 0.2): 0.01, ("digits", 0.4): 0.0}, [0, 1, 2])
  planned = [real_suite.Entry(s, d, r, 32, seed, None) for s in SETTINGS
             for (d, r) in (("yeast", 0.2), ("digits", 0.4)) for seed in (0, 1, 2, 3)]
  text = real_suite.write_report("t", str(tmp_path), "T", "intro", planned, rows,
                                 SETTINGS, {"dcgmh": "ref"})
  assert "| DCGMH | 32 | a | fused |" in text
  assert "seeds 3" in text  # the missing seed is listed
  for suffix in (".md", ".csv", "_pooled.csv", "_runs.csv"):
    assert os.path.getsize(tmp_path / f"t{suffix}") > 0


def test_against_another_reference_pairs_the_same_runs():
  rng = np.random.default_rng(3)
  rows = _rows(rng, {("yeast", 0.2): 0.01, ("digits", 0.4): 0.03}, [0, 1, 2, 3])
  text, pool = real_suite.against(rows, SETTINGS[1:], "dcgmh", "a", "vs a")
  (same,) = [p for p in pool if p["setting"] == "same"]
  want = []
  for cell in (("yeast", 0.2), ("digits", 0.4)):
    a = {r["seed"]: r["maps"]["fused"] for r in rows
         if (r["dataset"], r["rate"], r["setting"]) == cell + ("a",)}
    b = {r["seed"]: r["maps"]["fused"] for r in rows
         if (r["dataset"], r["rate"], r["setting"]) == cell + ("same",)}
    want.append(np.mean([100 * (b[s] - a[s]) for s in a]))
  np.testing.assert_allclose(same["diff"], np.mean(want))
  assert same["verdict"] == "worse" and "## vs a" in text
  assert all(p["setting"] != "a" for p in pool)
