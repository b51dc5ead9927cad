"""nhj-sweep and nhj-report: a tiny 2x2 sweep end to end (in-process and as
subprocesses; a killed run resumed, a failed run recorded, finished runs
skipped) and the report on hand-made result files."""

import copy
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from common import report as report_lib
from common import run_config
from common import sweep
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP_FILE = textwrap.dedent("""
    from configs import scbch

    def tiny(**overrides):
      config = scbch.get_config("synthetic:tiny")
      config.update(dict(batch_size=32, epochs=1, image_hidden=(32, 32),
                         text_hidden=(32,), k=5, eval_every=0, checkpoint_every=2))
      config.update(overrides)
      return config

    def get_sweep():
      for bits in (8, 16):
        for seed in (0, 1):
          yield tiny(bits=bits, seed=seed)
      # Passes every check, fails when the data is built: more training items
      # than the synthetic database holds.
      yield tiny(bits=8, seed=0, train_size=100000)
    """)
KILLED = "scbch-full-bits8-train_sizeNone-seed0"
FINISHED = ["scbch-full-bits8-train_sizeNone-seed1", "scbch-full-bits16-train_sizeNone-seed0",
            "scbch-full-bits16-train_sizeNone-seed1"]
FAILING = "scbch-full-bits8-train_size100000-seed0"


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  # One CPU device and cheap XLA compilation: the tiny runs are mostly compile time.
  env["XLA_FLAGS"] = ("--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
  return env


def _python(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300, **kwargs)


def _metrics(root, names):
  return {n: open(os.path.join(root, n, "metrics.jsonl"), "rb").read() for n in names}


def test_a_sweep_runs_resumes_skips_and_records_failures(tmp_path):
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(SWEEP_FILE)
  root = str(tmp_path / "root")
  # Runs of the same shapes (the other seed, the resumed run) reuse compilations.
  cache = str(tmp_path / "xla_cache")
  # 1. In-process: the first run is "killed" at step 3 (after the checkpoint of
  #    step 2), the impossible config fails; the others finish regardless.
  script = textwrap.dedent(f"""
      import sys
      from common import experiment, sweep
      from launch import cli
      cli.enable_compilation_cache({cache!r})
      real = experiment.run
      def run(config, workdir, **kwargs):
        if workdir.endswith({KILLED!r}):
          def kill(step):
            if step == 3:
              raise RuntimeError("simulated kill at step 3")
          kwargs["on_step"] = kill
        return real(config, workdir, **kwargs)
      experiment.run = run
      outcomes = sweep.run_sweep(sweep.load_sweep({str(sweep_file)!r}), {root!r})
      print("STATUSES", {{n: o.status for n, o in outcomes.items()}})
      """)
  first = _python(["-c", script])
  assert first.returncode == 0, first.stderr[-3000:]
  statuses = eval(first.stdout.split("STATUSES", 1)[1])  # pylint: disable=eval-used
  assert statuses == {KILLED: "failed", FAILING: "failed",
                      **{n: "finished" for n in FINISHED}}
  assert "sweep: 3 of 5 runs finished" in first.stdout
  assert "2 FAILED" in first.stdout
  assert "sweep: 100%" in first.stderr  # the overall progress bar
  status = json.load(open(os.path.join(root, "sweep_status.json")))
  assert status["runs"][FAILING]["status"] == "failed"
  assert "train_size=100000" in status["runs"][FAILING]["error"]
  assert open(os.path.join(root, KILLED, "FAILED")).read().strip() == (
      "RuntimeError: simulated kill at step 3")
  for name in FINISHED:
    summary = json.load(open(os.path.join(root, name, "run_summary.json")))
    assert set(summary["maps"]) == {"i2t", "t2i"}
    saved = json.load(open(os.path.join(root, name, "config.json")))
    assert saved["progress"] is False and saved["epochs"] == 1
  assert not os.path.exists(os.path.join(root, KILLED, "run_summary.json"))
  before = _metrics(root, FINISHED)

  # 2. Again, as 2 subprocesses at a time: the killed run resumes from its
  #    checkpoint, finished runs are skipped (not trained), the bad one fails again.
  second = _python(["-m", "launch.sweep", f"--sweep={sweep_file}", f"--root={root}",
                    "--jobs=2", f"--compilation_cache_dir={cache}"])
  assert second.returncode == 1, second.stderr[-3000:]
  lines = second.stdout.splitlines()
  for name in FINISHED:
    assert any(l.startswith(name) and " skipped " in l for l in lines), lines
  assert any(l.startswith(KILLED) and " finished " in l and "i2t=" in l for l in lines)
  assert any(l.startswith(FAILING) and "FAILED" in l and "train_size=100000" in l
             for l in lines)
  assert "1 FAILED: " + FAILING in lines[-1]
  log = open(os.path.join(root, KILLED, "sweep.log")).read()
  assert "at global step 2" in log  # resumed, not restarted
  assert not os.path.exists(os.path.join(root, KILLED, "FAILED"))
  assert os.path.exists(os.path.join(root, KILLED, "run_summary.json"))
  assert json.load(open(os.path.join(root, KILLED, "sweep_config.json")))["bits"] == 8
  assert _metrics(root, FINISHED) == before
  before = _metrics(root, FINISHED + [KILLED])

  # 3. In-process again: nothing left to train.
  third = _python(["-m", "launch.sweep", f"--sweep={sweep_file}", f"--root={root}",
                   f"--compilation_cache_dir={cache}"])
  assert third.returncode == 1
  assert sum(l.startswith("scbch-") and " skipped " in l
             for l in third.stdout.splitlines()) == 4
  assert "sweep: 4 of 5 runs finished (4 skipped" in third.stdout
  assert _metrics(root, FINISHED + [KILLED]) == before


def _tiny(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, epochs=1, image_hidden=(32, 32), text_hidden=(32,),
                     k=5, eval_every=0))
  config.update(overrides)
  return config


