"""ScbchNet shapes, normalisation, initialisation, codes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.codes import to_codes
from scbch_jax import model


def build(bits, classes, d_img=12, d_txt=7, n=5, seed=0, **kwargs):
  net = model.ScbchNet(bits=bits, num_classes=classes, image_hidden=(16, 8),
                       text_hidden=(9,), **kwargs)
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(n, d_img)).astype(np.float32)
  text = rng.random((n, d_txt)).astype(np.float32)
  params = jax.jit(net.init)(jax.random.key(seed), image, text)
  return net, params, image, text


@pytest.mark.parametrize("bits,classes", [(16, 5), (4, 9)])
def test_shapes_unit_norm_and_heads(bits, classes):
  net, params, image, text = build(bits, classes)
  out = jax.jit(net.apply)(params, image, text)
  assert out["u"].shape == out["v"].shape == (5, bits)
  assert out["logits_u"].shape == out["logits_v"].shape == (5, classes)
  for key in ("u", "v"):
    np.testing.assert_allclose(np.linalg.norm(out[key], axis=1), 1.0,
                               rtol=1e-5)
  p = params["params"]
  for name in ("W_u", "W_v"):
    w = np.asarray(p[name], np.float64)
    assert w.shape == (bits, classes)
    gram = w.T @ w if bits >= classes else w @ w.T
    np.testing.assert_allclose(gram, np.eye(min(bits, classes)), atol=1e-5)
  np.testing.assert_allclose(out["logits_u"],
                             np.asarray(out["u"]) @ np.asarray(p["W_u"]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits_v"],
                             np.asarray(out["v"]) @ np.asarray(p["W_v"]),
                             rtol=1e-5, atol=1e-6)


def test_towers_match_numpy_forward_and_encoders():
  net, params, image, text = build(8, 3, n=1)
  p = params["params"]

  def ref_tower(x, tower, n_layers):
    for i in range(n_layers):
      layer = tower[f"TorchDense_{i}"]
      x = x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
      if i < n_layers - 1:
        x = np.maximum(x, 0.0)
    x = np.tanh(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  u = net.apply(params, image, method=model.ScbchNet.encode_image)
  v = net.apply(params, text, method=model.ScbchNet.encode_text)
  np.testing.assert_allclose(u, ref_tower(image, p["image_tower"], 3),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(v, ref_tower(text, p["text_tower"], 2),
                             rtol=1e-5, atol=1e-6)


def test_torch_linear_init_bounds():
  net = model.ScbchNet(bits=8, num_classes=3, image_hidden=(256,),
                       text_hidden=(4,))
  params = jax.jit(net.init)(jax.random.key(1), jnp.zeros((1, 400)),
                             jnp.zeros((1, 6)))
  layer = params["params"]["image_tower"]["TorchDense_0"]
  bound = 1.0 / np.sqrt(400)
  for name in ("kernel", "bias"):
    x = np.asarray(layer[name])
    assert np.all(np.abs(x) <= bound)
  kernel = np.asarray(layer["kernel"])
  # Uniform on [-b, b]: the extremes are reached and the std is b / sqrt(3).
  assert np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)


def test_codes_of_outputs_are_plus_minus_one():
  net, params, image, text = build(16, 4)
  out = net.apply(params, image, text)
  assert set(np.unique(to_codes(out["u"]))) <= {-1.0, 1.0}


def test_tower_parameter_tree_is_unchanged():
  # Checkpoints depend on these paths and shapes.
  _, params, _, _ = build(8, 3)
  shapes = jax.tree.map(np.shape, params["params"])
  assert shapes == {
      "image_tower": {"TorchDense_0": {"kernel": (12, 16), "bias": (16,)},
                      "TorchDense_1": {"kernel": (16, 8), "bias": (8,)},
                      "TorchDense_2": {"kernel": (8, 8), "bias": (8,)}},
      "text_tower": {"TorchDense_0": {"kernel": (7, 9), "bias": (9,)},
                     "TorchDense_1": {"kernel": (9, 8), "bias": (8,)}},
      "W_u": (8, 3), "W_v": (8, 3)}


def test_bfloat16_compute_keeps_float32_outputs():
  net, params, image, text = build(8, 3, dtype=jnp.bfloat16)
  out = net.apply(params, image, text)
  assert out["u"].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out["u"], axis=1), 1.0, rtol=1e-5)


def test_bad_inputs_raise():
  net, params, image, text = build(8, 3)
  with pytest.raises(ValueError, match="batch size"):
    net.apply(params, image, text[:3])
  with pytest.raises(ValueError, match="`image`"):
    net.apply(params, image[0], method=model.ScbchNet.encode_image)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_scbch_step_has_no_host_round_trip(mode):
  """Placed inputs: SCBCH's DataParallel steps run under transfer_guard('disallow')."""
  import jax.numpy as jnp
  from common import parallel
  from configs import scbch as scbch_configs
  from scbch_jax.train import ScbchMethod
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(bits=8, image_hidden=(16, 16), text_hidden=(16,), k=3))
  method = ScbchMethod(config, image_dim=12, text_dim=10, num_classes=5)
  dp = parallel.DataParallel(method.step_body, mode=mode,
                             mesh=parallel.make_mesh(jax.devices()[:8]), max_phases=1)
  rng = np.random.default_rng(0)
  placed = []
  for step in range(3):
    batch = {"image": rng.normal(size=(16, 12)).astype(np.float32),
             "text": rng.normal(size=(16, 10)).astype(np.float32),
             "labels": (rng.random((16, 5)) < 0.3).astype(np.float32),
             "index": np.arange(16, dtype=np.int32)}
    placed.append((dp.put_rows(batch), dp.put_rows({"weight": np.ones(16, np.float32)}),
                   dp.put_state({"epoch": jnp.int32(0), "step_in_epoch": jnp.int32(step)})))
  state = dp.put_state(method.init_state())
  state, _ = dp.step(state, *placed[0])  # compiles (tracing makes constants)
  with jax.transfer_guard("disallow"):
    for batch, extras, context in placed:
      state, metrics = dp.step(state, batch, extras, context)
  assert np.isfinite(jax.device_get(metrics["loss"]))
