"""Tables and plots over a directory of runs (a sweep's root), aggregated over seeds.

`write_report(root, out)` reads every `<root>/*/config.json` with its
`<method>_final_results.json` (and the last `"kind": "epoch"` record of
`metrics.jsonl`, for the diagnostics), groups the runs by every config key
whose value differs except the seeds (method, variant, dataset, noise
protocol and rate, bits and the rest), and writes into `out`:

- `table.md` — one table per method and dataset: rows = variants, columns =
  code lengths, one block per noise rate and direction (I→T and T→I for
  SCBCH, fused for DCGMH); cells `mean ± std (n=…)` over seeds, sample std
  (ddof=1), `mean (n=1)` for a single run; the best mean of each column in
  bold; runs selected on the test queries marked † with a footnote; then the
  runs that are missing or failed;
- `table.csv` — one row per group and direction: the group's keys,
  direction, mean, std, n, seeds, test_queries, runs;
- `table.tex` — the same tables as LaTeX `tabular`s (booktabs);
- `diagnostics.csv` — per group: DCGMH filter precision/recall, SCBCH CSCC
  weight AUC against the corrupted items (last epoch), mean/std/n;
- PNGs: mAP vs noise rate (one line per variant, error bars over seeds), one
  figure per method × dataset × noise protocol × direction × bits; DCGMH filter
  precision/recall and SCBCH CSCC weight AUC vs noise rate.

Missing or failed runs are listed (table.md, the returned report), never fatal.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from common import methods
from common import run_config
from common import workdir as workdir_lib

# Keys that never split a group: the seeds (aggregated over) and how a run was driven.
AGGREGATED = ("seed", "noise_seed")
NOT_GROUPING = AGGREGATED + ("progress", "log_every", "keep", "parallel",
                             "checkpoint_every", "eval_batch_size", "data_dir",
                             "tfds_dir", "prefetch")
# Keys of every group (the table's axes), in this order; other differing keys follow.
AXES = ("method", "dataset", "variant", "noise_protocol", "noise_rate", "bits")
DIRECTION_NAMES = {"i2t": "I→T", "t2i": "T→I", "fused": "fused"}
DIRECTION_TEX = {"i2t": r"I$\rightarrow$T", "t2i": r"T$\rightarrow$I", "fused": "fused"}
DIRECTION_ORDER = ("i2t", "t2i", "fused")
TEST_QUERIES = "test_queries"
DAGGER_NOTE = ("selected on the TEST queries (`selection=test_queries`, the releases' "
               "protocol; optimistic)")


@dataclasses.dataclass
class Run:
  name: str
  config: dict                 # flat config, without "resolved"
  maps: dict                   # direction -> mAP
  selection: str
  diagnostics: dict            # name -> value (last epoch)


@dataclasses.dataclass
class Stat:
  mean: float
  std: float | None            # None for n = 1
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> "Stat":
    values = np.asarray(values, np.float64)
    return cls(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None,
               len(values))


@dataclasses.dataclass
class Group:
  key: dict                    # the grouping keys and their values
  runs: list                   # Run
  maps: dict                   # direction -> Stat
  diagnostics: dict            # name -> Stat
  test_queries: bool

  @property
  def method(self) -> str:
    return self.key["method"]

  @property
  def seeds(self) -> list:
    return [r.config.get("seed") for r in self.runs]


@dataclasses.dataclass
class Report:
  runs: list
  groups: list
  extra_keys: dict             # method -> differing keys beyond AXES
  problems: list               # "name: why" for missing / failed runs
  paths: dict = dataclasses.field(default_factory=dict)


# --- reading -------------------------------------------------------------------------


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _dotted(record: Mapping, key: str):
  value: Any = record
  for part in key.split("."):
    value = value.get(part) if isinstance(value, Mapping) else None
  return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _last_epoch_record(workdir: str) -> dict:
  path = os.path.join(workdir, "metrics.jsonl")
  last: dict = {}
  if not os.path.exists(path):
    return last
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut by a kill
      if isinstance(record, dict) and record.get("kind") == "epoch":
        last = record
  return last


def _failure(workdir: str) -> str | None:
  path = os.path.join(workdir, "FAILED")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or "failed"
  return None


def collect(root: str, *, skip: Sequence[str] = ()) -> tuple[list[Run], list[str]]:
  """The finished runs under root, and a line per run directory that has none."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no directory at {root!r}")
  skip = {os.path.abspath(p) for p in skip}
  runs, problems = [], []
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    if not os.path.isdir(workdir) or os.path.abspath(workdir) in skip:
      continue
    config_path = os.path.join(workdir, run_config.CONFIG_FILE)
    planned = os.path.join(workdir, "sweep_config.json")
    if not os.path.exists(config_path) and not os.path.exists(planned):
      continue  # not a run directory
    failure = _failure(workdir)
    try:
      if not os.path.exists(config_path):
        raise FileNotFoundError("not started")
      config = _read_json(config_path)
      config.pop("resolved", None)
      method = config["method"]
      results_path = os.path.join(workdir, f"{method}_final_results.json")
      if not os.path.exists(results_path):
        raise FileNotFoundError("no final results (unfinished)")
      results = _read_json(results_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
      problems.append(f"{name}: failed: {failure}" if failure
                      else f"{name}: missing: {e}")
      continue
    settings = results.get("settings", {})
    maps = {d: v["map"] for d, v in results.items()
            if d != "settings" and isinstance(v, Mapping)
            and isinstance(v.get("map"), (int, float))}
    if not maps:
      problems.append(f"{name}: missing: no mAP in {method}_final_results.json")
      continue
    record = _last_epoch_record(workdir)
    # The method's report columns: {name: dotted key of the "epoch" record}.
    columns = (methods.get_spec(method).report_columns
               if method in methods.REGISTRY else {})
    diagnostics = {label: _dotted(record, key) for label, key in columns.items()}
    runs.append(Run(name=name, config=run_config._flat(config),  # pylint: disable=protected-access
                    maps=maps, selection=str(settings.get("selection", config.get("selection"))),
                    diagnostics={k: v for k, v in diagnostics.items() if v is not None}))
  return runs, problems


# --- grouping ------------------------------------------------------------------------


def _canon(value) -> str:
  return json.dumps(value, sort_keys=True, default=str)


def extra_keys(runs: Sequence[Run]) -> dict[str, list[str]]:
  """Per method: keys beyond AXES whose values differ among its runs (seeds aside)."""
  out = {}
  for method in sorted({r.config["method"] for r in runs}):
    group = [r.config for r in runs if r.config["method"] == method]
    keys = set().union(*group) - set(AXES) - set(NOT_GROUPING)
    out[method] = sorted(k for k in keys if len({_canon(c.get(k)) for c in group}) > 1)
  return out


def _sort_value(value):
  if isinstance(value, bool) or value is None:
    return (1, str(value))
  if isinstance(value, (int, float)):
    return (0, value)
  return (1, _canon(value))


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], dict[str, list[str]]]:
  extras = extra_keys(runs)
  buckets: dict[str, list[Run]] = {}
  keys: dict[str, dict] = {}
  for run in runs:
    names = list(AXES) + extras[run.config["method"]]
    key = {k: run.config.get(k) for k in names}
    ident = _canon(key)
    buckets.setdefault(ident, []).append(run)
    keys[ident] = key
  groups = []
  for ident, members in buckets.items():
    members = sorted(members, key=lambda r: (_sort_value(r.config.get("seed")), r.name))
    directions = [d for d in DIRECTION_ORDER if any(d in r.maps for r in members)]
    directions += sorted({d for r in members for d in r.maps} - set(directions))
    maps = {d: Stat.of([r.maps[d] for r in members if d in r.maps]) for d in directions}
    diag_names = sorted({k for r in members for k in r.diagnostics})
    diagnostics = {k: Stat.of([r.diagnostics[k] for r in members if k in r.diagnostics])
                   for k in diag_names}
    groups.append(Group(key=keys[ident], runs=members, maps=maps, diagnostics=diagnostics,
                        test_queries=any(r.selection == TEST_QUERIES for r in members)))
  groups.sort(key=lambda g: [_sort_value(v) for v in g.key.values()])
  return groups, extras


