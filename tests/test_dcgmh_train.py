"""DCGMH train step: D devices == 1 device (BN sync, filter, bank), both drivers."""

import jax
import numpy as np
import pytest

from common import parallel
from configs import dcgmh as dcgmh_configs
from dcgmh_jax import step
from dcgmh_jax.train import DcgmhMethod

B, N, D_IMG, D_TXT, C = 16, 48, 12, 10, 4


def _method(noise_ratio=0.4, **overrides):
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(bits=8, hidden=16, fused=16, lr=0.05, warmup_epochs=1,
                     **overrides))
  rng = np.random.default_rng(0)
  labels = (rng.random((N, C)) < 0.4).astype(np.float32)
  labels[5] = 0
  labels[:6] = labels[6]  # several identical label rows, so reconstruction can fire
  return DcgmhMethod(config, image_dim=D_IMG, text_dim=D_TXT, train_labels=labels,
                     noise_ratio=noise_ratio)


def _batches(method, steps):
  rng = np.random.default_rng(1)
  labels = method.train_labels
  for s in range(steps):
    idx = rng.permutation(N)[:B].astype(np.int32)
    yield {"image": rng.normal(size=(B, D_IMG)).astype(np.float32),
           "text": rng.poisson(1.0, size=(B, D_TXT)).astype(np.float32),
           "labels": labels[idx], "index": idx}


def _run(method, mode, devices, phases=("warmup", "robust", "robust", "robust"),
         epoch=0):
  dp = parallel.DataParallel(method.step_body, mode=mode,
                             mesh=parallel.make_mesh(jax.devices()[:devices]),
                             max_phases=len(method.phases))
  state = dp.put_state(method.init_state())
  history = []
  for step, (phase, batch) in enumerate(zip(phases, _batches(method, len(phases)))):
    context = {"epoch": epoch, "step_in_epoch": step}
    state, metrics = dp.step(state, dp.put_rows(batch), dp.put_rows({}), context, phase)
    history.append(jax.device_get(metrics))
  return jax.device_get(dp.get_state(state)), history


@pytest.mark.parametrize("mode,whole_batch",
                         [(m, True) for m in parallel.PARALLEL_MODES]
                         + [("shard_map", False)])
def test_eight_devices_equal_one_device(mode, whole_batch):
  """Both augmented passes: the whole batch (the default) and the buffer on U."""
  method = _method(augment_whole_batch=whole_batch)
  ref, ref_hist = _run(method, "shard_map", 1)
  got, hist = _run(method, mode, 8)
  for h, r in zip(hist, ref_hist):
    assert h.keys() == r.keys()
    for k in r:
      np.testing.assert_allclose(h[k], r[k], rtol=1e-4, atol=1e-5, err_msg=k)
  for name in ("params", "batch_stats"):
    for g, w in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(ref, name))):
      np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(got.bank_sim, ref.bank_sim, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got.bank_clean, ref.bank_clean)
  np.testing.assert_array_equal(got.epoch_flags, ref.epoch_flags)
  np.testing.assert_array_equal(got.epoch_source, ref.epoch_source)


def test_robust_phase_flags_exactly_floor_tau_b_and_updates_the_bank():
  method = _method(noise_ratio=0.25)
  state, hist = _run(method, "shard_map", 8, phases=("robust",))
  assert hist[0]["flagged"] == int(np.floor(0.25 * B))
  flagged_rows = np.where(~state.bank_clean)[0]
  assert len(flagged_rows) == int(np.floor(0.25 * B))
  np.testing.assert_array_equal(state.bank_sim[flagged_rows], 0.0)
  assert np.isfinite(hist[0]["loss"])


def test_auto_noise_ratio_runs_and_estimate_is_a_fraction():
  # The buffer path: with τ estimated its static buffer is ⌊noise_ratio_max·B⌋.
  method = _method(noise_ratio=None, noise_ratio_estimator="batch_ema",
                   augment_whole_batch=False)
  _, hist = _run(method, "shard_map", 8)
  for h in hist:
    assert 0.0 <= h["noise_ratio_estimate"] <= 0.95


def test_learning_rate_steps_down_with_the_epoch_the_loop_passes_in():
  """torch StepLR per epoch: the first update (empty momentum buffer) is
  -lr·factor^⌊epoch/every⌋·(g + wd·p), so epoch `every` scales it by `factor`."""
  method = _method(lr_decay_every=2, lr_decay_factor=0.1)
  init = jax.device_get(method.init_state())
  deltas = []
  for epoch in (0, 1, 2):
    state, hist = _run(method, "shard_map", 2, phases=("warmup",), epoch=epoch)
    np.testing.assert_allclose(hist[0]["lr"], 0.05 * 0.1 ** (epoch // 2), rtol=1e-6)
    deltas.append(np.asarray(state.params["centers"]) - np.asarray(init.params["centers"]))
  np.testing.assert_allclose(deltas[1], deltas[0], rtol=1e-6)
  # atol: params ~N(0,1) in float32 round the tiny deltas at ~6e-8.
  np.testing.assert_allclose(deltas[2], 0.1 * deltas[0], rtol=1e-4, atol=2e-7)


# --- the augmented pass on U only (a static buffer of ⌊τ·B⌋ rows) -------------

def _buffer_program(method, devices, keys):
  """(L_unsup, grads, batch_stats) of the main pass + the buffer pass, D devices."""
  from jax.sharding import PartitionSpec as P
  from dcgmh_jax import losses
  mesh = parallel.make_mesh(jax.devices()[:devices])

  def body(params, batch_stats, image, text, unlabeled):
    def share(p):
      h, mutated = method.model.apply({"params": p, "batch_stats": batch_stats},
                                      image, text, train=True, mutable=["batch_stats"])
      h_all = parallel.gather_rows(h)
      (h_aug, h_buf, valid), stats = step.augmented_pass(
          method.options, method.model, p, mutated["batch_stats"],
          {"image": image, "text": text}, h_all, unlabeled, keys, bn_train=True)
      loss = losses.unsupervised_contrastive_loss(h_aug, h_buf, valid, margin=0.7)
      return parallel.local_share(loss), stats
    loss, stats, grads = parallel.global_value_and_grad(share, params, has_aux=True)
    return loss, grads, parallel.as_replicated(stats)

  return jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(P(), P(), P(parallel.AXIS), P(parallel.AXIS), P()),
      out_specs=P()))


