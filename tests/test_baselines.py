"""common/baselines.py against independent NumPy / SciPy references."""

import numpy as np
import pytest
import scipy.linalg

from common import baselines
from common.data.splits import Split, Splits


def _ref_map(q, d, ql, dl, empty):
  aps = []
  for i in range(len(q)):
    dist = (q[i][None, :] != d).sum(1)
    order = np.argsort(dist, kind="stable")  # ties by database index
    rel = (dl[order] @ ql[i]) > 0
    if not rel.any():
      if empty == "zero":
        aps.append(0.0)
      continue
    hits = np.cumsum(rel)
    aps.append(float(np.mean(hits[rel] / (np.flatnonzero(rel) + 1))))
  return float(np.mean(aps))


def _split(rng, n, d_img, d_txt, c, *, empty_every=0, constant_col=True):
  latent = rng.standard_normal((n, 3))
  labels = (latent @ rng.standard_normal((3, c)) + 0.5 * rng.standard_normal((n, c)) > 0.6)
  if empty_every:
    labels[::empty_every] = False
  image = latent @ rng.standard_normal((3, d_img)) + 0.3 * rng.standard_normal((n, d_img))
  text = latent @ rng.standard_normal((3, d_txt)) + 0.3 * rng.standard_normal((n, d_txt))
  if constant_col:
    image[:, 0] = 2.5  # std 0 in every split
  return Split(image=image.astype(np.float32), text=text.astype(np.float32),
               labels=labels.astype(np.float32), index=np.arange(n))


def _splits(seed=0, n_query=7, d_img=9, d_txt=5, c=4):
  rng = np.random.default_rng(seed)
  return Splits(query=_split(rng, n_query, d_img, d_txt, c, empty_every=3),
                train=_split(rng, 60, d_img, d_txt, c, empty_every=5),
                database=_split(rng, 50, d_img, d_txt, c, empty_every=7), name="t")


def _standardize(train, x):
  mu, sd = train.mean(0), train.std(0)
  sd = np.where(sd > 0, sd, 1)
  return (np.asarray(x, float) - mu) / sd


def _ref_ridge_scores(x_train, y, x, ridge):
  # Augmented least squares: [A; sqrt(ridge) P] W ~ [T; 0] (bias row unpenalised).
  z = _standardize(np.asarray(x_train, float), x_train)
  a = np.c_[z, np.ones(len(z))]
  p = np.sqrt(ridge) * np.eye(a.shape[1])[:-1]
  w = np.linalg.lstsq(np.r_[a, p], np.r_[2 * y - 1, np.zeros((len(p), y.shape[1]))],
                      rcond=None)[0]
  return np.c_[_standardize(np.asarray(x_train, float), x), np.ones(len(x))] @ w


def _agree(codes, scores, tol=1e-7):
  """codes == sign(scores) wherever |scores| is not at the tie point."""
  clear = np.abs(scores) > tol
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(codes[clear], np.where(scores[clear] >= 0, 1, -1))


@pytest.mark.parametrize("n_query", [1, 7])
def test_probe_codes_match_ridge_reference(n_query):
  s = _splits(n_query=n_query)
  noisy = s.train.labels.copy()
  noisy[:10] = 1 - noisy[:10]
  bits, seed, ridge = 12, 3, 0.7
  codes = baselines.baseline_codes(s, noisy, bits=bits, fused=False, seed=seed, ridge=ridge)
  proj = np.random.Generator(np.random.PCG64([seed, 1])).standard_normal((4, bits))
  for view in ("image", "text"):
    x_train = getattr(s.train, view)
    for part, split in (("query", s.query), ("db", s.database)):
      scores = _ref_ridge_scores(x_train, noisy, getattr(split, view), ridge) @ proj
      _agree(codes["linear_probe"][f"{view}_{part}"], scores)
  fused = baselines.baseline_codes(s, noisy, bits=bits, fused=True, seed=seed, ridge=ridge)
  cat = lambda sp: np.c_[sp.image, sp.text]
  for part, split in (("query", s.query), ("db", s.database)):
    scores = _ref_ridge_scores(cat(s.train), noisy, cat(split), ridge) @ proj
    _agree(fused["linear_probe"][part], scores)


def test_cca_matches_generalized_eigenproblem():
  s = _splits(d_img=6, d_txt=4)
  k, reg = 3, 1e-3
  codes = baselines.baseline_codes(s, s.train.labels, bits=k, fused=False, cca_reg=reg)
  zi = _standardize(s.train.image.astype(float), s.train.image)
  zt = _standardize(s.train.text.astype(float), s.train.text)
  zi, zt = zi - zi.mean(0), zt - zt.mean(0)
  n, dx = len(zi), zi.shape[1]
  cxx, cyy, cxy = zi.T @ zi / n + reg * np.eye(dx), zt.T @ zt / n + reg * np.eye(4), zi.T @ zt / n
  lhs = np.block([[np.zeros((dx, dx)), cxy], [cxy.T, np.zeros((4, 4))]])
  rhs = np.block([[cxx, np.zeros((dx, 4))], [np.zeros((4, dx)), cyy]])
  vals, vecs = scipy.linalg.eigh(lhs, rhs)
  top = vecs[:, np.argsort(vals)[::-1][:k]]
  a_ref, b_ref = top[:dx], top[dx:]
  mine_a, _ = baselines.cca_directions(zi, zt, k, reg)
  for j in range(k):  # each pair's sign is free: align the reference with ours
    if a_ref[:, j] @ cxx @ mine_a[:, j] < 0:
      a_ref[:, j], b_ref[:, j] = -a_ref[:, j], -b_ref[:, j]
  mu_i = _standardize(s.train.image.astype(float), s.train.image).mean(0)
  mu_t = _standardize(s.train.text.astype(float), s.train.text).mean(0)
  for part, split in (("query", s.query), ("db", s.database)):
    _agree(codes["unsupervised"][f"image_{part}"],
           (_standardize(s.train.image.astype(float), split.image) - mu_i) @ a_ref, tol=1e-6)
    _agree(codes["unsupervised"][f"text_{part}"],
           (_standardize(s.train.text.astype(float), split.text) - mu_t) @ b_ref, tol=1e-6)


