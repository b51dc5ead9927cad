"""DCGMH train step: D devices == 1 device (BN sync, filter, bank), both drivers."""

import jax
import numpy as np
import pytest

from common import parallel
from configs import dcgmh as dcgmh_configs
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
           "labels": labels[idx], "index": idx,
           "truth_labels": labels[idx], "truth_corrupted": rng.random(B) < 0.4}


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


@pytest.mark.parametrize("mode", parallel.PARALLEL_MODES)
def test_eight_devices_equal_one_device(mode):
  method = _method()
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
  assert {k: int(v) for k, v in got.diagnostics.items()} == \
      {k: int(v) for k, v in ref.diagnostics.items()}


def test_robust_phase_flags_exactly_floor_tau_b_and_updates_the_bank():
  method = _method(noise_ratio=0.25)
  state, hist = _run(method, "shard_map", 8, phases=("robust",))
  assert hist[0]["flagged"] == int(np.floor(0.25 * B))
  flagged_rows = np.where(~state.bank_clean)[0]
  assert len(flagged_rows) == int(np.floor(0.25 * B))
  np.testing.assert_array_equal(state.bank_sim[flagged_rows], 0.0)
  assert np.isfinite(hist[0]["loss"])


def test_auto_noise_ratio_runs_and_estimate_is_a_fraction():
  method = _method(noise_ratio=None)
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