# --- tables --------------------------------------------------------------------------


def _variant_rank(variant) -> tuple:
  return (0, "") if variant == "full" else (1, str(variant))


def _row_label(group: Group, extras: Sequence[str]) -> str:
  parts = [str(group.key["variant"])]
  parts += [f"{k}={_value_text(group.key[k])}" for k in extras]
  return ", ".join(parts)


def _value_text(value) -> str:
  if isinstance(value, (list, tuple)):
    return "x".join(_value_text(v) for v in value)
  return str(value)


@dataclasses.dataclass
class _Table:
  """One method on one dataset: blocks (noise) x directions x rows x bits."""
  method: str
  dataset: str
  directions: list
  bits: list
  blocks: list                 # [(noise_protocol, noise_rate)]
  rows: list                   # row labels, in order
  cells: dict                  # (block, direction, row, bits) -> Group
  best: dict                   # (block, direction, bits) -> best mean
  several_protocols: bool


def _tables(groups: Sequence[Group], extras: Mapping[str, list]) -> list[_Table]:
  tables = []
  by_table: dict[tuple, list[Group]] = {}
  for g in groups:
    by_table.setdefault((g.method, str(g.key["dataset"])), []).append(g)
  for (method, dataset), members in sorted(by_table.items()):
    directions = [d for d in DIRECTION_ORDER if any(d in g.maps for g in members)]
    directions += sorted({d for g in members for d in g.maps} - set(directions))
    bits = sorted({g.key["bits"] for g in members}, key=_sort_value)
    blocks = sorted({(str(g.key["noise_protocol"]), g.key["noise_rate"]) for g in members},
                    key=lambda b: (b[0], _sort_value(b[1])))
    ordered = sorted(members, key=lambda g: (_variant_rank(g.key["variant"]),
                                             [_sort_value(g.key[k]) for k in extras[method]]))
    rows = []
    cells = {}
    for g in ordered:
      label = _row_label(g, extras[method])
      if label not in rows:
        rows.append(label)
      block = (str(g.key["noise_protocol"]), g.key["noise_rate"])
      for d in g.maps:
        cells[(block, d, label, g.key["bits"])] = g
    best = {}
    for (block, d, _, b), g in cells.items():
      contenders = [c for (bl, dd, _, bb), c in cells.items() if (bl, dd, bb) == (block, d, b)]
      if len(contenders) > 1:
        best[(block, d, b)] = max(c.maps[d].mean for c in contenders)
    tables.append(_Table(method, dataset, directions, bits, blocks, rows, cells, best,
                         len({b[0] for b in blocks}) > 1))
  return tables


