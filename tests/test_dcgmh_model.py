"""DcgmhNet shapes, init, cross-device BatchNorm, codes; DCGMH presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dcgmh_jax import model as model_lib
from dcgmh_jax import presets

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
  assert params["centers"].shape == (CLASSES, BITS)
  assert params["image_mlp"]["dense1"]["kernel"].shape == (D_IMG, 16)
  assert params["text_mlp"]["dense2"]["kernel"].shape == (16, 8)
  assert params["hash_dense"]["kernel"].shape == (8, BITS)
  (h, centers), _ = jax.jit(lambda v: net.apply(
      v, image, text, train=True, method=net.hash_and_centers,
      mutable=["batch_stats"]))(variables)
  assert h.shape == (6, BITS) and np.all(np.abs(np.asarray(h)) < 1)
  np.testing.assert_array_equal(np.asarray(centers),
                                np.asarray(params["centers"]))
  np.testing.assert_array_equal(
      np.asarray(net.apply(variables, method=net.centers)),
      np.asarray(params["centers"]))
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


def test_to_codes():
  h = jnp.array([[0.3, -0.2, 0.0, -0.0], [-1e-8, 1e-8, 0.9, -0.9]])
  codes = np.asarray(model_lib.to_codes(h))
  want = np.where(np.asarray(h) >= 0, 1.0, -1.0)
  np.testing.assert_array_equal(codes, want)
  assert set(np.unique(codes)) <= {-1.0, 1.0}


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


def test_presets():
  mir = presets.get_preset("mirflickr25k")
  assert (mir.num_classes, mir.lr, mir.warmup_epochs, mir.beta, mir.eta,
          mir.seed) == (24, 0.005, 5, 0.15, 1.0, 851)
  nus = presets.get_preset("nuswide21")
  assert (nus.num_classes, nus.lr, nus.warmup_epochs, nus.beta, nus.eta,
          nus.seed) == (21, 0.001, 5, 0.05, 1.5, 1618)
  coco = presets.get_preset("mscoco")
  assert (coco.num_classes, coco.lr, coco.warmup_epochs, coco.beta, coco.eta,
          coco.seed) == (80, 0.01, 30, 0.2, 1.2, 1401)
  for p in (mir, nus, coco):
    assert (p.alpha, p.gamma, p.margin, p.k, p.momentum, p.weight_decay,
            p.lr_decay_factor, p.lr_decay_every, p.epochs, p.batch_size,
            p.bits, p.noise_ratio, p.hidden, p.fused_width) == (
                1.0, 5.0, 0.7, 2, 0.9, 1e-5, 0.1, 100, 150, 48, 32, 0.4,
                4096, 4096)
  assert "synthetic" in presets.PRESETS
  with pytest.raises(ValueError, match="mirflickr25k"):
    presets.get_preset("flickr")
  with pytest.raises(dataclasses.FrozenInstanceError):
    mir.lr = 1.0  # type: ignore[misc]
