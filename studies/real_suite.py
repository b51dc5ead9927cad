"""Shared machinery of the studies on the real-data suite (issue 20, item 2).

A study is a list of settings per method (a name and config overrides), one
of which is the method's reference (`off`/`default`/`full`); every setting is
run on the real sets (`real:yeast`, `real:digits`, `real:segment`;
common.data.real), at two noise rates per method, 32 bits, seeds 0-4 (init,
data order and label noise: the same seeds in every setting, so the effects
are paired). The report gives, per set / noise rate / direction, the
reference's mAP (mean ± sd over seeds) and each setting minus the reference
(mean ± standard error of the paired difference, n seeds), and a pooled row
per setting over all cells (the mean of the cell means, s.e. =
sqrt(sum s.e.²) / cells).

Decision rule used for defaults: a setting is called better (worse) than the
reference when its pooled paired difference exceeds 2 s.e. in that direction
AND no cell is more than 2 s.e. the other way; anything else is "within
noise" and does not change a default.

Budget (a 2-core CPU; NOT the papers' training): 32-bit codes, widths 256;
DCGMH 10 epochs = 5 warm-up + 5 robust, batch 48, fused 256 (8·bits), no
learning-rate decay inside the run, the MIRFlickr loss weights (the
`synthetic` preset) — the budget of the held-out checks in
findings.md; SCBCH 40 epochs, batch 64, CSCC from epoch 5, the MIRFlickr
margin/shift. Noise: `dcgmh` four-way (DCGMH) or `scbch` one-pair flips
(SCBCH) on the multi-label yeast; on the one-hot sets (digits, segment) the
four-way protocol cannot change a label count, so both methods get `scbch`
flips there (symmetric class noise). τ is given to DCGMH (the injected rate)
except in the τ-estimator study.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from configs import dcgmh, scbch

SETS = ("yeast", "digits", "segment")
MULTI_LABEL = ("yeast",)
SEEDS = (0, 1, 2, 3, 4)
BITS = (32,)
RATES = {"dcgmh": (0.2, 0.4), "scbch": (0.2, 0.5)}
BUDGET = {
    # augment_whole_batch pinned to its value when the studies were run (the
    # default then), so that the tables keep naming what ran whatever the
    # default is now: `default` in the tables means this reference.
    "dcgmh": dict(epochs=10, warmup_epochs=5, batch_size=48, hidden=256, fused=256,
                  lr_decay_every=100, eval_every=0, augment_whole_batch=False),
    "scbch": dict(epochs=40, batch_size=64, image_hidden=(256, 256),
                  text_hidden=(256,), cscc_start_epoch=5, eval_every=0),
}
MODULES = {"dcgmh": dcgmh, "scbch": scbch}
DEFAULT_OUT = os.path.join("studies", "real")
CACHE = os.path.join("~", ".cache", "noisy_hashing_jax", "xla")


@dataclasses.dataclass(frozen=True)
class Setting:
  method: str
  name: str
  overrides: dict


@dataclasses.dataclass(frozen=True)
class Entry:
  """One run of a study: its setting and cell (set, rate, bits, seed)."""
  setting: Setting
  dataset: str
  rate: float
  bits: int
  seed: int
  config: object


def noise_protocol(method: str, dataset: str) -> str:
  if dataset in MULTI_LABEL:
    return method  # dcgmh four-way / scbch one-pair flips
  return "scbch"   # one-hot: a flip moves the item to another class


def make_config(method: str, dataset: str, rate: float, bits: int, seed: int,
                overrides: dict):
  config = MODULES[method].get_config("synthetic")
  config.update(BUDGET[method])
  config.update(dict(dataset=f"real:{dataset}",
                     noise_protocol=noise_protocol(method, dataset),
                     noise_rate=rate, bits=bits, seed=seed, noise_seed=seed,
                     progress=False))
  config.update(overrides)
  return config


def entries(settings: Sequence[Setting], *, methods: Iterable[str] | None = None,
            sets: Sequence[str] = SETS, seeds: Sequence[int] = SEEDS,
            bits_list: Sequence[int] = BITS,
            rates: dict | None = None) -> list[Entry]:
  """Seeds outermost: a sweep stopped early has every cell at k or k+1 seeds."""
  methods = set(methods or {s.method for s in settings})
  rates = rates or RATES
  out = []
  for seed in seeds:
    for bits in bits_list:
      for dataset in sets:
        for setting in settings:
          if setting.method not in methods:
            continue
          for rate in rates[setting.method]:
            out.append(Entry(setting, dataset, rate, bits, seed, make_config(
                setting.method, dataset, rate, bits, seed, setting.overrides)))
  return out


def parse_options(arg: str | None, allowed: Sequence[str]) -> set[str]:
  options = set((arg or "").split(",")) - {""}
  unknown = options - set(allowed)
  if unknown:
    raise ValueError(f"unknown sweep options {sorted(unknown)}: {', '.join(allowed)}")
  return options


# --- results -----------------------------------------------------------------------


def run_dirs(all_entries: Sequence[Entry], root: str) -> list[str]:
  """Each entry's run directory, named as common.sweep names it."""
  from common import sweep  # pylint: disable=g-import-not-at-top
  return [r.workdir for r in sweep.plan([e.config for e in all_entries], root, check=False)]


