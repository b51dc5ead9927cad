"""config.release_compat for DCGMH: each release quirk against a reference of
the release's behaviour; compat off keeps the default path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import parallel
from common.run_config import ConfigError
from configs import dcgmh as dcgmh_configs
from dcgmh_jax import objectives
from dcgmh_jax import train as train_lib
from dcgmh_jax.train import DcgmhMethod

B, N, D_IMG, D_TXT, C = 16, 48, 12, 10, 4


def _config(**overrides):
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(bits=8, hidden=16, fused=16, lr=0.05, warmup_epochs=1))
  config.update(overrides)
  return config


def _labels():
  rng = np.random.default_rng(0)
  labels = (rng.random((N, C)) < 0.4).astype(np.float32)
  labels[:6] = labels[6]
  return labels


def _method(truth=True, **overrides):
  labels = _labels()
  return DcgmhMethod(_config(**overrides), image_dim=D_IMG, text_dim=D_TXT,
                     train_labels=labels, noise_ratio=0.4,
                     train_truth_labels=labels[::-1].copy() if truth else None)


def _batch(seed=1):
  rng = np.random.default_rng(seed)
  idx = rng.permutation(N)[:B].astype(np.int32)
  return {"image": rng.normal(size=(B, D_IMG)).astype(np.float32),
          "text": rng.poisson(1.0, size=(B, D_TXT)).astype(np.float32),
          "labels": _labels()[idx], "index": idx}


def _step(method, state, batch, epoch, phase, devices=1):
  dp = parallel.DataParallel(method.step_body, mesh=parallel.make_mesh(
      jax.devices()[:devices]), max_phases=2, donate=False)
  new, metrics = dp.step(dp.put_state(state), dp.put_rows(batch), dp.put_rows({}),
                         {"epoch": epoch, "step_in_epoch": 0}, phase)
  return jax.device_get(dp.get_state(new)), jax.device_get(metrics)


def test_refused_without_the_truth_and_labelled_as_a_leak():
  with pytest.raises(ConfigError, match="release_compat"):
    _method(truth=False, release_compat=True)
  method = _method(release_compat=True)
  assert "leaks ground truth" in method.resolved["release_compat"]
  assert "release_compat" not in _method().resolved
  with pytest.raises(ConfigError, match="config.augment_whole_batch"):
    train_lib.check_config(_config(release_compat=True, augment_whole_batch=True))


@pytest.mark.parametrize("epoch", [4, 5, 9])
def test_a_batchnorm_in_inference_mode_from_epoch_5(epoch):
  """Warm-up step: from epoch 5 the update equals plain SGD on the loss of the
  network with RUNNING statistics, which stay unchanged; before it, the step
  equals the default (training-mode BN) step bit for bit."""
  method = _method(release_compat=True, warmup_epochs=20)
  state = jax.device_get(method.init_state())
  # Non-trivial running statistics.
  state = state.replace(batch_stats=jax.tree.map(
      lambda x: (x + 0.3 * np.sin(np.arange(x.size)).reshape(x.shape)).astype(np.float32),
      state.batch_stats))
  batch = _batch()
  got, metrics = _step(method, state, batch, epoch, "warmup", devices=8)
  if epoch < 5:
    want, _ = _step(_method(warmup_epochs=20), state, batch, epoch, "warmup")
    for g, w in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return
  cfg = method.config

  def loss_fn(params):
    h = method.eval_model.apply({"params": params, "batch_stats": state.batch_stats},
                                batch["image"], batch["text"], train=False)
    return objectives.warmup_objective(h, params["centers"], batch["labels"], cfg,
                                       method.variant)[0]

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  lr = train_lib.learning_rate(cfg, jnp.int32(epoch))
  want = jax.tree.map(lambda p, g: p - lr * (g + cfg.weight_decay * p), state.params, grads)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(g, w)


def _release_reconstruct(noisy_sim, bank_sim, noisy_or_not, train_labels, flags, k=2):
  """The release's Engine.reconstruct loop (NumPy), stable top-k ties."""
  out = np.zeros((len(noisy_sim), train_labels.shape[1]), np.float32)
  dots = noisy_sim @ bank_sim.T
  for i in range(len(noisy_sim)):
    top = np.argsort(-dots[i], kind="stable")[:k]
    valid = top[noisy_or_not[top].astype(bool)]
    if len(valid):
      select_flags = flags[valid]
      unique, counts = np.unique(select_flags, return_counts=True)
      if counts.max() == k:
        out[i] = train_labels[valid][select_flags == unique[counts.argmax()]][0]
  return out, out.sum(1) > 0


def test_c_reconstruction_compares_clean_labels_like_the_release():
  rng = np.random.default_rng(5)
  items, classes, batch = 40, 3, 12
  clean = (rng.random((items, classes)) < 0.5).astype(np.float32)
  clean[::3] = clean[1]
  observed = np.where(rng.random((items, classes)) < 0.2, 1 - clean, clean)
  flags = np.unique(clean, axis=0, return_inverse=True)[1].ravel()  # clean label ids
  bank_sim = rng.normal(size=(items, classes)).astype(np.float32)
  bank_clean = rng.random(items) < 0.7
  sim = rng.normal(size=(batch, classes)).astype(np.float32)
  noisy = rng.random(batch) < 0.6
  own = observed[:batch]
  new, rec = train_lib.reconstruct_labels_release(
      jnp.asarray(sim), jnp.asarray(bank_sim), jnp.asarray(bank_clean),
      jnp.asarray(observed), jnp.asarray(clean), k=2, noisy=jnp.asarray(noisy),
      labels=jnp.asarray(own))
  want, want_rec = _release_reconstruct(sim, bank_sim, bank_clean, observed, flags)
  np.testing.assert_array_equal(rec, want_rec & noisy)
  assert rec.any() and (noisy & ~np.asarray(rec)).any()
  np.testing.assert_array_equal(new, np.where((want_rec & noisy)[:, None], want, own))


def test_compat_off_is_the_default_step_and_compat_robust_step_runs():
  batch = _batch()
  state = jax.device_get(_method().init_state())
  off, _ = _step(_method(), state, batch, 7, "robust")
  explicit, _ = _step(_method(release_compat=False), state, batch, 7, "robust")
  def arrays(st):
    return jax.tree.leaves((st.params, st.batch_stats, st.bank_sim, st.bank_clean))
  for g, w in zip(arrays(off), arrays(explicit)):
    np.testing.assert_array_equal(g, w)
  on, metrics = _step(_method(release_compat=True), state, batch, 7, "robust",
                      devices=8)
  assert np.isfinite(metrics["loss"])
  for g, w in zip(jax.tree.leaves(on.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(g, w)  # epoch 7: BN in inference mode, no update
