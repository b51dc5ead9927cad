"""SCBCH losses against plain NumPy (float64) references written here."""

import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from scbch_jax import losses

MARGIN, SHIFT = 0.15, 0.8


def bsch(u, v, y, margin=MARGIN, shift=SHIFT, tau=1.0):
  return losses.bsch_loss(u, v, y, margin=margin, shift=shift, tau=tau)


# Jitted once per shape: eager op-by-op dispatch is slow on a loaded CPU.
jit_bsch = jax.jit(bsch, static_argnames=("margin", "shift", "tau"))
grad_bsch = jax.jit(jax.grad(bsch, argnums=(0, 1)))


# ----------------------------------------------------------------- references
def ref_jaccard(y):
  n = len(y)
  t = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      inter = float(np.sum(y[i] * y[j]))
      t[i, j] = inter / (y[i].sum() + y[j].sum() - inter + 1e-8)
  return t


def ref_bsch(u, v, y, margin, shift, tau=1.0):
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  n = len(u)
  s = u @ v.T
  t = ref_jaccard(np.asarray(y, np.float64))
  total = 0.0
  for i in range(n):
    for j in range(n):
      if i == j:
        c1 = c2 = max(s[i, i], 0.0)
      else:
        c1 = s[i, j] if s[i, j] >= s[i, i] - margin else s[i, j] - shift
        c2 = s[i, j] if s[i, j] >= s[j, j] - margin else s[i, j] - shift
      total += tau * math.exp(c1 * (1 - t[i, j]) / tau)
      total += tau * math.exp(c2 * (1 - t[i, j]) / tau)
      if t[i, j] - (i == j) > 0:
        total += math.exp(shift - s[i, j])
  return total / n**2 - np.trace(s) / n


def ref_quant(u, v):
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  return np.abs(u - np.sign(u)).mean() + np.abs(v - np.sign(v)).mean()


def ref_cls(zu, zv, y, w=None):
  def bce(z, t):  # -t log p - (1 - t) log(1 - p), p = sigmoid(z), in float64
    p = 1.0 / (1.0 + np.exp(-z))
    return -(t * np.log(p) + (1 - t) * np.log1p(-p))
  zu, zv, y = (np.asarray(a, np.float64) for a in (zu, zv, y))
  per = 0.5 * (bce(zu, y).mean(1) + bce(zv, y).mean(1))
  w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
  return float(np.mean(w * per))


# --------------------------------------------------------------------- inputs
def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_batch(n, k=8, c=5, seed=0):
  """Unit codes and labels with duplicate codes, equal and empty label rows."""
  rng = np.random.default_rng(seed)
  u = unit(rng.normal(size=(n, k)))
  v = unit(u + 0.8 * rng.normal(size=(n, k)))
  y = (rng.random((n, c)) < 0.35).astype(np.float32)
  if n >= 4:
    u[3] = u[1]  # tied code rows
    v[3] = v[1]
    y[2] = y[0]  # identical label sets
    y[1] = 0.0  # empty label row
    y[0, 0] = 1.0
  return u.astype(np.float32), v.astype(np.float32), y


BATCHES = [make_batch(9, seed=1), make_batch(6, c=3, seed=2),
           make_batch(1, seed=3), make_batch(12, k=4, c=2, seed=4)]


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("batch", BATCHES)
def test_jaccard_matches_reference(batch):
  _, _, y = batch
  np.testing.assert_allclose(jax.jit(losses.label_jaccard)(y), ref_jaccard(y),
                             atol=1e-6)
  np.testing.assert_allclose(losses.label_jaccard_rows(y[:1], y),
                             ref_jaccard(y)[:1], atol=1e-6)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("margin,shift,tau", [(0.15, 0.8, 1.0),
                                              (0.3, 1.2, 0.5)])
def test_bsch_matches_reference(batch, margin, shift, tau):
  u, v, y = batch
  got = jit_bsch(u, v, y, margin=margin, shift=shift, tau=tau)
  np.testing.assert_allclose(got, ref_bsch(u, v, y, margin, shift, tau),
                             rtol=1e-5, atol=1e-5)


def test_bsch_gradient_matches_finite_differences():
  u, v, y = make_batch(5, k=4, c=3, seed=7)
  gu, gv = grad_bsch(u, v, y)
  eps = 1e-6
  for x, g, which in ((u, gu, 0), (v, gv, 1)):
    num = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
      hi, lo = [np.array(a, np.float64) for a in (u, v)], [
          np.array(a, np.float64) for a in (u, v)]
      hi[which][idx] += eps
      lo[which][idx] -= eps
      num[idx] = (ref_bsch(*hi, y, MARGIN, SHIFT)
                  - ref_bsch(*lo, y, MARGIN, SHIFT)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=2e-3, atol=2e-4)


def _partition_loss(u, v, y, bounds):
  total = 0.0
  for a, b in zip(bounds[:-1], bounds[1:]):
    total += losses.bsch_loss_rows(u[a:b], v[a:b], y[a:b], u, v, y, a,
                                   margin=MARGIN, shift=SHIFT)
  return total


