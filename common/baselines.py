"""Reference rows beside every mAP table: what the labels and a method are worth.

Three baselines of a data split, each scored with the project's evaluator
(common.metrics, the run's `empty_queries` convention, ties by database
index) in the directions of the method: i2t / t2i (SCBCH, cross-modal) or
fused (DCGMH, multi-modal). K = the run's bits. No hash net is trained.

random_codes   i.i.d. uniform ±1 codes, K bits, one independent draw per code
               matrix (image query, text database, ...), numpy PCG64([seed, 0]).
               What a method that learned nothing scores.
linear_probe   ridge least squares from the features to the TRAINING labels the
               method sees (the noisy ones), then sign of a shared random
               projection to K bits:
                 x -> z = (x - mean) / std   (training split statistics; std 0 -> 1)
                 W = argmin ||[Z 1] W - (2Y - 1)||^2 + ridge ||W without bias row||^2
                 code(x) = sign([z 1] W R),  R (C x K) i.i.d. N(0, 1) from
                 PCG64([seed, 1]), sign(0) = +1.
               One W per view (image, text) for i2t / t2i, sharing R so the two
               views land in one code space; for fused, one W on the
               concatenated standardized views. A linear model of the labels:
               a method that does not beat it uses its network poorly.
unsupervised   labels ignored: cross-modal: CCA between the standardized image
               and text training features (covariances regularised by
               `cca_reg`·I), code = sign of the projection on the top k
               canonical pairs; fused: PCA of the concatenated standardized
               training features, code = sign of the top k components. k =
               min(K, the smaller view's dimension) — fewer bits than K on
               low-dimensional data (recorded as `unsupervised_bits`).
               Neither SCBCH nor DCGMH has a label-free variant (every
               objective has a label term), so this linear one stands in.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from common import metrics
from common.data.splits import Splits

BASELINES = ("random_codes", "linear_probe", "unsupervised")
# What every run computes beside its table (the unsupervised codes cost two more
# mAP passes and a CCA; the quality benchmark and the studies add them).
RUN_BASELINES = ("random_codes", "linear_probe")
RESULTS_KEY = "baselines"  # where a run's results dict (and JSON) holds them
LABELS = {"random_codes": "random ±1 codes",
          "linear_probe": "least-squares linear probe",
          "unsupervised": "unsupervised linear (CCA / PCA, no labels)"}
DEFAULT_RIDGE = 1.0
DEFAULT_CCA_REG = 1e-3


def _sign(x: np.ndarray) -> np.ndarray:
  return np.where(x >= 0, 1, -1).astype(np.int8)


def _standardizer(x_train: np.ndarray):
  x_train = np.asarray(x_train, np.float64)
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return lambda x: (np.asarray(x, np.float64) - mean) / std


def random_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
  """(n, bits) i.i.d. uniform ±1 codes."""
  return np.where(rng.random((n, bits)) < 0.5, -1, 1).astype(np.int8)


def ridge_fit(z_train: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
  """W ((d+1) x C) of min ||[Z 1] W - T||^2 + ridge ||W[:d]||^2 (bias row free).

  ridge > 0 and centred Z make the normal equations positive definite.
  """
  if not ridge > 0:
    raise ValueError(f"ridge={ridge} must be > 0")
  a = np.c_[z_train, np.ones(len(z_train))]
  penalty = np.full(a.shape[1], float(ridge))
  penalty[-1] = 0.0
  gram = a.T @ a + np.diag(penalty)
  return np.linalg.solve(gram, a.T @ np.asarray(targets, np.float64))


def _probe(x_train, labels, ridge):
  scale = _standardizer(x_train)
  w = ridge_fit(scale(x_train), 2.0 * np.asarray(labels, np.float64) - 1.0, ridge)
  return lambda x: np.c_[scale(x), np.ones(len(x))] @ w


def cca_directions(z_image: np.ndarray, z_text: np.ndarray, k: int, reg: float
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(A, B): the top-k canonical directions of centred features (columns)."""
  n = len(z_image)
  z_image = z_image - z_image.mean(axis=0)
  z_text = z_text - z_text.mean(axis=0)

  def inv_sqrt(c):
    vals, vecs = np.linalg.eigh(c)
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T

  wx = inv_sqrt(z_image.T @ z_image / n + reg * np.eye(z_image.shape[1]))
  wy = inv_sqrt(z_text.T @ z_text / n + reg * np.eye(z_text.shape[1]))
  u, _, vt = np.linalg.svd(wx @ (z_image.T @ z_text / n) @ wy)
  return wx @ u[:, :k], wy @ vt[:k].T