def load_results(all_entries: Sequence[Entry], root: str,
                 extra: Callable[[str], dict] | None = None) -> list[dict]:
  """One row per finished entry: its keys, maps (and `extra(workdir)`)."""
  rows = []
  for entry, workdir in zip(all_entries, run_dirs(all_entries, root)):
    path = os.path.join(workdir, "run_summary.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
    row = dict(method=entry.setting.method, setting=entry.setting.name,
               dataset=entry.dataset, rate=entry.rate, bits=entry.bits,
               seed=entry.seed, seconds=summary.get("seconds"),
               maps=summary["maps"])
    if extra is not None:
      row.update(extra(workdir))
    rows.append(row)
  return rows


def borrowed_rows(module, root: str, names: dict[str, str],
                  extra: Callable[[str], dict] | None = None) -> list[dict]:
  """Rows of another study's settings (identical configs), renamed: `names`
  maps that study's setting name to this table's. `root`: that study's runs
  (its run directories are named over its FULL entry list)."""
  planned = module.all_entries(None)
  rows = load_results(planned, root, extra=extra)
  return [dict(r, setting=names[r["setting"]]) for r in rows if r["setting"] in names]


def _cells(rows):
  """{(method, dataset, rate, bits, setting): {seed: maps}}"""
  cells: dict = {}
  for r in rows:
    key = (r["method"], r["dataset"], r["rate"], r["bits"], r["setting"])
    cells.setdefault(key, {})[r["seed"]] = r["maps"]
  return cells


def paired_table(rows: Sequence[dict], settings: Sequence[Setting],
                 reference: dict[str, str]) -> list[dict]:
  """Per (method, set, rate, bits, setting, direction): the reference's mean and
  sd, and the paired difference to it (points): mean, s.e., n."""
  cells = _cells(rows)
  out = []
  for (method, dataset, rate, bits, name), by_seed in sorted(
      cells.items(), key=lambda kv: (kv[0][0], SETS.index(kv[0][1]) if kv[0][1] in SETS
                                     else 99, kv[0][2], kv[0][3])):
    if name != reference.get(method):
      continue
    ref = by_seed
    for setting in settings:
      if setting.method != method:
        continue
      other = cells.get((method, dataset, rate, bits, setting.name), {})
      seeds = sorted(set(ref) & set(other))
      for direction in sorted(next(iter(ref.values()))):
        ref_maps = 100 * np.array([ref[s][direction] for s in sorted(ref)])
        row = dict(method=method, dataset=dataset, rate=rate, bits=bits,
                   setting=setting.name, direction=direction,
                   ref_mean=float(ref_maps.mean()),
                   ref_sd=float(ref_maps.std(ddof=1)) if len(ref_maps) > 1 else float("nan"),
                   n=len(seeds))
        if seeds:
          diff = 100 * np.array([other[s][direction] - ref[s][direction] for s in seeds])
          vals = 100 * np.array([other[s][direction] for s in seeds])
          row.update(mean=float(vals.mean()), diff=float(diff.mean()),
                     se=float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1
                     else float("nan"))
        out.append(row)
  return out


def pooled(table: Sequence[dict]) -> list[dict]:
  """Per (method, bits, setting, direction): over every cell with n >= 2, the
  mean of the cell differences, its s.e., the number of cells, the cells more
  than 2 s.e. above / below zero, and the verdict of the decision rule."""
  groups: dict = {}
  for row in table:
    if row.get("n", 0) < 2 or not np.isfinite(row.get("se", float("nan"))):
      continue
    key = (row["method"], row["bits"], row["setting"], row["direction"])
    groups.setdefault(key, []).append(row)
  out = []
  for (method, bits, setting, direction), group in groups.items():
    diffs = np.array([r["diff"] for r in group])
    ses = np.array([r["se"] for r in group])
    mean = float(diffs.mean())
    se = float(np.sqrt((ses ** 2).sum()) / len(group))
    up = int(sum(d > 2 * s and s > 0 for d, s in zip(diffs, ses)))
    down = int(sum(d < -2 * s and s > 0 for d, s in zip(diffs, ses)))
    if se == 0 and mean == 0:
      verdict = "identical"
    elif mean > 2 * se and down == 0:
      verdict = "better"
    elif mean < -2 * se and up == 0:
      verdict = "worse"
    else:
      verdict = "within noise"
    out.append(dict(method=method, bits=bits, setting=setting, direction=direction,
                    diff=mean, se=se, cells=len(group),
                    min_n=min(r["n"] for r in group), cells_up=up,
                    cells_down=down, verdict=verdict))
  return out


def _pm(mean, se):
  if mean is None or not np.isfinite(mean):
    return "—"
  return f"{mean:+.2f} ± {se:.2f}" if np.isfinite(se) else f"{mean:+.2f}"


def markdown(title: str, intro: str, table: Sequence[dict], pool: Sequence[dict],
             reference: dict[str, str], missing: Sequence[str] = ()) -> str:
  lines = [f"# {title}", "", intro.strip(), ""]
  lines += ["## Pooled over sets and noise rates", "",
            "Setting minus the reference, mAP points: mean of the per-cell paired "
            "differences ± its s.e.; cells up/down: cells more than 2 s.e. above / "
            "below zero; verdict: better/worse when |pooled| > 2 s.e. and no cell "
            "goes the other way.", "",
            "| method | bits | setting | direction | pooled effect | cells (min seeds) | "
            "cells up / down | verdict |", "|---|---|---|---|---|---|---|---|"]
  for p in pool:
    if p["setting"] == reference.get(p["method"]):
      continue
    lines.append(f"| {p['method'].upper()} | {p['bits']} | {p['setting']} | "
                 f"{p['direction']} | {_pm(p['diff'], p['se'])} | {p['cells']} "
                 f"({p['min_n']}) | {p['cells_up']} / {p['cells_down']} | "
                 f"{p['verdict']} |")
  lines += ["", "## Per set and noise rate", "",
            "Reference: mAP ×100, mean ± sd over seeds; setting: its mean and its "
            "paired difference to the reference (mean ± s.e., n seeds).", "",
            "| method | set | noise | bits | direction | reference | setting | mAP | "
            "paired effect | n |", "|---|---|---|---|---|---|---|---|---|---|"]
  for row in table:
    if row["setting"] == reference.get(row["method"]):
      continue
    mean = f"{row['mean']:.2f}" if "mean" in row else "—"
    lines.append(
        f"| {row['method'].upper()} | {row['dataset']} | {row['rate']} | {row['bits']} | "
        f"{row['direction']} | {reference[row['method']]}: {row['ref_mean']:.2f} ± "
        f"{row['ref_sd']:.2f} | {row['setting']} | {mean} | "
        f"{_pm(row.get('diff'), row.get('se', float('nan')))} | {row['n']} |")
  if missing:
    lines += ["", "## Missing", "", *[f"- {m}" for m in missing]]
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
  if not rows:
    return ""
  keys = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
                     for k, v in r.items()})
  return buf.getvalue()


