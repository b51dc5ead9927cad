"""What each difference from the releases is worth (issue 13): paired runs.

For each method: release_compat off, each single quirk on, and all of them
(release_compat=True); SCBCH also with test-query selection alone
(`selection=test_queries, eval_every=1`, which splits eval_at_epoch_start
into its selection and its start-of-epoch timing), DCGMH also with the
project's earlier whole-batch augmented pass (`augment_whole_batch=True`, the
comparison for augment_unlabeled_only, which is the default here too). Seeds
0-4 (init, order and label noise; the same seeds in every setting, so the
effects are paired), on the synthetic `demo` data with the budget of
studies/demo_variants.py (50% scbch noise for SCBCH, τ = 0.4 dcgmh noise for
DCGMH, 32 bits).

  nhj-sweep --sweep=studies/release_compat.py --root=runs/release_compat --jobs=1
  nhj-report runs/release_compat --out=studies/release_compat_report
  python -m studies.release_compat runs/release_compat --out=studies/release_compat_report

The last command writes `paired.md` (the table of docs/release_compat.md): per setting, the
paired difference to `off` over seeds, mean ± standard error, in mAP points.
`--sweep=studies/release_compat.py:scbch` (or `:dcgmh`) runs one method's half.
"""

import argparse
import glob
import json
import os

import numpy as np

from configs import dcgmh, scbch
from studies.demo_variants import DCGMH, SCBCH

SEEDS = (0, 1, 2, 3, 4)
OFF = {"release_compat": False}
# (method, setting name, config overrides); "off" is every method's reference.
SETTINGS = (
    ("scbch", "off", OFF),
    ("scbch", "partial_last_batch", {"release_compat": "partial_last_batch"}),
    ("scbch", "eval_at_epoch_start", {"release_compat": "eval_at_epoch_start"}),
    ("scbch", "all (release_compat=True)", {"release_compat": True}),
    ("scbch", "selection=test_queries alone (eval_every=1)",
     {"selection": "test_queries", "eval_every": 1}),
    ("dcgmh", "off", OFF),
    ("dcgmh", "partial_last_batch", {"release_compat": "partial_last_batch"}),
    ("dcgmh", "eval_every_5", {"release_compat": "eval_every_5"}),
    ("dcgmh", "bn_eval_after_first_eval", {"release_compat": "bn_eval_after_first_eval"}),
    ("dcgmh", "augment_unlabeled_only", {"release_compat": "augment_unlabeled_only"}),
    ("dcgmh", "clean_label_reconstruction",
     {"release_compat": "clean_label_reconstruction"}),
    ("dcgmh", "bn_unbiased_running_var", {"release_compat": "bn_unbiased_running_var"}),
    ("dcgmh", "all (release_compat=True)", {"release_compat": True}),
    ("dcgmh", "augment_whole_batch=True (no quirk)", {"augment_whole_batch": True}),
)
MODULES = {"scbch": (scbch, SCBCH), "dcgmh": (dcgmh, DCGMH)}


def _config(method, overrides, seed):
  module, budget = MODULES[method]
  config = module.get_config("synthetic")
  config.update(budget)
  config.update(dict(overrides, bits=32, seed=seed, noise_seed=seed))
  return config


def get_sweep(arg=None):
  methods = set((arg or "scbch,dcgmh").split(",")) - {""}
  unknown = methods - set(MODULES)
  if unknown:
    raise ValueError(f"unknown sweep options {sorted(unknown)}: scbch, dcgmh")
  for method, _, overrides in SETTINGS:
    if method in methods:
      for seed in SEEDS:
        yield _config(method, overrides, seed)


def _setting_of(config):
  """The SETTINGS entry a run's config.json belongs to (its seed), or None."""
  for method, name, overrides in SETTINGS:
    if config.get("method") != method:
      continue
    want = _config(method, overrides, config.get("seed")).to_dict()
    want.pop("progress")  # the sweep turns it off
    if all(config.get(k) == (list(v) if isinstance(v, tuple) else v)
           for k, v in want.items()):
      return method, name
  return None


def paired(root):
  """{(method, setting): {direction: (mean, s.e., n)}} of the paired
  differences to `off`, in mAP points, over the seeds both have."""
  maps = {}
  for path in glob.glob(os.path.join(root, "*", "config.json")):
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    summary = os.path.join(os.path.dirname(path), "run_summary.json")
    found = _setting_of(config)
    if found is None or not os.path.exists(summary):
      continue
    with open(summary, encoding="utf-8") as f:
      maps[found + (config["seed"],)] = json.load(f)["maps"]
  out = {}
  for method, name, _ in SETTINGS:
    if name == "off":
      continue
    seeds = [s for s in SEEDS if (method, name, s) in maps and (method, "off", s) in maps]
    if not seeds:
      continue
    cell = {}
    for direction in maps[(method, "off", seeds[0])]:
      diff = 100 * np.array([maps[(method, name, s)][direction]
                             - maps[(method, "off", s)][direction] for s in seeds])
      se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
      cell[direction] = (float(diff.mean()), float(se), len(diff))
    out[(method, name)] = cell
  return out


def paired_markdown(root):
  lines = ["# Paired effects of the releases' behaviours",
           "",
           "Setting minus `off` (release_compat=False), same seeds, mAP points: mean ± "
           "standard error over seeds (n). Synthetic `demo`, 32 bits; "
           "studies/release_compat.py.", "",
           "| method | setting | direction | effect (points) | n |", "|---|---|---|---|---|"]
  for (method, name), cell in paired(root).items():
    for direction, (mean, se, n) in cell.items():
      lines.append(f"| {method.upper()} | {name} | {direction} | {mean:+.2f} ± {se:.2f} "
                   f"| {n} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("root", help="the sweep's --root")
  parser.add_argument("--out", help="write paired.md here (else print it)")
  args = parser.parse_args()
  text = paired_markdown(args.root)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "paired.md"), "w", encoding="utf-8") as f:
      f.write(text)
  print(text, end="")