def pca_directions(z: np.ndarray, k: int) -> np.ndarray:
  """The top-k principal directions (columns) of centred features."""
  z = z - z.mean(axis=0)
  vals, vecs = np.linalg.eigh(z.T @ z)
  return vecs[:, np.argsort(vals)[::-1][:k]]


def baseline_codes(splits: Splits, train_labels: np.ndarray, *, bits: int,
                   fused: bool, seed: int = 0, ridge: float = DEFAULT_RIDGE,
                   cca_reg: float = DEFAULT_CCA_REG,
                   names: tuple[str, ...] = BASELINES) -> dict[str, dict[str, np.ndarray]]:
  """{baseline: {"query"/"db" (fused) or "image_query", "text_query",
  "image_db", "text_db": ±1 codes}} for the query and database splits, for
  the baselines in `names`."""
  if not isinstance(bits, int) or bits < 1:
    raise ValueError(f"bits={bits!r} must be a positive integer")
  unknown = [n for n in names if n not in BASELINES]
  if unknown or not names:
    raise ValueError(f"names={names!r}: expected a non-empty subset of {BASELINES}")
  train, query, db = splits.train, splits.query, splits.database
  if len(train_labels) != len(train):
    raise ValueError(f"train_labels has {len(train_labels)} rows, the training "
                     f"split {len(train)}")
  rng_random = np.random.Generator(np.random.PCG64([seed, 0]))
  proj = np.random.Generator(np.random.PCG64([seed, 1])).standard_normal(
      (train_labels.shape[1], bits))
  out: dict[str, dict[str, np.ndarray]] = {}
  if fused:
    cat = lambda s: np.c_[np.asarray(s.image, np.float64), np.asarray(s.text, np.float64)]
    out["random_codes"] = {"query": random_codes(len(query), bits, rng_random),
                           "db": random_codes(len(db), bits, rng_random)}
    score = _probe(cat(train), train_labels, ridge)
    out["linear_probe"] = {"query": _sign(score(cat(query)) @ proj),
                           "db": _sign(score(cat(db)) @ proj)}
    if "unsupervised" not in names:
      return {n: out[n] for n in names}
    scale = _standardizer(cat(train))
    z_train = scale(cat(train))
    k = min(bits, z_train.shape[1])
    mean, p = z_train.mean(axis=0), pca_directions(z_train, k)
    out["unsupervised"] = {"query": _sign((scale(cat(query)) - mean) @ p),
                           "db": _sign((scale(cat(db)) - mean) @ p)}
    return {n: out[n] for n in names}
  out["random_codes"] = {
      name: random_codes(len(split), bits, rng_random)
      for name, split in (("image_query", query), ("text_query", query),
                          ("image_db", db), ("text_db", db))}
  score_image = _probe(train.image, train_labels, ridge)
  score_text = _probe(train.text, train_labels, ridge)
  out["linear_probe"] = {
      "image_query": _sign(score_image(query.image) @ proj),
      "text_query": _sign(score_text(query.text) @ proj),
      "image_db": _sign(score_image(db.image) @ proj),
      "text_db": _sign(score_text(db.text) @ proj)}
  if "unsupervised" not in names:
    return {n: out[n] for n in names}
  scale_image, scale_text = _standardizer(train.image), _standardizer(train.text)
  zi, zt = scale_image(train.image), scale_text(train.text)
  k = min(bits, zi.shape[1], zt.shape[1])
  a, b = cca_directions(zi, zt, k, cca_reg)
  mi, mt = zi.mean(axis=0), zt.mean(axis=0)
  out["unsupervised"] = {
      "image_query": _sign((scale_image(query.image) - mi) @ a),
      "text_query": _sign((scale_text(query.text) - mt) @ b),
      "image_db": _sign((scale_image(db.image) - mi) @ a),
      "text_db": _sign((scale_text(db.text) - mt) @ b)}
  return {n: out[n] for n in names}