def missing_cells(all_entries: Sequence[Entry], rows: Sequence[dict]) -> list[str]:
  """One line per setting with runs not (yet) finished: how many, and which."""
  done = {(r["method"], r["setting"], r["dataset"], r["rate"], r["bits"], r["seed"])
          for r in rows}
  gaps: dict = {}
  for e in all_entries:
    key = (e.setting.method, e.setting.name)
    if key + (e.dataset, e.rate, e.bits, e.seed) not in done:
      gaps.setdefault(key, []).append((e.dataset, e.rate, e.seed))
  total = {}
  for e in all_entries:
    key = (e.setting.method, e.setting.name)
    total[key] = total.get(key, 0) + 1
  lines = []
  for (method, name), missing in gaps.items():
    seeds = sorted({s for _, _, s in missing})
    cells = sorted({(d, r) for d, r, _ in missing})
    lines.append(f"{method.upper()} {name}: {len(missing)} of {total[(method, name)]} runs "
                 f"not finished (seeds {', '.join(map(str, seeds))}; "
                 f"{len(cells)} set/noise cells)")
  return lines


def intro(doc: str) -> str:
  """A study's docstring less its first line and its command lines, then the
  suite's decision rule and budget."""
  keep = []
  for paragraph in doc.split("\n\n")[1:]:
    if paragraph.lstrip().startswith(("python -m", "nhj-sweep", "or `nhj-sweep")):
      continue
    if any(line.startswith("  ") for line in paragraph.splitlines()[1:]):
      keep.append("```\n" + paragraph.strip("\n") + "\n```")  # an indented list
    else:
      keep.append(paragraph.strip())
  return "\n\n".join(keep + __doc__.split("\n\n")[2:4])


