"""DCGMH augmentations: determinism, statistics, data-parallel equality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dcgmh_jax import augment

NUM_DEVICES = 8


# Jitted once per shape and reused across tests.
_image = jax.jit(augment.augment_image)
_text = jax.jit(augment.augment_text)


def _mesh():
  assert jax.device_count() == NUM_DEVICES, "conftest must set 8 CPU devices"
  return jax.make_mesh((NUM_DEVICES,), ("data",))


def _features(seed, batch=16, dim=12, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(batch, dim))).astype(np.float32)


@pytest.mark.parametrize("fn", [_image, _text])
def test_deterministic_by_key(fn):
  x = _features(0)
  a = fn(x, jax.random.key(3))
  b = fn(x, jax.random.key(3))
  c = fn(x, jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))
  assert a.shape == x.shape and a.dtype == x.dtype


def test_image_statistics():
  key = jax.random.key(7)
  x = _features(2, batch=256, dim=64, scale=3.0)
  out = np.asarray(_image(x, key), np.float64)
  m = out.mean()
  centred_in = x - x.mean()
  centred_out = out - m
  # One contrast factor per call: least-squares slope in [0.8, 1.2].
  factor = (centred_in * centred_out).sum() / (centred_in ** 2).sum()
  assert 0.8 - 1e-3 <= factor <= 1.2 + 1e-3
  resid = centred_out - factor * centred_in
  want_std = np.sqrt((0.1 * factor) ** 2 + 0.05 ** 2)
  assert abs(resid.std() / want_std - 1.0) < 0.03
  # Zero input: output std between the extremes of the factor range.
  z = np.asarray(_image(np.zeros((256, 64), np.float32), key))
  assert np.sqrt(0.08 ** 2 + 0.05 ** 2) * 0.97 < z.std() < np.sqrt(
      0.12 ** 2 + 0.05 ** 2) * 1.03


def test_text_statistics_and_swaps():
  batch, dim = 256, 40
  x = np.tile(np.arange(dim, dtype=np.float32) + 10.0, (batch, 1))
  out = np.asarray(_text(x, jax.random.key(5)))
  kept = out != 0
  assert abs(1.0 - kept.mean() - 0.1) < 0.015
  # Columns are permuted identically for all rows, by at most 5 transpositions.
  source = np.round(np.where(kept, out, np.nan) - 10.0)
  perm = np.array([np.nanmedian(source[:, j]) for j in range(dim)]).astype(int)
  assert sorted(perm) == list(range(dim))
  np.testing.assert_array_equal(np.where(kept, source, perm[None, :]),
                                np.broadcast_to(perm, (batch, dim)))
  assert 1 <= np.sum(perm != np.arange(dim)) <= 10
  noise = out - (perm[None, :] + 10.0)
  assert abs(noise[kept].std() - 0.1) < 0.005


def test_swap_permutation_matches_sequential_swaps():
  key = jax.random.key(9)
  perm = np.asarray(augment.swap_permutation(key, 7, num_swaps=5))
  first_key, offset_key = jax.random.split(key)
  a = np.asarray(jax.random.randint(first_key, (5,), 0, 7))
  b = (a + 1 + np.asarray(jax.random.randint(offset_key, (5,), 0, 6))) % 7
  cols = np.arange(7)[None, :] * np.ones((2, 1))
  for i, j in zip(a, b):
    assert i != j
    cols[:, [i, j]] = cols[:, [j, i]]
  np.testing.assert_array_equal(perm, cols[0].astype(int))


def test_bad_input():
  x = _features(0)
  x[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    augment.augment_image(x, jax.random.key(0))
  with pytest.raises(ValueError, match="row_ids"):
    augment.augment_text(_features(0), jax.random.key(0), row_ids=jnp.arange(3))
  with pytest.raises(ValueError, match="2 feature columns"):
    augment.augment_text(np.ones((4, 1), np.float32), jax.random.key(0))
  with pytest.raises(ValueError, match="mean_mask"):
    augment.augment_image(_features(0), jax.random.key(0),
                          mean_mask=jnp.ones(2, bool))


def test_data_parallel_equals_single_device():
  """Full batch on one device == shard_map over 8 devices, concatenated.

  Checked with explicit global row_ids and with the derived default, with and
  without a mean_mask, all in one compiled shard_map. Also shows a row's
  result depends on its global row id, not on its local position.
  """
  mesh = _mesh()
  batch = 2 * NUM_DEVICES
  image, text = _features(3, batch, 12, 2.0), _features(4, batch, 12)
  mean_mask = np.arange(batch) % 3 == 0
  key = jax.random.key(11)


  def body(img, txt, ids, msk):
    outs = []
    for row_ids in (ids, None):
      outs += [augment.augment_image(img, key, row_ids=row_ids,
                                     axis_name="data"),
               augment.augment_image(img, key, row_ids=row_ids,
                                     axis_name="data", mean_mask=msk),
               augment.augment_text(txt, key, row_ids=row_ids,
                                    axis_name="data")]
    return tuple(outs)

  # Both sides jitted so XLA makes the same fusion (FMA) choices.
  want = (_image(image, key), _image(image, key, mean_mask=mean_mask),
          _text(text, key))
  shard = NamedSharding(mesh, P("data"))
  args = [jax.device_put(a, shard) for a in
          (image, text, np.arange(batch, dtype=np.int32), mean_mask)]
  fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data"),) * 4,
                             out_specs=(P("data"),) * 6))
  got = fn(*args)
  for offset in (0, 3):
    for i in (0, 1):
      np.testing.assert_allclose(np.asarray(got[offset + i]),
                                 np.asarray(want[i]), atol=2e-6, rtol=0)
    np.testing.assert_array_equal(np.asarray(got[offset + 2]),
                                  np.asarray(want[2]))
  # The mask changes the contrast mean, so the masked output differs.
  assert not np.allclose(np.asarray(want[0]), np.asarray(want[1]))