def baseline_maps(splits: Splits, train_labels: np.ndarray, *, bits: int, fused: bool,
                  empty_queries: str, seed: int = 0, ridge: float = DEFAULT_RIDGE,
                  cca_reg: float = DEFAULT_CCA_REG,
                  names: tuple[str, ...] = BASELINES) -> dict:
  """The baselines' mAP per direction, JSON-ready:

  {"random_codes": {dir: mAP}, "linear_probe": {...}, "unsupervised": {...}
   (those in `names`), "settings": {bits, unsupervised_bits (with
   unsupervised), seed, ridge, cca_reg, empty_queries, ties, train_labels}}
  with dir in (i2t, t2i) or (fused,).
  """
  codes = baseline_codes(splits, train_labels, bits=bits, fused=fused, seed=seed,
                         ridge=ridge, cca_reg=cca_reg, names=names)
  ql, dl = splits.query.labels, splits.database.labels
  score = lambda q, d: float(metrics.mean_average_precision(
      q, d, ql, dl, ties="index", empty_queries=empty_queries))
  out: dict = {}
  for name in names:
    c = codes[name]
    if fused:
      out[name] = {"fused": score(c["query"], c["db"])}
    else:
      out[name] = {"i2t": score(c["image_query"], c["text_db"]),
                   "t2i": score(c["text_query"], c["image_db"])}
  out["settings"] = {"bits": bits, "seed": seed, "ridge": ridge,
                     "empty_queries": empty_queries, "ties": "index",
                     "train_labels": "the labels the method trains on (noisy)"}
  if "unsupervised" in names:
    out["settings"].update(
        cca_reg=cca_reg,
        unsupervised_bits=int(next(iter(codes["unsupervised"].values())).shape[1]))
  return out


def table_rows(baselines: Mapping) -> list[tuple[str, dict[str, float]]]:
  """(label, {direction: mAP}) per baseline, for printing beside a method."""
  rows = []
  for name in BASELINES:
    if name in baselines:
      label = LABELS[name]
      settings = baselines.get("settings", {})
      if (name == "unsupervised" and settings.get("unsupervised_bits")
          and settings["unsupervised_bits"] != settings.get("bits")):
        label += f" [{settings['unsupervised_bits']} bits]"
      rows.append((label, dict(baselines[name])))
  return rows


def format_table(baselines: Mapping) -> str:
  """The reference rows printed under a run's mAP table."""
  if "skipped" in baselines:
    return f"baselines: skipped ({baselines['skipped']})"
  rows = table_rows(baselines)
  names = list(rows[0][1])
  settings = baselines.get("settings", {})
  header = [f"baseline (same split, {settings.get('bits')} bits, no hash net)"] + names
  cells = [[label] + [f"{values[d]:.4f}" for d in names] for label, values in rows]
  widths = [max(len(r[c]) for r in [header] + cells) for c in range(len(header))]
  return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                   for r in [header] + cells)


def run_baselines(splits: Splits, train_labels: np.ndarray, *, bits: int, fused: bool,
                  empty_queries: str, seed: int = 0) -> dict:
  """baseline_maps of RUN_BASELINES for a run, or {"skipped": why} when its
  features are not in memory (config.input='storage')."""
  for split in (splits.train, splits.query, splits.database):
    for x in (split.image, split.text):
      if not isinstance(x, np.ndarray):
        return {"skipped": "features read from storage (config.input='storage')"}
  return baseline_maps(splits, np.asarray(train_labels), bits=bits, fused=fused,
                       empty_queries=empty_queries, seed=seed, names=RUN_BASELINES)