def against(rows: Sequence[dict], settings: Sequence[Setting], method: str,
            reference: str, title: str) -> tuple[str, list[dict]]:
  """A markdown section: `settings` paired against another reference (the
  same runs; e.g. a new default), pooled and per cell; and its pooled rows."""
  table = paired_table(rows, settings, {method: reference})
  pool = [p for p in pooled(table) if p["setting"] != reference]
  lines = ["", f"## {title}", "",
           f"Paired against `{reference}` (same seeds), mAP points.", "",
           "| method | setting | direction | pooled effect | cells (min seeds) | "
           "cells up / down | verdict |", "|---|---|---|---|---|---|---|"]
  for p in pool:
    lines.append(f"| {p['method'].upper()} | {p['setting']} | {p['direction']} | "
                 f"{_pm(p['diff'], p['se'])} | {p['cells']} ({p['min_n']}) | "
                 f"{p['cells_up']} / {p['cells_down']} | {p['verdict']} |")
  lines += ["", "| set | noise | setting | paired effect | n |", "|---|---|---|---|---|"]
  for row in table:
    if row["setting"] != reference and "diff" in row:
      lines.append(f"| {row['dataset']} | {row['rate']} | {row['setting']} | "
                   f"{_pm(row['diff'], row.get('se', float('nan')))} | {row['n']} |")
  return "\n".join(lines) + "\n", pool


def append_against(name: str, out: str, rows: Sequence[dict],
                   settings: Sequence[Setting], method: str, reference: str,
                   title: str) -> str:
  """`against(...)` appended to <out>/<name>.md, its pooled rows written to
  <out>/<name>_vs_new_default.csv; returns the markdown section."""
  extra, pool = against(rows, settings, method, reference, title)
  with open(os.path.join(out, name + ".md"), "a", encoding="utf-8") as f:
    f.write(extra)
  with open(os.path.join(out, name + "_vs_new_default.csv"), "w", encoding="utf-8") as f:
    f.write(to_csv(pool))
  return extra