def test_names_dry_run_duplicates_and_a_conflicting_run_dir(tmp_path):
  configs = [_tiny(bits=b, noise_rate=r) for b in (16, 32) for r in (0.2, 0.5)]
  configs.append(_tiny(bits=16, noise_rate=0.2, seed=7))
  dconfig = dcgmh_configs.get_config("synthetic:tiny")
  configs.append(dconfig)
  names = [n for n, _ in sweep.run_names(configs)]
  assert names[:4] == ["scbch-full-noise_rate0.2-bits16-seed123",
                       "scbch-full-noise_rate0.5-bits16-seed123",
                       "scbch-full-noise_rate0.2-bits32-seed123",
                       "scbch-full-noise_rate0.5-bits32-seed123"]
  assert names[4] == "scbch-full-noise_rate0.2-bits16-seed7"
  assert names[5] == "dcgmh-full"  # alone in its method: nothing differs
  assert len(set(names)) == len(names)
  assert names == [n for n, _ in sweep.run_names(configs)]  # deterministic
  with pytest.raises(sweep.SweepError, match="#0 and #6 .* identical"):
    sweep.run_names(configs + [copy.deepcopy(configs[0])])
  lines = []
  sweep.run_sweep(configs, str(tmp_path), dry_run=True, print_fn=lines.append)
  assert lines[-1].startswith("dry run: 6 runs") and "6 new" in lines[-1]
  assert not os.listdir(tmp_path)  # a dry run writes nothing
  # A run directory that holds another config: refused, naming the run.
  other = run_config.to_dict(configs[0])
  other.update(lr=0.5, progress=False)
  os.makedirs(tmp_path / names[0])
  (tmp_path / names[0] / "config.json").write_text(json.dumps(other))
  with pytest.raises(sweep.SweepError, match=f"run {names[0]}: .*config.lr: saved 0.5"):
    sweep.plan(configs, str(tmp_path))
  # The same config there (progress aside) and a summary: finished.
  other.update(lr=configs[0].lr, progress=True)
  (tmp_path / names[0] / "config.json").write_text(json.dumps(other))
  assert sweep.plan(configs, str(tmp_path))[0].state == sweep.RESUME
  (tmp_path / names[0] / "run_summary.json").write_text("{}")
  assert sweep.plan(configs, str(tmp_path))[0].state == sweep.FINISHED
  with pytest.raises(sweep.SweepError, match="config.bits"):
    sweep.plan([_tiny(bits=0)], str(tmp_path / "bad"))


