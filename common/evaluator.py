"""Evaluation data and protocol of a run, kept apart from the method.

A method only encodes: `method.encode(state, image, text)` returns ±1 codes per
modality, {"image": (N, K), "text": (N, K)} for cross-modal hashing or
{"fused": (N, K)} for multi-modal hashing. The evaluator owns the query and
database sets, turns codes into directions (i2t / t2i, or fused), scores them
and exports them in nhj-evaluate's .npz layouts.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from common import evaluation
from common import parallel
from common.data import Split

PyTree = Any


class RetrievalEvaluator:
  """Scores a method's codes on named (query, database) sets."""

  def __init__(self, eval_sets: Mapping[str, tuple[Split, Split]], *,
               empty_queries: str):
    """
    Args:
      eval_sets: {"test": (query, database)}, plus "val" when selecting on a
        validation split.
      empty_queries: mAP convention for queries without relevant items
        ("skip": SCBCH release, "zero": DCGMH release).
    """
    self.eval_sets = dict(eval_sets)
    self.empty_queries = empty_queries

  def _sets(self, split: str) -> tuple[Split, Split]:
    if split not in self.eval_sets:
      raise KeyError(f"no evaluation set {split!r} (have {sorted(self.eval_sets)})")
    return self.eval_sets[split]

  def codes(self, method, state: PyTree, split: str = "test"
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Split, Split]:
    """Codes of the query and database sets (every process gets all of them;
    each process encodes only its share of the rows)."""
    query, database = self._sets(split)
    return (encode_split(method, state, query), encode_split(method, state, database),
            query, database)

  def evaluate(self, method, state: PyTree, split: str = "test") -> tuple[dict, float]:
    """(results, selection score = the sum of the directions' mAPs).

    With several processes each scores its share of the query rows against
    the whole database and the per-query statistics are exchanged: every
    process returns the same results as one process would.
    """
    q, d, query, database = self.codes(method, state, split)
    share = ((parallel.process_rows, parallel.gather_process_rows)
             if jax.process_count() > 1 else None)
    if "fused" in q:
      results = evaluation.evaluate_multi_modal(
          q["fused"], d["fused"], query.labels, database.labels,
          empty_queries=self.empty_queries, query_share=share)
    else:
      results = evaluation.evaluate_cross_modal(
          q["image"], q["text"], d["image"], d["text"], query.labels,
          database.labels, empty_queries=self.empty_queries, query_share=share)
    score = sum(results[name]["map"] for name in evaluation.directions(results))
    return results, float(score)

  def export(self, method, state: PyTree, split: str = "test") -> dict[str, np.ndarray]:
    """Codes + labels in nhj-evaluate's .npz layout (cross-modal or single)."""
    q, d, query, database = self.codes(method, state, split)
    labels = {"query_labels": query.labels, "db_labels": database.labels}
    if "fused" in q:
      return {"query": q["fused"], "db": d["fused"], **labels}
    return {"image_query": q["image"], "text_query": q["text"],
            "image_db": d["image"], "text_db": d["text"], **labels}


def encode_split(method, state: PyTree, split: Split) -> dict[str, np.ndarray]:
  """method.encode over a split's rows, split over processes (each encodes its
  `parallel.process_rows` share, a batch at a time; the codes are exchanged)."""
  n = len(split)
  start, stop = parallel.process_rows(n)
  local = method.encode(state, split.image[start:stop], split.text[start:stop])
  return {k: parallel.gather_process_rows(v, n) for k, v in local.items()}
