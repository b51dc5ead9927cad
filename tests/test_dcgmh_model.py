"""DcgmhNet shapes, init, cross-device BatchNorm, codes."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.codes import to_codes
from dcgmh_jax import model as model_lib

NUM_DEVICES = 8
D_IMG, D_TXT, BITS, CLASSES = 12, 10, 4, 5


def _inputs(batch, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(batch, D_IMG)).astype(np.float32),
          rng.random((batch, D_TXT)).astype(np.float32))


def _init(net, image, text, seed=0):
  return jax.jit(lambda k: net.init(k, image, text, train=False))(
      jax.random.key(seed))


def _net(**kw):
  return model_lib.DcgmhNet(bits=BITS, num_classes=CLASSES, hidden=16,
                            fused=8, **kw)


def test_shapes_centers_and_codes():
  image, text = _inputs(6)
  net = _net()
  variables = _init(net, image, text)
  params = variables["params"]
  # Checkpoints depend on these paths and shapes.
  def tower(d_in):
    return {"dense1": {"kernel": (d_in, 16), "bias": (16,)},
            "bn1": {"scale": (16,), "bias": (16,)},
            "dense2": {"kernel": (16, 8), "bias": (8,)},
            "bn2": {"scale": (8,), "bias": (8,)}}

  want = {"image_mlp": tower(D_IMG), "text_mlp": tower(D_TXT),
          "hash_dense": {"kernel": (8, BITS), "bias": (BITS,)},
          "hash_bn": {"scale": (BITS,), "bias": (BITS,)},
          "centers": (CLASSES, BITS)}
  assert jax.tree.map(np.shape, params) == want
  stats = jax.tree.map(np.shape, variables["batch_stats"])
  assert stats["hash_bn"] == {"mean": (BITS,), "var": (BITS,)}
  h, _ = jax.jit(lambda v: net.apply(
      v, image, text, train=True, mutable=["batch_stats"]))(variables)
  assert h.shape == (6, BITS) and np.all(np.abs(np.asarray(h)) < 1)
  h_eval = jax.jit(lambda v: net.apply(v, image, text, train=False))(variables)
  assert h_eval.shape == (6, BITS) and np.all(np.isfinite(np.asarray(h_eval)))
  # Default fused width is 128·bits.
  wide = model_lib.DcgmhNet(bits=2, num_classes=3, hidden=4)
  shapes = jax.eval_shape(
      lambda k: wide.init(k, image, text, train=False), jax.random.key(0))
  assert shapes["params"]["hash_dense"]["kernel"].shape == (256, 2)
  with pytest.raises(ValueError, match="image"):
    net.apply(variables, image[:3], text, train=False)
  with pytest.raises(ValueError, match="bits"):
    model_lib.DcgmhNet(bits=0, num_classes=3).init(
        jax.random.key(0), image, text, train=False)


def test_codes_of_outputs_are_plus_minus_one():
  image, text = _inputs(6)
  net = _net()
  variables = _init(net, image, text)
  h = net.apply(variables, image, text, train=False)
  assert set(np.unique(np.asarray(to_codes(h)))) <= {-1.0, 1.0}


def test_init_matches_pytorch_defaults():
  net = model_lib.DcgmhNet(bits=64, num_classes=64, hidden=256, fused=128)
  image, text = _inputs(2)
  params = _init(net, image, text, seed=1)["params"]
  centers = np.asarray(params["centers"])
  assert abs(centers.std() - 1.0) < 0.05 and abs(centers.mean()) < 0.05
  for path, fan_in in ((("image_mlp", "dense1"), D_IMG),
                       (("text_mlp", "dense1"), D_TXT),
                       (("image_mlp", "dense2"), 256),
                       (("hash_dense",), 128)):
    layer = params
    for name in path:
      layer = layer[name]
    bound = 1.0 / np.sqrt(fan_in)
    for leaf in ("kernel", "bias"):
      w = np.asarray(layer[leaf])
      assert np.all(np.abs(w) <= bound), (path, leaf)
    kernel = np.asarray(layer["kernel"])
    # U(−b, b) has std b/√3.
    assert abs(kernel.std() / (bound / np.sqrt(3)) - 1.0) < 0.1, path
    assert np.abs(np.asarray(layer["bias"])).max() > bound / 10


def _sharded_apply(net, variables, image, text, *, with_state=True):
  """h (and the replicated updated batch_stats) from an 8-way shard_map."""
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",))

  def body(v, img, txt):
    h, state = net.apply(v, img, txt, train=True, mutable=["batch_stats"])
    return (h, state) if with_state else h

  fn = jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
      out_specs=(P("data"), P()) if with_state else P("data")))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return fn(jax.device_put(variables, rep), jax.device_put(image, shard),
            jax.device_put(text, shard))


def test_batchnorm_sync_matches_global_batch():
  assert jax.device_count() == NUM_DEVICES
  image, text = _inputs(3 * NUM_DEVICES, seed=2)
  image[::2] += 3.0                         # local batches differ in mean
  ref_net = _net()
  variables = _init(ref_net, image, text, seed=4)
  want_h, want_state = jax.jit(
      lambda v, a, b: ref_net.apply(v, a, b, train=True,
                                    mutable=["batch_stats"]))(
                                        variables, image, text)
  got_h, got_state = _sharded_apply(_net(axis_name="data"), variables, image,
                                    text)
  np.testing.assert_allclose(np.asarray(got_h), np.asarray(want_h),
                             atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5),
               got_state["batch_stats"], want_state["batch_stats"])
  # The check can fail: without the sync, local statistics differ.
  unsynced_h = _sharded_apply(ref_net, variables, image, text,
                              with_state=False)
  assert not np.allclose(np.asarray(unsynced_h), np.asarray(want_h),
                         atol=1e-3)
