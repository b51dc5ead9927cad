"""DCGMH losses vs independent float64 NumPy loop references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgmh_jax import losses

EPS = 1e-5


# ----------------------------------------------------------------- references
def ref_center_loss(h, centers, labels, mask=None):
  h, c, y = (np.asarray(a, np.float64) for a in (h, centers, labels))
  batch, bits = h.shape
  total, count = 0.0, 0
  for i in range(batch):
    if mask is not None and not mask[i]:
      continue
    pos = [j for j in range(c.shape[0]) if y[i, j] == 1]
    if not pos:
      continue
    logit = [float(h[i] @ c[j]) / bits for j in range(c.shape[0])]
    neg_sum = sum(math.exp(logit[k]) for k in range(c.shape[0])
                  if y[i, k] == 0)
    term = 0.0
    for j in pos:
      p = math.exp(logit[j]) / (math.exp(logit[j]) + neg_sum + EPS)
      term += math.log(p + EPS)
    total += -term / len(pos)
    count += 1
  return total / count if count else 0.0


def ref_quantization(h, mask=None):
  h = np.asarray(h, np.float64)
  total, count = 0.0, 0
  for i in range(h.shape[0]):
    if mask is not None and not mask[i]:
      continue
    for v in h[i]:
      s = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
      total += (v - s) ** 2
      count += 1
  return total / count if count else 0.0


def ref_separation(centers):
  c = np.asarray(centers, np.float64)
  n, bits = c.shape
  dists = [math.sqrt(sum((c[i, b] - c[j, b]) ** 2 for b in range(bits))) / bits
           for i in range(n) for j in range(i + 1, n)]
  if not dists:
    return 0.0
  return -sum(dists) / n ** 2 - min(dists)


def _unit(v):
  norm = math.sqrt(sum(x * x for x in v))
  return [x / max(norm, 1e-12) for x in v]


def ref_pair(h, labels, mask):
  idx = [i for i in range(len(mask)) if mask[i]]
  if not idx:
    return 0.0
  hn = {i: _unit(np.asarray(h[i], np.float64)) for i in idx}
  total = 0.0
  for i in idx:
    for j in idx:
      dot = sum(a * b for a, b in zip(hn[i], hn[j]))
      inner = float(np.dot(np.asarray(labels[i], np.float64), labels[j]))
      target = 2.0 / (1.0 + math.exp(-inner)) - 1.0
      total += (dot - target) ** 2
  return total / len(idx) ** 2


def ref_unsup(h_aug, h, mask, margin):
  idx = [i for i in range(len(mask)) if mask[i]]
  if not idx:
    return 0.0
  a = {i: _unit(np.asarray(h_aug[i], np.float64)) for i in idx}
  b = {i: _unit(np.asarray(h[i], np.float64)) for i in idx}
  pos, neg = 0.0, 0.0
  for i in idx:
    for j in idx:
      cos = sum(x * y for x, y in zip(a[i], b[j]))
      if i == j:
        pos += 1.0 - cos
      else:
        neg += max(cos - margin, 0.0)
  return pos / len(idx) + neg / len(idx) ** 2


# ------------------------------------------------------------------- helpers
def _data(seed, batch=7, classes=5, bits=6):
  rng = np.random.default_rng(seed)
  h = np.tanh(rng.normal(size=(batch, bits))).astype(np.float32)
  centers = rng.normal(size=(classes, bits)).astype(np.float32)
  labels = (rng.random((batch, classes)) < 0.4).astype(np.float32)
  labels[0] = 0.0                      # empty label row
  labels[1] = 1.0                      # no negative class
  return h, centers, labels


MASKS = {
    "all": None,
    "empty": np.zeros(7, bool),
    "one": np.eye(7, dtype=bool)[3],
    "only_empty_row": np.eye(7, dtype=bool)[0],
    "some": np.array([1, 0, 1, 1, 0, 1, 0], bool),
}


def _assert_finite(*arrays):
  for a in jax.tree.leaves(arrays):
    assert np.all(np.isfinite(np.asarray(a)))


# Jitted once per signature and reused across parametrised cases (masks are
# traced), which keeps the suite fast on a loaded CPU.
_center_vg = jax.jit(jax.value_and_grad(losses.center_loss, argnums=(0, 1)))
_quant_vg = jax.jit(jax.value_and_grad(losses.quantization_loss))
_sep_vg = jax.jit(jax.value_and_grad(losses.center_separation_loss))
_pair_vg = jax.jit(jax.value_and_grad(losses.pair_loss))
_unsup_vg = jax.jit(
    jax.value_and_grad(losses.unsupervised_contrastive_loss, argnums=(0, 1)),
    static_argnames="margin")


# --------------------------------------------------------------- center loss
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("seed", [0, 1])
def test_center_loss_matches_reference(mask_name, seed):
  h, centers, labels = _data(seed)
  mask = MASKS[mask_name]
  got, grads = _center_vg(h, centers, labels, mask)
  want = ref_center_loss(h, centers, labels, mask)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  if mask_name in ("empty", "only_empty_row"):
    assert float(got) == 0.0
  _assert_finite(grads)


def test_center_loss_batch_of_one_eager():
  h, centers, labels = _data(3)
  h1, y1 = h[2:3], labels[2:3]
  got = losses.center_loss(h1, centers, y1, jnp.ones(1, bool))
  np.testing.assert_allclose(float(got), ref_center_loss(h1, centers, y1),
                             rtol=1e-5)


def test_center_loss_large_logits_stable():
  # ℓ up to ~ ±250: a naive float32 exp overflows at 88.
  rng = np.random.default_rng(5)
  h = np.sign(rng.normal(size=(4, 4))).astype(np.float32)
  centers = (250.0 * h[[0, 1, 2]] * rng.uniform(0.5, 1.0, (3, 1))).astype(
      np.float32)
  labels = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0]], np.float32)
  got, grads = _center_vg(h, centers, labels)
  np.testing.assert_allclose(float(got), ref_center_loss(h, centers, labels),
                             rtol=1e-5, atol=1e-5)
  _assert_finite(grads)


def test_center_loss_gradient_matches_finite_differences():
  h, centers, labels = _data(7, batch=4, classes=3, bits=3)
  labels[0] = [1, 0, 1]
  grad = np.asarray(_center_vg(h, centers, labels)[1][0])
  step = 1e-4
  numeric = np.zeros_like(grad, np.float64)
  for idx in np.ndindex(h.shape):
    plus, minus = h.astype(np.float64), h.astype(np.float64)
    plus[idx] += step
    minus[idx] -= step
    numeric[idx] = (ref_center_loss(plus, centers, labels)
                    - ref_center_loss(minus, centers, labels)) / (2 * step)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_center_loss_rejects_bad_input():
  h, centers, labels = _data(0)
  with pytest.raises(ValueError, match="labels"):
    losses.center_loss(h, centers, labels * 2)
  # Shapes are internal invariants (chex); values are data checks.
  with pytest.raises(AssertionError, match="labels"):
    losses.center_loss(h, centers, labels[:, :3])
  with pytest.raises(AssertionError, match="centers"):
    losses.center_loss(h, centers[:, :4], labels)
  with pytest.raises(AssertionError, match="mask"):
    losses.center_loss(h, centers, labels, jnp.ones(3, bool))


# ---------------------------------------------------------- quantization loss
@pytest.mark.parametrize("mask_name", ["all", "empty", "one", "some"])
def test_quantization_loss(mask_name):
  h, _, _ = _data(2)
  h[1, 2] = 0.0                                   # sign(0) = 0
  mask = MASKS[mask_name]
  got, grad = _quant_vg(h, mask)
  np.testing.assert_allclose(float(got), ref_quantization(h, mask),
                             rtol=1e-5, atol=1e-7)
  _assert_finite(grad)


# --------------------------------------------------------- center separation
@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_center_separation_loss(num_classes):
  rng = np.random.default_rng(num_classes)
  centers = rng.normal(size=(num_classes, 6)).astype(np.float32)
  got, grad = _sep_vg(centers)
  np.testing.assert_allclose(float(got), ref_separation(centers),
                             rtol=1e-5, atol=1e-7)
  _assert_finite(grad)


def test_center_separation_coincident_centers_gradient_safe():
  centers = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, -1.0, 3.0]],
                     np.float32)
  got, grad = _sep_vg(centers)
  np.testing.assert_allclose(float(got), ref_separation(centers), rtol=1e-5)
  _assert_finite(grad)


# ----------------------------------------------------------------- pair loss
@pytest.mark.parametrize("mask_name",
                         ["empty", "one", "some", "only_empty_row"])
def test_pair_loss(mask_name):
  h, _, labels = _data(4)
  h[5] = 0.0                                      # zero code: eps-safe norm
  mask = MASKS[mask_name]
  got, grad = _pair_vg(h, labels, mask)
  np.testing.assert_allclose(float(got), ref_pair(h, labels, mask),
                             rtol=1e-5, atol=1e-6)
  if not mask.any():
    assert float(got) == 0.0
  _assert_finite(grad)


def test_pair_loss_eager_float_mask():
  h, _, labels = _data(6)
  mask = MASKS["some"]
  got = losses.pair_loss(h, labels, mask.astype(np.float32))
  np.testing.assert_allclose(float(got), ref_pair(h, labels, mask), rtol=1e-5)


# ------------------------------------------------------ unsupervised contrast
@pytest.mark.parametrize("mask_name", ["empty", "one", "some"])
@pytest.mark.parametrize("margin", [0.7, -0.5])
def test_unsupervised_contrastive_loss(mask_name, margin):
  h, _, _ = _data(8)
  rng = np.random.default_rng(9)
  h_aug = (h + 0.3 * rng.normal(size=h.shape)).astype(np.float32)
  h_aug[3] = 0.0
  mask = MASKS[mask_name]
  got, grads = _unsup_vg(h_aug, h, mask, margin=margin)
  np.testing.assert_allclose(float(got), ref_unsup(h_aug, h, mask, margin),
                             rtol=1e-5, atol=1e-6)
  if not mask.any():
    assert float(got) == 0.0
  _assert_finite(grads)


def test_unsupervised_contrastive_rejects_shape_mismatch():
  h, _, _ = _data(0)
  with pytest.raises(AssertionError, match="h_aug"):
    losses.unsupervised_contrastive_loss(h[:3], h, jnp.ones(7, bool))
