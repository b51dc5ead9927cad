"""DCGMH's τ estimators on the real-data suite (issue 20, item 2c).

τ (the fraction of each batch the filter flags noisy) given (the injected
rate: the default `noise_ratio=None` when the run injected the noise) against
estimated (`noise_ratio='auto'`) with `noise_ratio_estimator='margin'` (the
default) or `'batch_ema'`: the paired effect on mAP, and each estimator's
last-epoch estimate against the true corrupted fraction (bias = estimate −
truth, mean ± s.e. over seeds). Yeast, digits, segment; τ = 0.2 and 0.4
injected; 32 bits; seeds 0-4; budget in studies/real_suite.py
(noise_ratio_max 0.5: estimates are capped there).

  python -m studies.real_noise_ratio     # runs/real_noise_ratio -> studies/real/
"""

import json
import os

import numpy as np

from studies import real_dcgmh_defaults, real_suite
from studies.real_suite import Setting

NAME = "real_noise_ratio"
SETTINGS = (
    Setting("dcgmh", "auto (margin)", {"noise_ratio": "auto"}),
    Setting("dcgmh", "auto (batch_ema)",
            {"noise_ratio": "auto", "noise_ratio_estimator": "batch_ema"}),
)
ALL_SETTINGS = (Setting("dcgmh", "τ given", {}),) + SETTINGS
REFERENCE = {"dcgmh": "τ given"}


def all_entries(arg=None):
  real_suite.parse_options(arg, ())
  return real_suite.entries(SETTINGS)


def get_sweep(arg=None):
  return [e.config for e in all_entries(arg)]


def last_estimate(workdir):
  last = None
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.get("kind") == "epoch":
        last = record
  flt = (last or {}).get("filter", {})
  return dict(tau_estimate=(last or {}).get("noise_ratio_estimate"),
              tau_true=(last or {}).get("noise_ratio_true"),
              filter_precision=flt.get("precision"), filter_recall=flt.get("recall"))


def estimate_table(rows):
  cells = {}
  for r in rows:
    if r.get("tau_estimate") is None or r["setting"] == "τ given":
      continue
    cells.setdefault((r["dataset"], r["rate"], r["setting"]), []).append(r)
  lines = ["", "## The estimates", "",
           "Last robust epoch's τ estimate against the true corrupted fraction of the "
           "training items (mean ± sd over seeds; bias mean ± s.e.); the filter's "
           "precision/recall of the corrupted items at that epoch (means).", "",
           "| set | noise | estimator | true τ | estimate | bias | filter precision | "
           "filter recall | n |", "|---|---|---|---|---|---|---|---|---|"]
  out = []
  for (dataset, rate, setting), group in sorted(
      cells.items(), key=lambda kv: (real_suite.SETS.index(kv[0][0]), kv[0][1], kv[0][2])):
    est = np.array([g["tau_estimate"] for g in group], float)
    true = np.array([g["tau_true"] for g in group], float)
    bias = est - true
    n = len(group)
    se = bias.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    sd = est.std(ddof=1) if n > 1 else float("nan")
    prec = np.mean([g["filter_precision"] for g in group])
    rec = np.mean([g["filter_recall"] for g in group])
    lines.append(f"| {dataset} | {rate} | {setting} | {true.mean():.3f} | {est.mean():.3f} ± "
                 f"{sd:.3f} | {bias.mean():+.3f} ± {se:.3f} | {prec:.2f} | {rec:.2f} | {n} |")
    out.append(dict(dataset=dataset, rate=rate, estimator=setting, tau_true=true.mean(),
                    estimate=est.mean(), estimate_sd=sd, bias=bias.mean(), bias_se=se,
                    filter_precision=prec, filter_recall=rec, n=n))
  given = {}
  for r in rows:
    if r["setting"] == "τ given" and r.get("filter_precision") is not None:
      given.setdefault((r["dataset"], r["rate"]), []).append(r)
  if given:
    lines += ["", "With τ given (the reference), the filter's precision / recall (means): "
              + "; ".join(f"{d} {rate}: {np.mean([g['filter_precision'] for g in grp]):.2f}"
                          f" / {np.mean([g['filter_recall'] for g in grp]):.2f}"
                          for (d, rate), grp in sorted(given.items()))]
  return "\n".join(lines) + "\n", out


def report(planned, root, out, defaults_root=os.path.join("runs", real_dcgmh_defaults.NAME)):
  rows = real_suite.load_results(planned, root, extra=last_estimate)
  rows += real_suite.borrowed_rows(real_dcgmh_defaults, defaults_root,
                                   {"default": "τ given"}, extra=last_estimate)
  text = real_suite.write_report(
      NAME, out, "DCGMH τ estimators on the real suite",
      real_suite.intro(__doc__) + "\n\nThe reference rows (`τ given`) are the `default` "
      "runs of studies/real_dcgmh_defaults.py (identical configs).", planned, rows, ALL_SETTINGS, REFERENCE)
  extra_text, extra_rows = estimate_table(rows)
  with open(os.path.join(out, NAME + ".md"), "a", encoding="utf-8") as f:
    f.write(extra_text)
  with open(os.path.join(out, NAME + "_estimates.csv"), "w", encoding="utf-8") as f:
    f.write(real_suite.to_csv(extra_rows))
  return text + extra_text


if __name__ == "__main__":
  real_suite.main(NAME, __doc__, all_entries, report)
