"""SCBCH train step: D devices == 1 device on the same global batch, both drivers."""

import jax
import numpy as np
import pytest

from common import parallel
from configs import scbch as scbch_configs
from scbch_jax.train import ScbchMethod

B, D_IMG, D_TXT, C = 16, 12, 10, 5


def _method(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(bits=8, image_hidden=(16, 16), text_hidden=(16,), lr=1e-2, k=3,
                     **overrides))
  return ScbchMethod(config, image_dim=D_IMG, text_dim=D_TXT, num_classes=C)


def _train_arrays():
  rng = np.random.default_rng(0)
  labels = (rng.random((32, C)) < 0.3).astype(np.float32)
  labels[3] = 0  # an empty label row
  return {"labels": labels,
          "image": rng.normal(size=(32, D_IMG)).astype(np.float32),
          "text": rng.normal(size=(32, D_TXT)).astype(np.float32)}


def _batches(steps):
  rng = np.random.default_rng(1)
  for s in range(steps):
    labels = (rng.random((B, C)) < 0.3).astype(np.float32)
    labels[s % B] = 0
    yield ({"image": rng.normal(size=(B, D_IMG)).astype(np.float32),
            "text": rng.normal(size=(B, D_TXT)).astype(np.float32),
            "labels": labels, "index": np.arange(B, dtype=np.int32)},
           {"weight": rng.uniform(0.5, 1.0, size=B).astype(np.float32)})


def _run(method, mode, devices, steps=3):
  dp = parallel.DataParallel(method.step_body, mode=mode,
                             mesh=parallel.make_mesh(jax.devices()[:devices]),
                             max_phases=len(method.phases))
  state = dp.put_state(method.init_state())
  losses = []
  for batch, extras in _batches(steps):
    state, metrics = dp.step(state, dp.put_rows(batch), dp.put_rows(extras))
    losses.append(float(metrics["loss"]))
  return jax.device_get(dp.get_state(state)), losses


def test_eight_devices_equal_one_device_for_both_drivers():
  method = _method()
  ref_state, ref_losses = _run(method, "shard_map", 1)
  for mode in parallel.PARALLEL_MODES:
    state, losses = _run(method, mode, 8)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    assert int(state.step) == 3


def test_step_matches_a_plain_single_device_gradient_step():
  """The body's loss/grad equal jax.grad of the global-view losses (no collectives)."""
  import jax.numpy as jnp
  import optax
  from scbch_jax import losses
  method = _method()
  cfg = method.config
  state0 = method.init_state()
  batch, extras = next(_batches(1))

  def global_loss(params):
    out = method.model.apply({"params": params}, batch["image"], batch["text"])
    return (cfg.alpha * losses.bsch_loss(out["u"], out["v"], batch["labels"],
                                         margin=cfg.margin, shift=cfg.shift, tau=cfg.tau)
            + cfg.beta * losses.quantization_loss(out["u"], out["v"])
            + losses.classification_loss(out["logits_u"], out["logits_v"],
                                         batch["labels"], extras["weight"]))

  want_loss, grads = jax.value_and_grad(global_loss)(state0.params)
  updates, _ = method.tx.update(grads, state0.opt_state, state0.params)
  want_params = optax.apply_updates(state0.params, updates)
  state, losses_ = _run(method, "shard_map", 8, steps=1)
  np.testing.assert_allclose(losses_[0], float(want_loss), rtol=1e-5)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-6)
  del jnp


def test_cscc_weights_are_ones_before_start_and_in_range_after():
  method = _method(cscc_start_epoch=1)
  state = method.init_state()
  before = method.epoch_extras(state, 0, _train_arrays())["weight"]
  after = method.epoch_extras(state, 1, _train_arrays())["weight"]
  np.testing.assert_array_equal(before, np.ones(32, np.float32))
  assert after.shape == (32,)
  assert np.all(after >= 0.5 - 1e-6) and np.all(after <= 1.0 + 1e-6)
  assert after[3] == pytest.approx(0.5)  # empty label row: r = 0 -> w = gamma


def test_a_swapped_objective_is_used_by_the_step():
  """The README's one-line ablation equals the same run with beta=0 and w=1."""
  import jax.numpy as jnp
  import ml_collections
  from scbch_jax import scbch_objective

  def ablation(out, labels, weights, config):
    """Ablation: unweighted classification (no CSCC) and no L_q."""
    no_quant = ml_collections.FrozenConfigDict({**config.as_configdict(), "beta": 0.0})
    return scbch_objective(out, labels, jnp.ones_like(weights), no_quant)

  swapped = _method()
  swapped.objective = ablation
  plain = _method(beta=0.0)
  got, got_losses = _run(swapped, "shard_map", 8, steps=1)
  dp = parallel.DataParallel(plain.step_body, mesh=parallel.make_mesh(jax.devices()[:8]))
  state = dp.put_state(plain.init_state())
  batch, _ = next(_batches(1))
  state, metrics = dp.step(state, dp.put_rows(batch),
                           dp.put_rows({"weight": np.ones(B, np.float32)}))
  np.testing.assert_allclose(got_losses[0], float(metrics["loss"]), rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got.params), jax.tree.leaves(dp.get_state(state).params)):
    np.testing.assert_allclose(g, np.asarray(w), rtol=1e-6, atol=1e-7)


def test_cscc_weights_from_a_bfloat16_code_matrix_match_the_reference_on_it():
  """config.cscc_dtype='bfloat16': the weights are the dense float64 CSCC of the
  unit code rows rounded to bfloat16 (float32 math on the rounded matrix), and
  float32 (the default) is the CSCC of the codes themselves."""
  import jax.numpy as jnp
  from test_scbch_cscc import ref_weights  # pylint: disable=import-error
  train = _train_arrays()
  for dtype in ("float32", "bfloat16"):
    method = _method(cscc_start_epoch=0, cscc_dtype=dtype)
    state = method.init_state()
    got = method.epoch_extras(state, 0, train)["weight"]
    u, v = method.encode_continuous(state.params, train["image"], train["text"])
    if dtype == "bfloat16":
      unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
      u, v = (np.asarray(unit(np.asarray(x, np.float64)).astype(np.float32)
                         .astype(jnp.bfloat16), np.float64) for x in (u, v))
    want = ref_weights(u, v, train["labels"], k=method.config.k, gamma=method.config.gamma)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5, err_msg=dtype)