def write_report(name: str, out: str, title: str, intro: str,
                 all_entries: Sequence[Entry], rows: Sequence[dict],
                 settings: Sequence[Setting], reference: dict[str, str]) -> str:
  table = paired_table(rows, settings, reference)
  pool = pooled(table)
  text = markdown(title, intro, table, pool, reference, missing_cells(all_entries, rows))
  os.makedirs(out, exist_ok=True)
  for suffix, content in ((".md", text), (".csv", to_csv(table)),
                          ("_pooled.csv", to_csv(pool)), ("_runs.csv", to_csv(rows))):
    with open(os.path.join(out, name + suffix), "w", encoding="utf-8") as f:
      f.write(content)
  return text


# --- one command per study -------------------------------------------------------------


def run_interleaved(studies, *, keep: Callable[[Entry], bool] = lambda e: True,
                    tier: Callable[[int, Entry], int] = lambda k, e: 0,
                    part: tuple[int, int] = (0, 1), print_fn=print) -> None:
  """Runs several studies' entries in this process, ordered by `tier(study
  index, entry)`, then seed-major (every study's seed 0, then every study's
  seed 1, ...), so that a stop leaves every study with k or k+1 seeds.

  `studies`: (entries, root) pairs; each study's run directories are named by
  common.sweep over its FULL entry list, so `nhj-sweep` on the same file finds
  the same runs. `keep` picks the entries to run (e.g. some seeds); `part=(i,
  n)` runs every n-th of the ordered runs from the i-th (n processes with
  i = 0..n-1 share the work without running any twice). Finished runs are
  skipped."""
  from common import sweep  # pylint: disable=g-import-not-at-top
  order = []
  for k, (planned, root) in enumerate(studies):
    runs = sweep.plan([e.config for e in planned], root)
    order += [(tier(k, e), e.seed, k, i, run)
              for i, (e, run) in enumerate(zip(planned, runs)) if keep(e)]
  order.sort(key=lambda t: t[:4])
  index, parts = part
  order = order[index::parts]
  todo = [run for *_, run in order if run.state != sweep.FINISHED]
  print_fn(f"{len(order)} runs, {len(order) - len(todo)} already finished")
  for run in todo:
    outcome = sweep._run_in_process(run)  # pylint: disable=protected-access
    print_fn(sweep.format_outcome(outcome))
    if outcome.status == "preempted":
      break


def enable_cache(path: str | None) -> None:
  if path:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def entry_filter(method: str | None, seeds: str | None) -> Callable[[Entry], bool]:
  wanted = None if not seeds else {int(x) for x in seeds.split(",") if x}
  return lambda e: (method in (None, e.setting.method)
                    and (wanted is None or e.seed in wanted))


def main(name: str, doc: str, all_entries: Callable[[str | None], list[Entry]],
         report: Callable[[list[Entry], str, str], str], argv=None) -> None:
  """`python -m studies.<name> [--root=runs/<name>] [--out=studies/real]
  [--only=METHOD] [--seeds=S,...] [--report_only]`: runs the study's runs in this process
  (resumable: finished runs are skipped; seed-major order), then writes its
  tables (`<out>/<name>.md`, `.csv`, `_pooled.csv`, `_runs.csv`)."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--root", default=os.path.join("runs", name))
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--only", default=None, help="one method: dcgmh or scbch")
  parser.add_argument("--seeds", default=None,
                      help="run only these seeds (e.g. 3,4: another process runs the rest)")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--compilation_cache_dir", default=CACHE)
  args = parser.parse_args(argv)
  planned = all_entries(None)
  if not args.report_only:
    enable_cache(args.compilation_cache_dir)
    keep = entry_filter(args.only, args.seeds)
    if not any(keep(e) for e in planned):
      raise SystemExit(f"--only={args.only} --seeds={args.seeds}: no runs in {name}")
    run_interleaved([(planned, args.root)], keep=keep,
                    print_fn=lambda line: print(line, flush=True))
  print(report(planned, args.root, args.out), end="")
