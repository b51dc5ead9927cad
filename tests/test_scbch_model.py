"""ScbchNet shapes, normalisation, initialisation, codes; presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scbch_jax import model
from scbch_jax import presets


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


def test_codes_are_plus_minus_one():
  x = jnp.array([[0.3, -0.2, 0.0, -0.0]])
  codes = np.asarray(model.to_codes(x))
  np.testing.assert_array_equal(codes, np.where(np.asarray(x) >= 0, 1.0, -1.0))
  net, params, image, text = build(16, 4)
  out = net.apply(params, image, text)
  assert set(np.unique(model.to_codes(out["u"]))) <= {-1.0, 1.0}


def test_l2_normalize_zero_row_has_finite_gradient():
  g = jax.grad(lambda x: model.l2_normalize(x).sum())(jnp.zeros((2, 3)))
  assert np.all(np.isfinite(g))
  x = np.array([[3.0, 4.0]], np.float32)
  np.testing.assert_allclose(model.l2_normalize(x), x / 5.0, rtol=1e-6)


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


def test_presets_values_and_errors():
  mir = presets.get_preset("mirflickr25k")
  assert (mir.num_classes, mir.text_dim, mir.margin, mir.shift) == (
      24, 1386, 0.15, 0.8)
  coco = presets.get_preset("mscoco")
  assert (coco.num_classes, coco.text_dim, coco.num_query) == (80, 300, 5000)
  iapr = presets.get_preset("iaprtc12")
  assert (iapr.num_classes, iapr.margin, iapr.shift) == (255, 0.3, 1.2)
  nus = presets.get_preset("nuswide21")
  assert (nus.num_query, nus.num_train) == (2100, 10500)
  assert (mir.alpha, mir.beta, mir.lr, mir.cscc_start_epoch) == (
      0.7, 0.3, 1e-4, 5)
  assert set(presets.PRESETS) == {"mirflickr25k", "nuswide21", "nuswide10",
                                  "mscoco", "iaprtc12", "synthetic"}
  with pytest.raises(KeyError, match="mirflickr25k"):
    presets.get_preset("flickr")
  with pytest.raises(dataclasses.FrozenInstanceError):
    mir.k = 3