def _dense_reference(method, variables, image, text, unlabeled, keys):
  """The same model on ONLY the U rows (BN statistics from them), one device."""
  import jax.numpy as jnp
  from dcgmh_jax import augment, losses
  u = np.flatnonzero(unlabeled)
  image_aug = augment.augment_image(jnp.asarray(image[u]), keys[0], row_ids=u)
  text_aug = augment.augment_text(jnp.asarray(text[u]), keys[1], row_ids=u)

  def loss_fn(p):
    h, m = method.eval_model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                   image, text, train=True, mutable=["batch_stats"])
    if len(u) == 0:
      return jnp.zeros(()), m["batch_stats"]
    h_aug, m = method.eval_model.apply({"params": p, "batch_stats": m["batch_stats"]},
                                       image_aug, text_aug, train=True,
                                       mutable=["batch_stats"])
    return losses.unsupervised_contrastive_loss(
        h_aug, h[u], np.ones(len(u), bool), margin=0.7), m["batch_stats"]

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  return loss, grads, stats


@pytest.mark.parametrize("members", [5, 1, 0])
def test_buffer_pass_equals_dense_reference_on_the_unlabeled_rows(members):
  """Values, gradients and BN running statistics of the buffer pass equal the
  dense reference (model on U only), with 1 and 8 devices; |U| = 0 and 1 stay
  finite (the release crashes there)."""
  method = _method(noise_ratio=0.4, augment_whole_batch=False)  # ⌊0.4·16⌋ = 6 rows
  assert method.buffer_rows(B) == 6
  state = method.init_state()
  batch = next(_batches(method, 1))
  rng = np.random.default_rng(3)
  unlabeled = np.zeros(B, bool)
  unlabeled[rng.permutation(B)[:members]] = True
  keys = tuple(jax.random.split(jax.random.key(7)))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  want = _dense_reference(method, variables, batch["image"], batch["text"], unlabeled,
                          keys)
  for devices in (1, 8):
    got = _buffer_program(method, devices, keys)(
        state.params, state.batch_stats, batch["image"], batch["text"], unlabeled)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert np.all(np.isfinite(g))
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"{devices} devices")


def test_whole_batch_path_still_runs_and_differs_only_in_the_augmented_pass():
  # (8 devices == 1 device on this path, for these steps and more:
  # test_eight_devices_equal_one_device[shard_map-True].)
  method = _method(augment_whole_batch=True)
  _, ref_hist = _run(method, "shard_map", 1, phases=("warmup", "robust"))
  buffered, buf_hist = _run(_method(augment_whole_batch=False), "shard_map", 1,
                            phases=("warmup", "robust"))
  assert buf_hist[0]["loss"] == ref_hist[0]["loss"]  # warm-up: no augmented pass
  assert buf_hist[1]["unsup"] != ref_hist[1]["unsup"]


@pytest.mark.parametrize("mode", parallel.PARALLEL_MODES)
def test_no_host_round_trip_inside_a_step(mode):
  """Placed inputs: a few steps of both phases run under transfer_guard('disallow')."""
  import jax.numpy as jnp
  method = _method(noise_ratio=None, noise_ratio_estimator="batch_ema")
  dp = parallel.DataParallel(method.step_body, mode=mode,
                             mesh=parallel.make_mesh(jax.devices()[:8]), max_phases=2)
  state = dp.put_state(method.init_state())
  phases = ("warmup", "robust", "robust")
  placed = []
  for step, batch in enumerate(_batches(method, len(phases))):
    context = dp.put_state({"epoch": jnp.int32(0), "step_in_epoch": jnp.int32(step)})
    placed.append((dp.put_rows(batch), dp.put_rows({}), context))
  for phase, (batch, extras, context) in zip(phases, placed):  # compiles both phases
    state, _ = dp.step(state, batch, extras, context, phase)
  with jax.transfer_guard("disallow"):  # run time only: tracing makes constants
    for phase, (batch, extras, context) in zip(phases, placed):
      state, metrics = dp.step(state, batch, extras, context, phase)
  assert np.isfinite(jax.device_get(metrics["loss"]))
