"""Evaluation data and protocol of a run, kept apart from the method.

A method only encodes: `method.encode(state, image, text)` returns ±1 codes by
key, {"image": (N, K), "text": (N, K)} for cross-modal hashing or
{"fused": (N, K)} for multi-modal hashing. The evaluator owns the query and
database sets and the directions (the method spec's: i2t / t2i, or fused),
encodes a split once, scores those codes and exports the same codes in
nhj-evaluate's .npz layouts.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from common import evaluation
from common import parallel
from common.data import Split
from common.types import PyTree



class RetrievalEvaluator:
  """Scores a method's codes on named (query, database) sets."""

  def __init__(self, eval_sets: Mapping[str, tuple[Split, Split]], *,
               directions: Mapping[str, tuple[str, str]], empty_queries: str):
    """
    Args:
      eval_sets: {"test": (query, database)}, plus "val" when selecting on a
        validation split.
      directions: {name: (query code key, database code key)}, the method
        spec's (common.methods.MethodSpec.directions).
      empty_queries: mAP convention for queries without relevant items
        ("skip": SCBCH release, "zero": DCGMH release).
    """
    self.eval_sets = dict(eval_sets)
    self.directions = dict(directions)
    self.empty_queries = empty_queries

  def _sets(self, split: str) -> tuple[Split, Split]:
    if split not in self.eval_sets:
      raise KeyError(f"no evaluation set {split!r} (have {sorted(self.eval_sets)})")
    return self.eval_sets[split]

  def codes(self, method, state: PyTree, split: str = "test") -> SplitCodes:
    """Codes of the query and database sets (every process gets all of them;
    each process encodes only its share of the rows)."""
    query, database = self._sets(split)
    return SplitCodes(split, encode_split(method, state, query),
                      encode_split(method, state, database))

  def score(self, codes: SplitCodes) -> tuple[dict, float]:
    """(results, selection score = the sum of the directions' mAPs).

    With several processes each scores its share of the query rows against
    the whole database and the per-query statistics are exchanged: every
    process returns the same results as one process would.
    """
    query, database = self._sets(codes.split)
    share = ((parallel.process_rows, parallel.gather_process_rows)
             if jax.process_count() > 1 else None)
    results = evaluation.evaluate_directions(
        codes.query, codes.database, query.labels, database.labels, self.directions,
        empty_queries=self.empty_queries, query_share=share)
    score = sum(results[name]["map"] for name in self.directions)
    return results, float(score)

  def evaluate(self, method, state: PyTree, split: str = "test"
               ) -> tuple[dict, float, SplitCodes]:
    """Encodes `split` once and scores it: (results, score, codes)."""
    codes = self.codes(method, state, split)
    return (*self.score(codes), codes)

  def export(self, codes: SplitCodes) -> dict[str, np.ndarray]:
    """Codes + labels in nhj-evaluate's .npz layout: "query"/"db" for one code
    key (fused), else "<key>_query"/"<key>_db" per key (image, text)."""
    query, database = self._sets(codes.split)
    out = {"query_labels": query.labels, "db_labels": database.labels}
    keys = list(dict.fromkeys(k for pair in self.directions.values() for k in pair))
    for key in keys:
      prefix = "" if len(keys) == 1 else f"{key}_"
      out[f"{prefix}query"] = codes.query[key]
      out[f"{prefix}db"] = codes.database[key]
    return out


@dataclasses.dataclass(frozen=True)
class SplitCodes:
  """The codes of one evaluation split's query and database sets."""
  split: str
  query: Mapping[str, np.ndarray]
  database: Mapping[str, np.ndarray]


def encode_split(method, state: PyTree, split: Split) -> dict[str, np.ndarray]:
  """method.encode over a split's rows, split over processes (each encodes its
  `parallel.process_rows` share, a batch at a time; the codes are exchanged)."""
  n = len(split)
  start, stop = parallel.process_rows(n)
  local = method.encode(state, split.image[start:stop], split.text[start:stop])
  return {k: parallel.gather_process_rows(v, n) for k, v in local.items()}
