"""NRCH losses vs independent NumPy loops (docs/methods/nrch.md)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrch_jax import losses as _losses


class losses:  # pylint: disable=invalid-name
  """The functions under test, jitted (one compile per shape, not per op)."""
  _static = ("margin", "shift", "tau", "share_labels")
  rch_loss = staticmethod(jax.jit(_losses.rch_loss, static_argnames=_static))
  rch_rows = staticmethod(jax.jit(_losses.rch_rows, static_argnames=_static))
  quantization_items = staticmethod(jax.jit(_losses.quantization_items))
  prototype_items = staticmethod(jax.jit(_losses.prototype_items))
  dns_scores = staticmethod(jax.jit(_losses.dns_scores))


def ref_f(a, b, y, clean, *, m, s, tau, share=True):
  """f(A, B)_i by explicit loops: the clean columns plus the diagonal."""
  n = len(a)
  out = np.zeros(n)
  for i in range(n):
    s_ii = float(a[i] @ b[i])
    total = 0.0
    for j in range(n):
      if not (clean[j] or j == i):
        continue
      s_ij = float(a[i] @ b[j])
      if i == j:
        c = max(s_ii, 0.0)
      elif s_ij >= s_ii - m:  # hard (ties included)
        c = s_ij
      else:
        c = s_ij - s
      p = 1.0 if (i != j and share and float(y[i] @ y[j]) > 0) else 0.0
      total += math.exp(c * (1 - p) / tau)
    out[i] = -s_ii + tau * math.log(total) + m
  return out


def ref_quant(u, v):
  k = u.shape[1]
  out = np.zeros(len(u))
  for i in range(len(u)):
    for x in (u[i], v[i]):
      out[i] += sum((abs(x[c]) - 1 / math.sqrt(k)) ** 2 for c in range(k)) / k
  return out


def ref_errors(u, v, y, p):
  n, c_count = y.shape
  e = np.zeros((n, c_count))
  for i in range(n):
    for c in range(c_count):
      z = 2 * y[i, c] - 1
      e[i, c] = (z - u[i] @ p[c]) ** 2 + (z - v[i] @ p[c]) ** 2
  return e


def _unit(rng, n, k):
  x = np.tanh(rng.normal(size=(n, k)))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _labels(rng, n, c):
  y = (rng.random((n, c)) < 0.3).astype(np.float32)
  y[0] = 0  # an empty label row
  return y


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("seed,n", [(0, 9), (1, 1), (2, 6)])
def test_rch_matches_loops_random_and_subsets(share, seed, n):
  rng = np.random.default_rng(seed)
  a, b, y = _unit(rng, n, 5), _unit(rng, n, 5), _labels(rng, n, 4)
  for clean in (np.ones(n), (rng.random(n) < 0.5).astype(np.float32), np.zeros(n)):
    got = losses.rch_loss(a, b, y, jnp.asarray(clean), margin=0.2, shift=1.0, tau=0.7,
                          share_labels=share)
    want = ref_f(a, b, y, clean, m=0.2, s=1.0, tau=0.7, share=share)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_rch_exact_ties_count_as_hard():
  # Entries in {-0.5, 0, 0.5}: every S_ij is a multiple of 0.25, exact in float32,
  # so S_ij = S_ii - m with m = 0.25 happens exactly.
  rng = np.random.default_rng(3)
  a = (rng.integers(-1, 2, size=(8, 4)) * 0.5).astype(np.float32)
  b = (rng.integers(-1, 2, size=(8, 4)) * 0.5).astype(np.float32)
  s = a @ b.T
  assert np.any(np.isclose(s, np.diag(s)[:, None] - 0.25, atol=0)
                & ~np.eye(8, dtype=bool))
  y = np.zeros((8, 3), np.float32)
  got = losses.rch_loss(a, b, y, margin=0.25, shift=1.0)
  np.testing.assert_allclose(np.asarray(got), ref_f(a, b, y, np.ones(8), m=0.25, s=1.0,
                                                    tau=1.0), rtol=1e-6, atol=1e-6)


def test_rch_batch_of_one_and_all_sharing():
  rng = np.random.default_rng(4)
  a, b = _unit(rng, 1, 6), _unit(rng, 1, 6)
  s = float(a[0] @ b[0])
  got = float(losses.rch_loss(a, b, np.ones((1, 2), np.float32), margin=0.2,
                              shift=1.0)[0])
  assert got == pytest.approx(-s + max(s, 0) + 0.2, abs=1e-6)
  # Every pair shares a label: each sum is (n - 1) e^0 + e^{max(S_ii, 0)}.
  a, b = _unit(rng, 5, 6), _unit(rng, 5, 6)
  d = np.sum(a * b, axis=1)
  got = losses.rch_loss(a, b, np.ones((5, 2), np.float32), margin=0.2, shift=1.0)
  np.testing.assert_allclose(np.asarray(got),
                             -d + np.log(4 + np.exp(np.maximum(d, 0))) + 0.2, rtol=1e-5)


def test_rch_masked_batch_equals_the_gathered_clean_rows():
  rng = np.random.default_rng(5)
  a, b, y = _unit(rng, 10, 4), _unit(rng, 10, 4), _labels(rng, 10, 3)
  clean = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], np.float32)
  idx = np.flatnonzero(clean)
  masked = losses.rch_loss(a, b, y, jnp.asarray(clean), margin=0.2, shift=1.0)
  sliced = losses.rch_loss(a[idx], b[idx], y[idx], margin=0.2, shift=1.0)
  np.testing.assert_allclose(np.asarray(masked)[idx], np.asarray(sliced), rtol=1e-6)


def test_rch_rows_over_a_partition_equal_the_whole_and_t2i_is_the_swap():
  rng = np.random.default_rng(6)
  a, b, y = _unit(rng, 8, 4), _unit(rng, 8, 4), _labels(rng, 8, 3)
  clean = jnp.asarray((rng.random(8) < 0.7).astype(np.float32))
  whole = losses.rch_loss(a, b, y, clean, margin=0.2, shift=1.0)
  parts = [losses.rch_rows(a[r:r + 2], b, y[r:r + 2], y, clean, r, margin=0.2, shift=1.0)
           for r in range(0, 8, 2)]
  np.testing.assert_allclose(np.concatenate(parts), np.asarray(whole), rtol=1e-6)
  with pytest.raises(ValueError, match="row_start"):
    _losses.rch_rows(a[:2], b, y[:2], y, clean, 7, margin=0.2, shift=1.0)
  # Text->image anchored at text i, candidates images, mask vs S_ii on columns.
  t2i = losses.rch_loss(b, a, y, clean, margin=0.2, shift=1.0)
  s = a @ b.T
  want = np.zeros(8)
  for j in range(8):  # anchor text j, sum over images i (column j of S)
    terms = []
    for i in range(8):
      if not (clean[i] or i == j):
        continue
      if i == j:
        c = max(s[j, j], 0)
      else:
        c = s[i, j] if s[i, j] >= s[j, j] - 0.2 else s[i, j] - 1.0
        if y[i] @ y[j] > 0:
          c = 0.0
      terms.append(math.exp(c))
    want[j] = -s[j, j] + math.log(sum(terms)) + 0.2
  np.testing.assert_allclose(np.asarray(t2i), want, rtol=1e-5, atol=1e-6)


def test_rch_gradient_ignores_the_masks():
  """Finite differences away from the mask boundary agree with jax.grad."""
  rng = np.random.default_rng(7)
  a, b, y = _unit(rng, 5, 4), _unit(rng, 5, 4), _labels(rng, 5, 3)
  fn = lambda x: jnp.sum(losses.rch_loss(x, b, y, margin=0.2, shift=1.0))
  grad = np.asarray(jax.grad(fn)(a))
  a64 = a.astype(np.float64)
  eps = 1e-3
  for idx in [(1, 2), (3, 0), (4, 3)]:
    plus, minus = a64.copy(), a64.copy()
    plus[idx] += eps
    minus[idx] -= eps
    num = (ref_f(plus, b, y, np.ones(5), m=0.2, s=1.0, tau=1.0).sum()
           - ref_f(minus, b, y, np.ones(5), m=0.2, s=1.0, tau=1.0).sum()) / (2 * eps)
    assert grad[idx] == pytest.approx(num, rel=2e-2, abs=2e-3)


def test_quantization_items_match_loops_and_vanish_at_the_balanced_code():
  rng = np.random.default_rng(8)
  u, v = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(losses.quantization_items(u, v)), ref_quant(u, v),
                             rtol=1e-5)
  balanced = np.sign(rng.normal(size=(3, 16))).astype(np.float32) / 4.0
  np.testing.assert_allclose(np.asarray(losses.quantization_items(balanced, -balanced)),
                             0.0, atol=1e-7)


def test_prototype_items_values_and_gradients():
  rng = np.random.default_rng(9)
  u, v, y = _unit(rng, 6, 5), _unit(rng, 6, 5), _labels(rng, 6, 4)
  w = rng.normal(size=(4, 5)).astype(np.float32)
  p = np.tanh(w)
  e = ref_errors(u, v, y, p)
  np.testing.assert_allclose(np.asarray(losses.prototype_items(u, v, y, p)),
                             e.mean(1), rtol=1e-5)
  total = lambda u_, v_, w_: jnp.mean(losses.prototype_items(u_, v_, y, jnp.tanh(w_)))
  gu, gv, gw = jax.grad(total, argnums=(0, 1, 2))(u, v, w)
  assert not np.any(np.asarray(gu)) and not np.any(np.asarray(gv))  # codes detached
  # dL/dw_c = -(2/(nC)) sum_i sum_{x in u_i, v_i} (z_ic - <x, p_c>) x * (1 - p_c^2)
  n, c_count = y.shape
  want = np.zeros_like(w, dtype=np.float64)
  for i in range(n):
    for c in range(c_count):
      z = 2 * y[i, c] - 1
      for x in (u[i], v[i]):
        want[c] += -(2 / (n * c_count)) * (z - x @ p[c]) * x * (1 - p[c] ** 2)
  np.testing.assert_allclose(np.asarray(gw), want, rtol=1e-4, atol=1e-7)


def test_dns_scores_are_the_worst_labelled_error():
  rng = np.random.default_rng(10)
  u, v, y = _unit(rng, 7, 5), _unit(rng, 7, 5), _labels(rng, 7, 4)
  p = np.tanh(rng.normal(size=(4, 5))).astype(np.float32)
  e = ref_errors(u, v, y, p)
  want = np.array([max([e[i, c] for c in range(4) if y[i, c]], default=0.0)
                   for i in range(7)])
  got = np.asarray(losses.dns_scores(u, v, y, p))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[0] == 0.0  # the empty label row


@pytest.mark.parametrize("classes,bits", [(5, 8), (10, 4)])
def test_model_codes_are_unit_and_w_is_orthogonal_like_torch(classes, bits):
  from nrch_jax.model import NrchNet
  net = NrchNet(bits=bits, num_classes=classes, image_hidden=(6,), text_hidden=(6,))
  rng = np.random.default_rng(11)
  image = rng.normal(size=(3, 7)).astype(np.float32)
  text = rng.normal(size=(3, 5)).astype(np.float32)
  params = net.init(jax.random.key(0), image, text)["params"]
  w = np.asarray(params["W"], np.float64)
  assert w.shape == (classes, bits)
  # torch.nn.init.orthogonal_: orthonormal rows (C <= K) or columns (C > K).
  gram = w @ w.T if classes <= bits else w.T @ w
  np.testing.assert_allclose(gram, np.eye(min(classes, bits)), atol=1e-5)
  out = jax.jit(net.apply)({"params": params}, image, text)
  np.testing.assert_allclose(np.linalg.norm(out["u"], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["v"], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["prototypes"], np.tanh(w), rtol=1e-5, atol=1e-7)
  assert set(params) == {"image_tower", "text_tower", "W"}