def _is_best(table: _Table, block, d, b, group: Group) -> bool:
  best = table.best.get((block, d, b))
  return best is not None and group.maps[d].mean >= best - 1e-12


def _cell_md(table, block, d, row, b) -> str:
  group = table.cells.get((block, d, row, b))
  if group is None:
    return "–"
  stat = group.maps[d]
  text = f"{stat.mean:.4f}" + (f" ± {stat.std:.4f}" if stat.std is not None else "")
  if _is_best(table, block, d, b, group):
    text = f"**{text}**"
  text += f" (n={stat.n})"
  return text + (" †" if group.test_queries else "")


def _block_title(table: _Table, block) -> str:
  protocol, rate = block
  return f"noise {protocol} {rate}"


def markdown(report: Report) -> str:
  tables = _tables(report.groups, report.extra_keys)
  lines = ["# Results", "",
           "mAP, mean ± sample standard deviation (ddof=1) over seeds; n = runs; "
           "best mean per column in bold.", ""]
  dagger = False
  for table in tables:
    lines += [f"## {table.method.upper()} on {table.dataset}", ""]
    for block in table.blocks:
      lines += [f"### {_block_title(table, block)}", ""]
      header = ["direction", "variant"] + [f"{b} bits" for b in table.bits]
      lines.append("| " + " | ".join(header) + " |")
      lines.append("|" + "---|" * len(header))
      for d in table.directions:
        for row in table.rows:
          if not any((block, d, row, b) in table.cells for b in table.bits):
            continue
          cells = [_cell_md(table, block, d, row, b) for b in table.bits]
          dagger |= any(c.endswith("†") for c in cells)
          lines.append("| " + " | ".join([DIRECTION_NAMES.get(d, d), row] + cells) + " |")
      lines.append("")
  if not tables:
    lines += ["No finished runs.", ""]
  if dagger:
    lines += [f"† {DAGGER_NOTE}.", ""]
  if report.problems:
    lines += ["## Missing or failed runs", ""]
    lines += [f"- {p}" for p in report.problems]
    lines.append("")
  return "\n".join(lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
                "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
  return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _cell_tex(table, block, d, row, b) -> str:
  group = table.cells.get((block, d, row, b))
  if group is None:
    return "--"
  stat = group.maps[d]
  mean = f"{stat.mean:.4f}"
  if _is_best(table, block, d, b, group):
    mean = rf"\textbf{{{mean}}}"
  text = mean + (rf"$\pm${stat.std:.4f}" if stat.std is not None else "")
  return text + (r"$^\dagger$" if group.test_queries else "")


def latex(report: Report) -> str:
  tables = _tables(report.groups, report.extra_keys)
  out = ["% Generated by nhj-report. Needs \\usepackage{booktabs}.",
         "% mAP, mean $\\pm$ sample std (ddof=1) over seeds; a single run has no "
         "$\\pm$ (n per cell: table.csv)."]
  for table in tables:
    several_directions = len(table.directions) > 1
    lead = ["Noise"] + (["Task"] if several_directions else []) + ["Method"]
    out += ["", f"% {table.method.upper()} on {table.dataset}",
            r"\begin{tabular}{" + "l" * len(lead) + "c" * len(table.bits) + "}",
            r"\toprule",
            " & ".join(lead + [f"{b} bits" for b in table.bits]) + r" \\",
            r"\midrule"]
    dagger = False
    first_block = True
    for block in table.blocks:
      if not first_block:
        out.append(r"\midrule")
      first_block = False
      noise = (f"{block[0]} {block[1]}" if table.several_protocols else f"{block[1]}")
      first_in_block = True
      for d in table.directions:
        first_in_direction = True
        for row in table.rows:
          if not any((block, d, row, b) in table.cells for b in table.bits):
            continue
          cells = [_cell_tex(table, block, d, row, b) for b in table.bits]
          dagger |= any(c.endswith(r"$^\dagger$") for c in cells)
          lead_cells = [_tex(noise) if first_in_block else ""]
          if several_directions:
            lead_cells.append(DIRECTION_TEX.get(d, _tex(d)) if first_in_direction else "")
          lead_cells.append(_tex(table.method.upper() + " " + row))
          out.append(" & ".join(lead_cells + cells) + r" \\")
          first_in_block = first_in_direction = False
    out.append(r"\bottomrule")
    if dagger:
      note = _tex(DAGGER_NOTE).replace(r"\`", "`")
      out.append(rf"\multicolumn{{{len(lead) + len(table.bits)}}}{{l}}"
                 rf"{{\footnotesize $^\dagger$ {note}}} \\")
    out.append(r"\end{tabular}")
  return "\n".join(out) + "\n"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  return buffer.getvalue()


def _csv_value(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "x".join(_csv_value(v) for v in value)
  return str(value)


def table_csv(report: Report) -> str:
  extra = sorted({k for keys in report.extra_keys.values() for k in keys})
  header = list(AXES) + extra + ["direction", "mean", "std", "n", "seeds",
                                 "test_queries", "runs"]
  rows = []
  for g in report.groups:
    for d, stat in g.maps.items():
      rows.append([_csv_value(g.key.get(k)) for k in AXES + tuple(extra)]
                  + [d, repr(stat.mean), _csv_value(stat.std), stat.n,
                     " ".join(_csv_value(s) for s in g.seeds), str(g.test_queries).lower(),
                     " ".join(r.name for r in g.runs)])
  return _csv_text(header, rows)


def diagnostics_csv(report: Report) -> str:
  extra = sorted({k for keys in report.extra_keys.values() for k in keys})
  header = list(AXES) + extra + ["diagnostic", "mean", "std", "n"]
  rows = []
  for g in report.groups:
    for name, stat in g.diagnostics.items():
      rows.append([_csv_value(g.key.get(k)) for k in AXES + tuple(extra)]
                  + [name, repr(stat.mean), _csv_value(stat.std), stat.n])
  return _csv_text(header, rows)


# --- plots ---------------------------------------------------------------------------


def _file_part(value) -> str:
  return re.sub(r"[^A-Za-z0-9._+=-]", "_", _value_text(value))


def _errorbar_plot(lines: Mapping[str, tuple], path: str, *, title: str, ylabel: str) -> str:
  """{label: (x, mean, std, linestyle)} -> a PNG with error bars."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5.5, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for label, (x, mean, std, style) in lines.items():
    ax.errorbar(x, mean, yerr=std, label=label, marker="o", markersize=4, capsize=3,
                linestyle=style)
  ax.set_xlabel("noise rate")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, format="png")
  return path


def _series(groups: Sequence[Group], extras: Sequence[str], value) -> dict:
  """{row label: (noise rates, means, stds)} for value(group) -> Stat | None."""
  points: dict[str, list] = {}
  for g in groups:
    stat = value(g)
    if stat is None:
      continue
    points.setdefault(_row_label(g, extras), []).append(
        (g.key["noise_rate"], stat.mean, stat.std or 0.0))
  return {label: tuple(np.asarray(v, np.float64) for v in zip(*sorted(p)))
          for label, p in points.items()}


def plots(report: Report, out: str) -> list[str]:
  paths = []
  figures: dict[tuple, list[Group]] = {}
  for g in report.groups:
    if isinstance(g.key["noise_rate"], (int, float)):
      figures.setdefault((g.method, str(g.key["dataset"]), str(g.key["noise_protocol"]),
                          g.key["bits"]), []).append(g)
  for (method, dataset, protocol, bits), members in sorted(
      figures.items(), key=lambda kv: [_sort_value(v) for v in kv[0]]):
    extras = report.extra_keys[method]
    members.sort(key=lambda g: (_variant_rank(g.key["variant"]),
                                [_sort_value(g.key[k]) for k in extras]))
    stem = "_".join(_file_part(v) for v in (method, dataset, protocol, f"{bits}bits"))
    where = f"{method.upper()} on {dataset}, {protocol} noise, {bits} bits"
    directions = [d for d in DIRECTION_ORDER if any(d in g.maps for g in members)]
    for d in directions:
      series = _series(members, extras, lambda g, d=d: g.maps.get(d))
      lines = {label: (*v, "-") for label, v in series.items()}
      path = os.path.join(out, f"map_vs_noise_{stem}_{_file_part(d)}.png")
      paths.append(_errorbar_plot(lines, path, ylabel=f"mAP ({DIRECTION_NAMES.get(d, d)})",
                                  title=f"{where}: mAP ({DIRECTION_NAMES.get(d, d)})"))
    for kind, names, ylabel in (
        ("filter", ("filter_precision", "filter_recall"), "noisy-label filter"),
        ("cscc_auc", ("cscc_weight_auc",), "CSCC weight AUC (corrupted vs clean)")):
      lines = {}
      for name, style in zip(names, ("-", "--")):
        series = _series(members, extras, lambda g, n=name: g.diagnostics.get(n))
        short = name.split("_")[-1] if len(names) > 1 else ""
        lines.update({(f"{label} {short}".strip()): (*v, style)
                      for label, v in series.items()})
      if lines:
        path = os.path.join(out, f"{kind}_vs_noise_{stem}.png")
        paths.append(_errorbar_plot(lines, path, ylabel=ylabel, title=f"{where}: {ylabel}"))
  return paths


# --- all of it -------------------------------------------------------------------------


def build_report(root: str, *, skip: Sequence[str] = ()) -> Report:
  runs, problems = collect(root, skip=skip)
  groups, extras = group_runs(runs)
  return Report(runs=runs, groups=groups, extra_keys=extras, problems=problems)


def write_report(root: str, out: str | None = None) -> Report:
  """Reads the runs under root, writes the tables and plots into out
  (default `<root>/report`); returns the Report with `paths` filled in."""
  out = out or os.path.join(root, "report")
  report = build_report(root, skip=[out])
  os.makedirs(out, exist_ok=True)
  files = {"table.md": markdown(report), "table.csv": table_csv(report),
           "table.tex": latex(report), "diagnostics.csv": diagnostics_csv(report)}
  for name, text in files.items():
    path = os.path.join(out, name)
    workdir_lib.atomic_write_text(path, text)
    report.paths[name] = path
  for path in plots(report, out):
    report.paths[os.path.basename(path)] = path
  return report


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """(mean, sample std or None for one value): the aggregation of every table."""
  stat = Stat.of(values)
  return stat.mean, stat.std

