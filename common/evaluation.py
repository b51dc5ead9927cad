"""Retrieval evaluation of learned codes: result dicts, JSON/PNG output, table.

A result dict is {"settings": {...}, <direction>: {...}, ...}; directions are
"i2t" and "t2i" (cross-modal) or "fused" (multi-modal). Each direction holds
the single-pass output of `metrics.retrieval_metrics` minus the per-query AP
vector (kept out of the JSON to keep it small; its length and the number of
queries counted are recorded instead).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from common import baselines
from common import metrics
from common import plots

DEFAULT_PRECISION_NS = tuple(range(100, 1001, 100))
_SETTINGS = "settings"


def _settings(ties: str, empty_queries: str, topk: int | None,
              precision_ns: Sequence[int], num_points: int) -> dict:
  """The evaluation settings, recorded by name in every result dict."""
  return {"ties": ties, "empty_queries": empty_queries, "topk": topk,
          "precision_ns": [int(n) for n in precision_ns],
          "num_points": int(num_points)}


def evaluate_direction(query_codes, db_codes, query_labels, db_labels, *,
                       ties: str = "index", empty_queries: str = "skip",
                       topk: int | None = None,
                       precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
                       num_points: int = 15,
                       query_share: metrics.QueryShare | None = None) -> dict:
  """Metrics of one query set against one database (one pass; query_share
  splits it over processes, see metrics.retrieval_metrics).

  Returns:
    {"map", "num_queries", "num_database", "num_queries_counted",
     "precision_at", "pr_by_radius", "topn_curve"} (see
    metrics.retrieval_metrics for the conventions).
  """
  result = metrics.retrieval_metrics(
      query_codes, db_codes, query_labels, db_labels, ties=ties,
      empty_queries=empty_queries, topk=topk, precision_ns=precision_ns,
      num_points=num_points, query_share=query_share)
  if not math.isfinite(result["map"]):
    # empty_queries="skip" with no query that has a relevant item: every AP is
    # undefined. Refused rather than reported as mAP nan.
    raise ValueError(
        f"no query has a relevant database item ({result['num_queries_counted']} of "
        f"{int(result['ap'].size)} queries counted; "
        f"{int(np.sum(~np.asarray(db_labels).any(axis=1)))} of {int(np.shape(db_labels)[0])} "
        "database items have no label), so mAP is undefined")
  return {
      "map": result["map"],
      "num_queries": int(result["ap"].size),
      "num_database": int(np.shape(db_codes)[0]),
      "num_queries_counted": result["num_queries_counted"],
      "precision_at": result["precision_at"],
      "pr_by_radius": result["pr_by_radius"],
      "topn_curve": result["topn_curve"],
  }


def evaluate_directions(query_codes: Mapping[str, np.ndarray],
                        db_codes: Mapping[str, np.ndarray], query_labels, db_labels,
                        directions: Mapping[str, tuple[str, str]], *,
                        ties: str = "index", empty_queries: str = "skip",
                        topk: int | None = None,
                        precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
                        num_points: int = 15,
                        query_share: metrics.QueryShare | None = None) -> dict:
  """Results of each named direction: {name: (query code key, database code key)}.

  With several directions, every direction's inputs are checked before any
  is computed (errors name the code arrays "<key>_query" / "<key>_db"); one
  direction is checked as it is computed (errors name "query_codes" / ...).

  Returns:
    {"settings": {...}, name: {...} for each direction, in order}.
  """
  for name, (q, d) in directions.items():
    if not name or name in (_SETTINGS, baselines.RESULTS_KEY):
      raise ValueError(f"direction must be a non-empty name other than "
                       f"{_SETTINGS!r}; got {name!r}.")
    if len(directions) > 1:
      metrics.check_inputs(query_codes[q], db_codes[d], query_labels, db_labels,
                           names=(f"{q}_query", f"{d}_db", "query_labels",
                                  "db_labels"))
  kwargs = dict(ties=ties, empty_queries=empty_queries, topk=topk,
                precision_ns=precision_ns, num_points=num_points,
                query_share=query_share)
  return {_SETTINGS: _settings(ties, empty_queries, topk, precision_ns, num_points),
          **{name: evaluate_direction(query_codes[q], db_codes[d], query_labels,
                                      db_labels, **kwargs)
             for name, (q, d) in directions.items()}}


def evaluate_cross_modal(image_query, text_query, image_db, text_db,
                         query_labels, db_labels, *, ties: str = "index",
                         empty_queries: str = "skip",
                         topk: int | None = None,
                         precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
                         num_points: int = 15,
                         query_share: metrics.QueryShare | None = None) -> dict:
  """I->T (image queries vs text database) and T->I results.

  The default empty_queries="skip" is the SCBCH release's convention.

  Returns:
    {"settings": {...}, "i2t": {...}, "t2i": {...}}.
  """
  _same_rows("image_query", image_query, "text_query", text_query)
  _same_rows("image_db", image_db, "text_db", text_db)
  return evaluate_directions(
      {"image": image_query, "text": text_query}, {"image": image_db, "text": text_db},
      query_labels, db_labels, {"i2t": ("image", "text"), "t2i": ("text", "image")},
      ties=ties, empty_queries=empty_queries, topk=topk, precision_ns=precision_ns,
      num_points=num_points, query_share=query_share)


def evaluate_multi_modal(query_codes, db_codes, query_labels, db_labels, *,
                         ties: str = "index", empty_queries: str = "zero",
                         topk: int | None = None,
                         precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
                         num_points: int = 15,
                         direction: str = "fused",
                         query_share: metrics.QueryShare | None = None) -> dict:
  """Fused multi-modal codes, one direction (named `direction`).

  The default empty_queries="zero" is the DCGMH release's convention.

  Returns:
    {"settings": {...}, direction: {...}}.
  """
  return evaluate_directions(
      {"": query_codes}, {"": db_codes}, query_labels, db_labels, {direction: ("", "")},
      ties=ties, empty_queries=empty_queries, topk=topk, precision_ns=precision_ns,
      num_points=num_points, query_share=query_share)


def _same_rows(name_a: str, a, name_b: str, b) -> None:
  if np.ndim(a) != 2 or np.ndim(b) != 2:
    raise ValueError(f"{name_a} and {name_b} must be 2-D code matrices.")
  if np.shape(a)[0] != np.shape(b)[0]:
    raise ValueError(
        f"{name_a} has {np.shape(a)[0]} rows but {name_b} has "
        f"{np.shape(b)[0]}; both modalities describe the same items.")


def directions(results: Mapping) -> list[str]:
  """The direction names of a result dict, in insertion order (not its
  settings, nor the reference rows of common.baselines)."""
  return [name for name in results
          if name not in (_SETTINGS, baselines.RESULTS_KEY)]


def to_jsonable(value):
  """Converts numpy arrays/scalars to lists/numbers; NaN/inf become None."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist())  # 0-d arrays give a scalar
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_results(results: Mapping, out_dir: str, *, prefix: str
                  ) -> dict[str, str]:
  """Writes <prefix>_results.json and three PNG plots into out_dir.

  Plots: PR curve by Hamming radius, the top-N PR curve and P@N, one line per
  direction. NaN values are written as JSON null.

  Returns:
    {"json", "pr_radius", "topn_pr", "precision_at_n"} -> file path.
  """
  if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
    raise ValueError(
        f"prefix must be a plain file-name prefix; got {prefix!r}.")
  names = directions(results)
  if not names:
    raise ValueError("results holds no direction to write.")
  os.makedirs(out_dir, exist_ok=True)
  paths = {
      "json": os.path.join(out_dir, f"{prefix}_results.json"),
      "pr_radius": os.path.join(out_dir, f"{prefix}_pr_radius.png"),
      "topn_pr": os.path.join(out_dir, f"{prefix}_topn_pr.png"),
      "precision_at_n": os.path.join(out_dir, f"{prefix}_precision_at_n.png"),
  }
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump(to_jsonable(results), f, indent=2, allow_nan=False)
  curves = {name: results[name] for name in names}
  # A run that reproduces a release's quirks names them in every plot title.
  note = plots.release_compat_note(results.get(_SETTINGS, {}).get("release_compat"))
  plots.plot_pr_by_radius(curves, paths["pr_radius"], note=note)
  plots.plot_topn_pr(curves, paths["topn_pr"], note=note)
  plots.plot_precision_at_n(curves, paths["precision_at_n"], note=note)
  return paths