# --- the report on hand-made runs -----------------------------------------------------


def _write_run(root, name, config, maps, *, selection="last", epoch=None):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  record = dict(run_config.to_dict(config), resolved={"num_classes": 8})
  json.dump(record, open(os.path.join(workdir, "config.json"), "w"))
  results = {"settings": {"selection": selection, "method": config.method, "bits": config.bits},
             **{d: {"map": m, "num_queries": 64} for d, m in maps.items()}}
  json.dump(results, open(os.path.join(workdir, f"{config.method}_final_results.json"), "w"))
  if epoch is not None:
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"kind": "epoch", "epoch": 0, "filter": {"precision": 0.1}}) + "\n")
      f.write(json.dumps({"kind": "train", "step": 9, "loss": 1.0}) + "\n")
      f.write(json.dumps({"kind": "epoch", "epoch": 1, **epoch}) + "\n")


def _csv_rows(path):
  return list(csv.DictReader(open(path)))


def test_report_on_hand_made_runs(tmp_path):
  root = str(tmp_path / "root")
  rng = np.random.default_rng(0)
  values = {}  # (variant, rate, bits, direction) -> list of mAPs
  for variant, base in (("full", 0.70), ("no_cscc", 0.60)):
    for rate in (0.2, 0.5):
      for bits in (16, 32):
        for seed in (0, 1, 2):
          config = _tiny(variant=variant, noise_rate=rate, bits=bits, seed=seed)
          maps = {"i2t": base + rng.uniform(0, 0.05) - rate / 10,
                  # no_cscc is the better T->I at 32 bits: bold moves row per column
                  "t2i": base + (0.2 if (variant, bits) == ("no_cscc", 32) else 0)
                         + rng.uniform(0, 0.05)}
          for d, m in maps.items():
            values.setdefault((variant, rate, bits, d), []).append(m)
          _write_run(root, f"{variant}-{rate}-{bits}-{seed}", config, maps,
                     epoch={"weight_auc_corrupted": 0.8 + seed / 100})
  # One run selected on the test queries (the release protocol): n = 1, marked.
  _write_run(root, "tq", _tiny(variant="full", noise_rate=0.2, bits=16, selection="test_queries"),
             {"i2t": 0.99, "t2i": 0.98}, selection="test_queries")
  # DCGMH: two seeds, filter diagnostics from the last epoch record.
  for seed, (p, r) in enumerate(((0.8, 0.6), (0.9, 0.7))):
    config = dcgmh_configs.get_config("synthetic:tiny")
    config.update(dict(bits=16, seed=seed))
    _write_run(root, f"dcgmh-{seed}", config, {"fused": 0.5 + seed / 10},
               epoch={"filter": {"precision": p, "recall": r}})
  # A run that never finished, a failed one, and a stray directory.
  os.makedirs(os.path.join(root, "killed"))
  json.dump(run_config.to_dict(_tiny(seed=9)), open(os.path.join(root, "killed", "config.json"), "w"))
  os.makedirs(os.path.join(root, "broken"))
  json.dump({}, open(os.path.join(root, "broken", "sweep_config.json"), "w"))
  open(os.path.join(root, "broken", "FAILED"), "w").write("config.k=999: too many\n")
  os.makedirs(os.path.join(root, "notes"))

  out = subprocess.run([sys.executable, "-m", "launch.report", root], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  out_dir = os.path.join(root, "report")
  assert "1 missing or failed" not in out.stdout and "2 missing or failed" in out.stdout

  rows = _csv_rows(os.path.join(out_dir, "table.csv"))
  scbch_rows = [r for r in rows if r["method"] == "scbch" and r["selection"] == "last"]
  assert len(scbch_rows) == 2 * 2 * 2 * 2
  for row in scbch_rows:
    expected = values[(row["variant"], float(row["noise_rate"]), int(row["bits"]),
                       row["direction"])]
    assert float(row["mean"]) == pytest.approx(np.mean(expected), abs=1e-12)
    assert float(row["std"]) == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
    assert row["n"] == "3" and row["seeds"] == "0 1 2" and row["test_queries"] == "false"
  tq = [r for r in rows if r["selection"] == "test_queries"]
  assert {r["direction"]: (r["mean"], r["std"], r["n"], r["test_queries"]) for r in tq} == {
      "i2t": ("0.99", "", "1", "true"), "t2i": ("0.98", "", "1", "true")}
  fused = [r for r in rows if r["method"] == "dcgmh"]
  assert len(fused) == 1 and fused[0]["direction"] == "fused" and fused[0]["n"] == "2"
  assert float(fused[0]["mean"]) == pytest.approx(0.55)
  assert float(fused[0]["std"]) == pytest.approx(np.std([0.5, 0.6], ddof=1))

  diagnostics = _csv_rows(os.path.join(out_dir, "diagnostics.csv"))
  precision = [d for d in diagnostics if d["diagnostic"] == "filter_precision"]
  assert len(precision) == 1 and float(precision[0]["mean"]) == pytest.approx(0.85)
  auc = [d for d in diagnostics if d["diagnostic"] == "cscc_weight_auc"
         and d["variant"] == "full" and d["noise_rate"] == "0.2" and d["bits"] == "16"
         and d["selection"] == "last"]
  assert float(auc[0]["mean"]) == pytest.approx(0.81)

  md = open(os.path.join(out_dir, "table.md")).read()
  def cell(variant, rate, bits, d):
    v = values[(variant, rate, bits, d)]
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"
  # Best per column in bold, per noise block and direction; the test-query run is
  # its own row (a differing key) and wins its column, marked with a dagger.
  assert f"**{cell('full', 0.5, 16, 'i2t')}** (n=3)" in md
  assert f"**{cell('no_cscc', 0.5, 32, 't2i')}** (n=3)" in md
  assert f"| {cell('full', 0.5, 32, 't2i')} (n=3)" in md
  assert "**0.9900** (n=1) †" in md and "± " not in md.split("**0.9900**")[1].split("|")[0]
  assert "† selected on the TEST queries" in md
  assert "## Missing or failed runs" in md
  assert "- broken: failed: config.k=999: too many" in md
  assert "- killed: missing: no final results" in md
  assert "notes" not in md
  assert "## DCGMH on synthetic:tiny" in md and "| fused | full |" in md

  tex = open(os.path.join(out_dir, "table.tex")).read()
  assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex
  v = values[("no_cscc", 0.5, 32, "t2i")]
  assert rf"\textbf{{{np.mean(v):.4f}}}$\pm${np.std(v, ddof=1):.4f}" in tex
  assert r"\textbf{0.9900}$^\dagger$" in tex and r"\footnotesize $^\dagger$" in tex
  assert r"no\_cscc" in tex and r"I$\rightarrow$T" in tex

  pngs = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
  assert "map_vs_noise_scbch_synthetic_tiny_scbch_16bits_i2t.png" in pngs
  assert "map_vs_noise_dcgmh_synthetic_tiny_dcgmh_16bits_fused.png" in pngs
  assert "filter_vs_noise_dcgmh_synthetic_tiny_dcgmh_16bits.png" in pngs
  assert "cscc_auc_vs_noise_scbch_synthetic_tiny_scbch_32bits.png" in pngs
  assert all(open(os.path.join(out_dir, f), "rb").read(4) == b"\x89PNG" for f in pngs)

  # --out elsewhere, and a missing root as one error line.
  elsewhere = str(tmp_path / "elsewhere")
  report = report_lib.write_report(root, elsewhere)
  assert os.path.exists(os.path.join(elsewhere, "table.tex")) and len(report.runs) == 24 + 1 + 2
  bad = subprocess.run([sys.executable, "-m", "launch.report", str(tmp_path / "nope")],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no directory")
