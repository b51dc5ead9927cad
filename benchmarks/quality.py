r"""Quality on the real suite: every method at a fixed small budget, one table.

  python benchmarks/quality.py                       # whole suite, 1 seed
  python benchmarks/quality.py --sets=digits --methods=dcgmh --seeds=0,1,2
  python benchmarks/quality.py --record              # also write RESULTS.md

Trains SCBCH and DCGMH, each with its defaults and with release_compat=True,
on the real data sets of common/data/real.py (pip install -e '.[real]') at
two noise rates, and prints mAP ×100 per set / method / noise beside the
baselines of common/baselines.py computed on the same split, bits and noisy
labels (random ±1 codes, the least-squares linear probe, the unsupervised
CCA / PCA codes) and the wall seconds of each run (experiment.run in this
process; the first run of a shape includes its compilation).

Noise: a multi-label set gets each method's own protocol (SCBCH: scbch,
DCGMH: dcgmh); a one-hot set gets protocol scbch for both (on one-hot labels
it moves the item to a uniformly drawn wrong class; the dcgmh protocol needs
items with several labels). DCGMH's tau is the injected rate (config default).

Budget (QUALITY_BUDGET; fixed, not tuned per set): 32 bits;
  SCBCH: 20 epochs, batch 128, image_hidden (512, 512), text_hidden (512,),
         the synthetic preset's m = 0.15, s = 0.8, other defaults;
  DCGMH: 20 epochs (5 warm-up), batch 48, hidden = fused = 512, the
         synthetic preset's lr 0.005, beta 0.15, eta 1.0, other defaults.
Each setting evaluates once, at the end (eval_every = 0 unless a
release_compat quirk sets it).

tests/test_quality_tripwire.py is the test-sized version (TRIPWIRE: digits,
one seed, TRIPWIRE_BUDGET) that fails when a method drops toward random codes
or far below TRIPWIRE_RECORDED (`--tripwire` reruns it and prints both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETS = ("yeast", "digits", "segment")
METHODS = ("scbch", "dcgmh")
RATES = (0.2, 0.5)
MODES = ("default", "release_compat")

QUALITY_BUDGET = {
    "scbch": dict(bits=32, epochs=20, batch_size=128, image_hidden=(512, 512),
                  text_hidden=(512,), eval_every=0),
    "dcgmh": dict(bits=32, epochs=20, warmup_epochs=5, batch_size=48, hidden=512,
                  fused=512, lr_decay_every=100, eval_every=0),
}


# The tripwire (tests/test_quality_tripwire.py): digits, noise scbch 0.2, seed 0,
# default mode, a budget of seconds; the values it recorded (`python
# benchmarks/quality.py --tripwire`, RESULTS.md "Quality on the real suite").
TRIPWIRE = dict(set="digits", rate=0.2, seed=0)
TRIPWIRE_BUDGET = {
    "scbch": dict(epochs=5, batch_size=32, image_hidden=(256, 256), text_hidden=(256,),
                  cscc_start_epoch=2),
    "dcgmh": dict(epochs=4, warmup_epochs=2, batch_size=48, hidden=256, fused=256),
}
TRIPWIRE_RECORDED = {"scbch": {"i2t": 0.4175, "t2i": 0.4342},
                     "dcgmh": {"fused": 0.7008}}


def protocol(method: str, multi_label: bool) -> str:
  return method if multi_label else "scbch"


def quality_config(method: str, dataset: str, *, rate: float, multi_label: bool,
                   seed: int = 0, release_compat: bool = False, **overrides):
  """The config of one quality run (configs/<method>.py's synthetic preset + budget)."""
  if method == "scbch":
    from configs import scbch as configs  # pylint: disable=g-import-not-at-top
  else:
    from configs import dcgmh as configs  # pylint: disable=g-import-not-at-top
  config = configs.get_config("synthetic")
  config.update(dict(QUALITY_BUDGET[method], dataset=dataset, progress=False,
                     noise_protocol=protocol(method, multi_label), noise_rate=rate,
                     noise_seed=seed, seed=seed, release_compat=release_compat))
  config.update(overrides)
  return config


def run_one(method, name, *, rate, seed, mode, workdir, **overrides) -> dict:
  """One run; {'maps', 'seconds', 'baselines'} (baselines: all three)."""
  from common import baselines  # pylint: disable=g-import-not-at-top
  from common import experiment  # pylint: disable=g-import-not-at-top
  from common import run_data  # pylint: disable=g-import-not-at-top
  from common.data import real  # pylint: disable=g-import-not-at-top
  splits = real.real_splits(name)
  multi = bool((splits.train.labels.sum(1) > 1).any())
  config = quality_config(method, f"real:{name}", rate=rate, multi_label=multi, seed=seed,
                          release_compat=mode == "release_compat", **overrides)
  start = time.perf_counter()
  results = experiment.run(config, workdir, log=lambda _: None)
  seconds = time.perf_counter() - start
  data = run_data.load_run_data(config)
  fused = method == "dcgmh"
  base = baselines.baseline_maps(data.splits, data.train_labels, bits=config.bits,
                                 fused=fused, seed=config.seed,
                                 empty_queries="zero" if fused else "skip")
  maps = {d: results[d]["map"] for d in (("fused",) if fused else ("i2t", "t2i"))}
  return {"maps": maps, "seconds": seconds, "baselines": base,
          "protocol": config.noise_protocol}


def tripwire_run(method: str, workdir: str) -> dict:
  """The tripwire's run of one method (run_one at TRIPWIRE_BUDGET)."""
  return run_one(method, TRIPWIRE["set"], rate=TRIPWIRE["rate"], seed=TRIPWIRE["seed"],
                 mode="default", workdir=workdir, **TRIPWIRE_BUDGET[method])


def _fmt(maps: dict) -> str:
  return "/".join(f"{100 * v:.2f}" for v in maps.values())


def table(rows: list[dict]) -> str:
  """One markdown table: a row per set / method / noise."""
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  header = ["set", "method (dirs)", "noise", "default", "release_compat", "random codes",
            "linear probe", "unsupervised", "seconds (default / compat)"]
  out = []
  keys = sorted({(r["set"], r["method"], r["rate"]) for r in rows},
                key=lambda k: (SETS.index(k[0]), METHODS.index(k[1]), k[2]))
  for key in keys:
    cell = {r["mode"]: r for r in rows if (r["set"], r["method"], r["rate"]) == key}
    any_run = next(iter(cell.values()))
    dirs = "/".join(any_run["maps"][0])

    def mean_maps(mode):
      runs = cell.get(mode, {}).get("runs_maps")
      if not runs:
        return "–"
      avg = {d: sum(m[d] for m in runs) / len(runs) for d in runs[0]}
      spread = ""
      if len(runs) > 1:
        import numpy as np  # pylint: disable=g-import-not-at-top
        per = [np.mean(list(m.values())) for m in runs]
        spread = f" ± {100 * np.std(per, ddof=1) / np.sqrt(len(per)):.2f}"
      return _fmt(avg) + spread

    base = any_run["baselines"][0]
    secs = " / ".join(f"{cell[m]['seconds']:.0f}" if m in cell else "–" for m in MODES)
    out.append([key[0], f"{key[1]} ({dirs})", f"{any_run['protocol']} {key[2]}",
                mean_maps("default"), mean_maps("release_compat"),
                _fmt(base["random_codes"]), _fmt(base["linear_probe"]),
                _fmt(base["unsupervised"]), secs])
  return bench_util.markdown_table(header, out)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sets", default=",".join(SETS))
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--rates", default=",".join(map(str, RATES)))
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--json", default=None, help="also write the raw runs here")
  parser.add_argument("--record", action="store_true",
                      help="write the table to benchmarks/RESULTS.md")
  parser.add_argument("--tripwire", action="store_true",
                      help="only the tripwire's runs, against TRIPWIRE_RECORDED")
  args = parser.parse_args(argv)
  if args.tripwire:
    with tempfile.TemporaryDirectory() as tmp:
      for method in METHODS:
        r = tripwire_run(method, os.path.join(tmp, method))
        print(f"tripwire {method}: {_fmt(r['maps'])} (recorded "
              f"{_fmt(TRIPWIRE_RECORDED[method])}; random "
              f"{_fmt(r['baselines']['random_codes'])}; {r['seconds']:.1f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
    return
  sets, methods = args.sets.split(","), args.methods.split(",")
  modes = args.modes.split(",")
  rates = [float(r) for r in args.rates.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  for value, allowed, flag in ((sets, SETS, "--sets"), (methods, METHODS, "--methods"),
                               (modes, MODES, "--modes")):
    bad = [v for v in value if v not in allowed]
    if bad:
      raise SystemExit(f"error: {flag}: {bad} not in {allowed}")
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  started = time.time()
  loads = []
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in sets:
      for method in methods:
        for rate in rates:
          for mode in modes:
            runs = []
            for seed in seeds:
              workdir = os.path.join(tmp, f"{name}_{method}_{rate}_{mode}_{seed}")
              runs.append(run_one(method, name, rate=rate, seed=seed, mode=mode,
                                  workdir=workdir))
              loads.append(os.getloadavg()[0])
              print(f"{name} {method} {rate} {mode} seed {seed}: {_fmt(runs[-1]['maps'])} "
                    f"({runs[-1]['seconds']:.0f} s)", flush=True)
            rows.append({"set": name, "method": method, "rate": rate, "mode": mode,
                         "protocol": runs[0]["protocol"],
                         "maps": [r["maps"] for r in runs],
                         "runs_maps": [r["maps"] for r in runs],
                         "seconds": sum(r["seconds"] for r in runs) / len(runs),
                         "baselines": [r["baselines"] for r in runs]})
  if args.json:  # before the table: the runs are kept even if formatting fails
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  text = table(rows)
  note = (f"{bench_util.machine()}; {bench_util.today()}; seeds {seeds}; "
          f"1-minute load {min(loads):.1f}-{max(loads):.1f}; "
          f"{(time.time() - started) / 60:.0f} min in all. mAP x100 (SCBCH i2t/t2i, "
          "DCGMH fused), last epoch, mean over seeds ± s.e. (of the directions' mean); "
          "baselines on the first seed's noisy labels.")
  print(text)
  print(note)
  if args.record:
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    bench_util.record("Quality on the real suite (benchmarks/quality.py)",
                      f"`{command.strip()}` — {note}\n\n{text}\n")


if __name__ == "__main__":
  main()
