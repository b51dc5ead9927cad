"""Synthetic presets: shapes, label statistics, split layout, learnability."""

import numpy as np
import pytest

from common.data import synthetic

# The real benchmarks' shapes (SCBCH split sizes): C, d_img, d_txt, q, n_train.
_BENCHMARK_SHAPES = {
    "mirflickr25k": (24, 4096, 1386, 2000, 10000),
    "nuswide21": (21, 4096, 1000, 2100, 10500),
    "mscoco": (80, 4096, 300, 5000, 10000),
    "iaprtc12": (255, 4096, 2912, 2000, 10000),
}


def _mean_ap(q_codes, db_codes, q_labels, db_labels):
  """Reference mAP: Hamming ranking (ties by database order), relevant =
  shares a label; queries without relevant items are left out."""
  ham = 0.5 * (q_codes.shape[1] - q_codes @ db_codes.T)
  aps = []
  for i in range(len(q_codes)):
    order = np.argsort(ham[i], kind="stable")
    rel = (db_labels[order] @ q_labels[i]) > 0
    if not rel.any():
      continue
    ranks = np.flatnonzero(rel) + 1
    aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
  return float(np.mean(aps))


def test_mean_ap_reference_sanity():
  labels = np.eye(4)[[0, 1, 0, 1]]
  perfect = np.where(labels[:, :1] > 0, 1.0, -1.0) * np.ones((4, 8))
  assert _mean_ap(perfect, perfect, labels, labels) == 1.0
  # Ranking the relevant item 2nd of 2: AP = 1/2.
  codes_q = np.ones((1, 2))
  codes_db = np.array([[1.0, 1.0], [-1.0, -1.0]])
  assert _mean_ap(codes_q, codes_db, np.eye(2)[[0]], np.eye(2)[[1, 0]]) == 0.5


@pytest.mark.parametrize("preset", sorted(_BENCHMARK_SHAPES))
def test_benchmark_presets_have_benchmark_shapes(preset):
  c, d_img, d_txt, q, n = _BENCHMARK_SHAPES[preset]
  cfg = synthetic.SYNTHETIC_PRESETS[preset]
  assert (cfg.num_classes, cfg.image_dim, cfg.text_dim, cfg.query_size,
          cfg.train_size) == (c, d_img, d_txt, q, n)
  # Generate with small split sizes but the preset's dims and classes.
  s = synthetic.make_synthetic(preset, query_size=6, train_size=10,
                               database_size=12)
  assert (s.num_classes, s.image_dim, s.text_dim) == (c, d_img, d_txt)
  counts = np.concatenate([s.query.labels, s.database.labels]).sum(1)
  assert counts.min() >= cfg.min_labels and counts.max() <= cfg.max_labels


def test_tiny_shapes_labels_and_views():
  cfg = synthetic.SYNTHETIC_PRESETS["tiny"]
  s = synthetic.make_synthetic("tiny", seed=3)
  assert s.name == "synthetic:tiny"
  assert (len(s.query), len(s.train), len(s.database)) == (
      cfg.query_size, cfg.train_size, cfg.database_size)
  every = np.concatenate([s.query.labels, s.database.labels])
  counts = every.sum(1)
  assert counts.min() >= 1 and counts.max() <= cfg.max_labels
  assert abs(counts.mean() - cfg.mean_labels) < 0.2
  freq = every.mean(0)
  assert freq[0] > 2 * freq[-1]  # skewed class frequencies
  image, text = s.database.image, s.database.text
  assert image.min() >= 0 and 0.2 < (image > 0).mean() < 0.9
  assert text.min() >= 0 and np.array_equal(text, np.round(text))
  assert (text == 0).mean() > 0.5  # sparse bag of words


def test_split_layout_train_inside_database():
  s = synthetic.make_synthetic("tiny", query_size=5, train_size=7,
                               database_size=9)
  np.testing.assert_array_equal(s.query.index, np.arange(5))
  np.testing.assert_array_equal(s.database.index, np.arange(5, 14))
  np.testing.assert_array_equal(s.train.index, np.arange(5, 12))
  for field in ("image", "text", "labels"):
    np.testing.assert_array_equal(getattr(s.train, field),
                                  getattr(s.database, field)[:7])
  assert not set(s.query.index) & set(s.database.index)


def test_seeded_and_streams_independent():
  a = synthetic.make_synthetic("tiny", seed=1)
  b = synthetic.make_synthetic("tiny", seed=1)
  c = synthetic.make_synthetic("tiny", seed=2)
  d = synthetic.make_synthetic("tiny", seed=1, image_dim=10)
  np.testing.assert_array_equal(a.train.image, b.train.image)
  np.testing.assert_array_equal(a.train.text, b.train.text)
  assert not np.array_equal(a.train.labels, c.train.labels)
  np.testing.assert_array_equal(a.train.labels, d.train.labels)
  np.testing.assert_array_equal(a.train.text, d.train.text)


def test_empty_rows_only_when_asked():
  s = synthetic.make_synthetic("tiny", empty_fraction=0.25)
  empty = (s.database.labels.sum(1) == 0).mean()
  assert 0.15 < empty < 0.35


def test_tiny_is_learnable_but_not_trivial():
  s = synthetic.make_synthetic("tiny")
  q, db, tr = s.query, s.database, s.train
  bits = 32
  rng = np.random.default_rng(0)
  random_map = _mean_ap(np.sign(rng.standard_normal((len(q), bits))),
                        np.sign(rng.standard_normal((len(db), bits))),
                        q.labels, db.labels)
  # Least-squares probe per modality onto the labels, then one shared random
  # projection: image-query vs text-database codes (I->T).
  proj = rng.standard_normal((s.num_classes, bits))

  def probe(x_train):
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    w = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ tr.labels)
    return lambda z: np.sign(np.c_[(z - mu) / sd, np.ones(len(z))] @ w @ proj
                             + 1e-9)

  image_code, text_code = probe(tr.image), probe(tr.text)
  i2t = _mean_ap(image_code(q.image), text_code(db.text), q.labels, db.labels)
  oracle = _mean_ap(np.sign(q.labels @ proj + 1e-9),
                    np.sign(db.labels @ proj + 1e-9), q.labels, db.labels)
  assert i2t > random_map + 0.05
  assert oracle > i2t + 0.1  # room left to learn


@pytest.mark.parametrize("kwargs, error", [
    (dict(preset="huge"), r"preset='huge'"),
    (dict(preset="tiny", dims=3), r"override\(s\) \['dims'\]"),
    (dict(preset="tiny", train_size=600), r"train_size=600 exceeds"),
    (dict(preset="tiny", max_labels=9), r"max_labels=9 <= num_classes=8"),
    (dict(preset="tiny", mean_labels=5.0, max_labels=4), r"mean_labels=5.0"),
    (dict(preset="tiny", image_dim=0), r"image_dim=0"),
    (dict(preset="tiny", label_dropout=1.5), r"label_dropout=1.5"),
    (dict(preset="tiny", seed=-2), r"seed=-2"),
])
def test_bad_arguments(kwargs, error):
  with pytest.raises(ValueError, match=error):
    synthetic.make_synthetic(**kwargs)