def test_pca_matches_svd_and_bits_capped():
  s = _splits(d_img=3, d_txt=2)
  codes = baselines.baseline_codes(s, s.train.labels, bits=16, fused=True)
  cat = lambda sp: np.c_[sp.image, sp.text].astype(float)
  z = _standardize(cat(s.train), cat(s.train))
  mu = z.mean(0)
  _, _, vt = np.linalg.svd(z - mu, full_matrices=False)
  # 5 dims, one constant: the 5th component has zero variance; take 4.
  got = baselines.pca_directions(z, 5)
  for j in range(4):
    ref = vt[j] * np.sign(vt[j] @ got[:, j])
    for part, split in (("query", s.query), ("db", s.database)):
      _agree(codes["unsupervised"][part][:, j],
             (_standardize(cat(s.train), cat(split)) - mu) @ ref, tol=1e-6)
  assert codes["unsupervised"]["query"].shape[1] == 5
  maps = baselines.baseline_maps(s, s.train.labels, bits=16, fused=True, empty_queries="zero")
  assert maps["settings"]["unsupervised_bits"] == 5
  assert "[5 bits]" in baselines.table_rows(maps)[2][0]


def test_random_codes_are_independent_seeded_pm1():
  s = _splits()
  a = baselines.baseline_codes(s, s.train.labels, bits=64, fused=False, seed=1)["random_codes"]
  b = baselines.baseline_codes(s, s.train.labels, bits=64, fused=False, seed=1)["random_codes"]
  c = baselines.baseline_codes(s, s.train.labels, bits=64, fused=False, seed=2)["random_codes"]
  for key in a:
    assert set(np.unique(a[key])) == {-1, 1}
    np.testing.assert_array_equal(a[key], b[key])
    assert (a[key] != c[key]).any()
  assert (a["image_query"] != a["text_query"]).any()


@pytest.mark.parametrize("fused,empty", [(False, "skip"), (True, "zero"), (False, "zero")])
def test_maps_equal_reference_map_of_the_codes(fused, empty):
  s = _splits(n_query=9)
  bits = 6  # few bits: many Hamming ties, ranked by database index
  codes = baselines.baseline_codes(s, s.train.labels, bits=bits, fused=fused, seed=4)
  maps = baselines.baseline_maps(s, s.train.labels, bits=bits, fused=fused, seed=4,
                                 empty_queries=empty)
  ql, dl = s.query.labels, s.database.labels
  for name in baselines.BASELINES:
    c = codes[name]
    if fused:
      assert maps[name]["fused"] == pytest.approx(_ref_map(c["query"], c["db"], ql, dl, empty))
    else:
      assert maps[name]["i2t"] == pytest.approx(
          _ref_map(c["image_query"], c["text_db"], ql, dl, empty))
      assert maps[name]["t2i"] == pytest.approx(
          _ref_map(c["text_query"], c["image_db"], ql, dl, empty))
  assert maps["settings"]["empty_queries"] == empty


def test_probe_beats_random_on_learnable_data():
  whole = _split(np.random.default_rng(5), 1100, 20, 10, 5)  # one labelling rule
  cut = lambda a, b: Split(image=whole.image[a:b], text=whole.text[a:b],
                           labels=whole.labels[a:b], index=whole.index[a:b])
  s = Splits(query=cut(0, 100), train=cut(100, 500), database=cut(500, 1100))
  maps = baselines.baseline_maps(s, s.train.labels, bits=32, fused=False, empty_queries="skip")
  assert maps["linear_probe"]["i2t"] > maps["random_codes"]["i2t"] + 0.05


def test_bad_arguments():
  s = _splits()
  with pytest.raises(ValueError, match="bits=0"):
    baselines.baseline_codes(s, s.train.labels, bits=0, fused=True)
  with pytest.raises(ValueError, match="ridge=0"):
    baselines.baseline_codes(s, s.train.labels, bits=4, fused=True, ridge=0)
  with pytest.raises(ValueError, match="names=.*subset"):
    baselines.baseline_codes(s, s.train.labels, bits=4, fused=True, names=("pca",))
  with pytest.raises(ValueError, match="train_labels has 3 rows"):
    baselines.baseline_codes(s, s.train.labels[:3], bits=4, fused=True)


@pytest.mark.parametrize("fused", [False, True])
def test_a_subset_equals_the_same_rows_of_all(fused):
  s = _splits()
  full = baselines.baseline_maps(s, s.train.labels, bits=8, fused=fused, empty_queries="zero")
  part = baselines.baseline_maps(s, s.train.labels, bits=8, fused=fused, empty_queries="zero",
                                 names=("linear_probe",))
  assert set(part) == {"linear_probe", "settings"}
  assert part["linear_probe"] == full["linear_probe"]