def test_bsch_rows_partition_equals_full_values_and_gradients():
  u, v, y = make_batch(12, seed=5)
  part = jax.jit(lambda a, b: _partition_loss(a, b, y, [0, 5, 9, 12]))
  np.testing.assert_allclose(part(u, v), jit_bsch(u, v, y), rtol=1e-6,
                             atol=1e-6)
  g_full = grad_bsch(u, v, y)
  g_part = jax.jit(jax.grad(part, argnums=(0, 1)))(u, v)
  for a, b in zip(g_part, g_full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bsch_rows_traced_row_start_inside_jit():
  u, v, y = make_batch(12, seed=6)
  r = 4

  @jax.jit
  def loss(a, b):
    def one(start):
      rows = lambda x: lax.dynamic_slice_in_dim(x, start, r)
      return losses.bsch_loss_rows(rows(a), rows(b), rows(y), a, b, y, start,
                                   margin=MARGIN, shift=SHIFT)
    return sum(one(jnp.int32(s)) for s in (0, 4, 8))

  want = ref_bsch(u, v, y, MARGIN, SHIFT)
  np.testing.assert_allclose(loss(u, v), want, rtol=1e-5, atol=1e-5)
  g = jax.jit(jax.grad(loss, argnums=(0, 1)))(u, v)
  g_ref = grad_bsch(u, v, y)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bsch_rows_under_shard_map_with_all_gather():
  """The data-parallel use: own rows vs all-gathered batch, psum of shares."""
  devices = np.array(jax.devices()[:8])
  mesh = Mesh(devices, ("data",))
  n = 2 * len(devices)
  u, v, y = make_batch(n, seed=8)

  def body(a, b, lab):
    start = lax.axis_index("data") * a.shape[0]
    ga, gb, gl = (lax.all_gather(x, "data", tiled=True) for x in (a, b, lab))
    share = losses.bsch_loss_rows(a, b, lab, ga, gb, gl, start, margin=MARGIN,
                                  shift=SHIFT)
    return lax.psum(share, "data")

  sharded = jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(P("data"), P("data"), P("data")),
      out_specs=P()))
  np.testing.assert_allclose(sharded(u, v, y), ref_bsch(u, v, y, MARGIN, SHIFT),
                             rtol=1e-5, atol=1e-5)
  g = jax.jit(jax.grad(sharded, argnums=(0, 1)))(u, v, y)
  g_ref = grad_bsch(u, v, y)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", BATCHES)
def test_quantization_matches_reference(batch):
  u, v, _ = batch
  u = u.copy()
  u[0, 0] = 0.0  # sign(0) = 0 in both
  np.testing.assert_allclose(jax.jit(losses.quantization_loss)(u, v),
                             ref_quant(u, v),
                             rtol=1e-6)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("weighted", [False, True])
def test_classification_matches_reference(batch, weighted):
  _, _, y = batch
  rng = np.random.default_rng(len(y))
  zu = rng.normal(scale=3.0, size=y.shape).astype(np.float32)
  zv = rng.normal(scale=3.0, size=y.shape).astype(np.float32)
  w = rng.uniform(0.5, 1.0, size=len(y)).astype(np.float32) if weighted else None
  np.testing.assert_allclose(jax.jit(losses.classification_loss)(zu, zv, y, w),
                             ref_cls(zu, zv, y, w), rtol=1e-5)


def test_classification_stable_for_large_logits():
  y = np.array([[1.0, 0.0]], np.float32)
  z = np.array([[-200.0, 200.0]], np.float32)
  got = losses.classification_loss(z, z, y)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, 200.0, rtol=1e-6)  # log-sigmoid(-200) = -200


@pytest.mark.parametrize("batch", [BATCHES[0], BATCHES[2]])
def test_gradients_finite_with_empty_labels_and_batch_of_one(batch):
  u, v, y = batch
  y = y.copy()
  y[0] = 0.0

  def total(a, b, zu, zv):
    return (losses.bsch_loss(a, b, y, margin=MARGIN, shift=SHIFT)
            + losses.quantization_loss(a, b)
            + losses.classification_loss(zu, zv, y, jnp.ones(len(y))))

  z = np.zeros_like(y)
  grads = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))(u, v, z, z)
  for g in grads:
    assert np.all(np.isfinite(g))
  assert np.any(grads[0] != 0)


def test_bad_inputs_raise():
  u, v, y = make_batch(6)
  with pytest.raises(ValueError, match="labels"):
    losses.bsch_loss(u, v, y * 2, margin=MARGIN, shift=SHIFT)
  with pytest.raises(AssertionError, match="`v`"):
    losses.bsch_loss(u, v[:, :3], y, margin=MARGIN, shift=SHIFT)
  with pytest.raises(AssertionError, match="labels"):
    losses.bsch_loss(u, v, y[:4], margin=MARGIN, shift=SHIFT)
  with pytest.raises(ValueError, match="tau"):
    losses.bsch_loss(u, v, y, margin=MARGIN, shift=SHIFT, tau=0.0)
  with pytest.raises(ValueError, match="row_start"):
    losses.bsch_loss_rows(u[:2], v[:2], y[:2], u, v, y, 5, margin=MARGIN,
                          shift=SHIFT)
  with pytest.raises(AssertionError, match="rank"):
    losses.quantization_loss(u[0], v[0])
  with pytest.raises(AssertionError, match="weights"):
    losses.classification_loss(y, y, y, jnp.ones(3))
  with pytest.raises(AssertionError, match="classes"):
    losses.label_jaccard_rows(y[:, :2], y)