def format_table(results: Mapping) -> str:
  """A small text table: direction, mAP and P@N at the first and last N."""
  names = directions(results)
  if not names:
    raise ValueError("results holds no direction to format.")
  ns = list(results[names[0]]["precision_at"]["n"])
  shown = sorted({0, len(ns) - 1})
  header = ["direction", "mAP"] + [f"P@{ns[i]}" for i in shown]
  rows = []
  for name in names:
    entry = results[name]
    values = [entry["map"]] + [entry["precision_at"]["precision"][i]
                               for i in shown]
    rows.append([name] + [_fmt(v) for v in values])
  widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths))
           for r in [header] + rows]
  settings = results.get(_SETTINGS, {})
  if settings:
    lines.append(", ".join(f"{k}={settings[k]}" for k in
                           ("ties", "empty_queries", "topk") if k in settings))
    if settings.get("release_compat"):  # the release quirks this run reproduced
      lines.append(plots.release_compat_note(settings["release_compat"]))
  if baselines.RESULTS_KEY in results:  # computed by the run on the same split
    lines.append(baselines.format_table(results[baselines.RESULTS_KEY]))
  return "\n".join(lines)


def _fmt(value) -> str:
  value = float(value)
  return "nan" if math.isnan(value) else f"{value:.4f}"
