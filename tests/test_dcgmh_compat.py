"""config.release_compat for DCGMH: each release quirk against a reference of
the release's behaviour; compat off keeps the default path."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from common import parallel
from common.run_config import ConfigError
from configs import dcgmh as dcgmh_configs
from dcgmh_jax import model as model_lib
from dcgmh_jax import noise_filter as nf
from dcgmh_jax import objectives
from dcgmh_jax import train as train_lib
from dcgmh_jax.train import DcgmhMethod
from test_dcgmh_variants import global_objective

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
  for value in (True, "bn_eval_after_first_eval,clean_label_reconstruction"):
    with pytest.raises(ConfigError, match=r"config\.release_compat=.*leaks ground truth"):
      _method(truth=False, release_compat=value)
  # The other quirks need no truth.
  assert _method(truth=False, release_compat="bn_eval_after_first_eval,"
                 "bn_unbiased_running_var").train_truth is None
  assert _method(release_compat=True).quirks == (
      set(train_lib.RELEASE_QUIRKS) | {"partial_last_batch", "eval_every_5"})
  assert "leaks ground truth" in train_lib.RELEASE_QUIRKS["clean_label_reconstruction"].label
  assert not _method().quirks and "release_compat" not in _method().resolved
  # augment_unlabeled_only (alone or in True) forces the pass on U, whatever
  # augment_whole_batch says; without it augment_whole_batch decides.
  for value in (True, "augment_unlabeled_only"):
    for whole in (True, False):
      config = _config(release_compat=value, augment_whole_batch=whole)
      train_lib.check_config(config)
      assert not _method(release_compat=value, augment_whole_batch=whole).options.whole_batch
  for whole in (True, False):
    assert _method(release_compat="bn_eval_after_first_eval",
                   augment_whole_batch=whole).options.whole_batch == whole
    assert _method(augment_whole_batch=whole).options.whole_batch == whole


@pytest.mark.parametrize("epoch", [4, 5, 9])
def test_a_batchnorm_in_inference_mode_from_epoch_5(epoch):
  """Warm-up step: from epoch 5 the update equals plain SGD on the loss of the
  network with RUNNING statistics, which stay unchanged; before it, the step
  equals the default (training-mode BN) step bit for bit."""
  method = _method(release_compat="bn_eval_after_first_eval", warmup_epochs=20)
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
    return global_objective(method.variant.objective,
                            objectives.Terms(h, params["centers"], batch["labels"]), cfg)

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
  new, rec = nf.reconstruct_labels_release(
      jnp.asarray(sim), jnp.asarray(bank_sim), jnp.asarray(bank_clean),
      jnp.asarray(observed), jnp.asarray(clean), k=2, noisy=jnp.asarray(noisy),
      labels=jnp.asarray(own))
  want, want_rec = _release_reconstruct(sim, bank_sim, bank_clean, observed, flags)
  np.testing.assert_array_equal(rec, want_rec & noisy)
  assert rec.any() and (noisy & ~np.asarray(rec)).any()
  np.testing.assert_array_equal(new, np.where((want_rec & noisy)[:, None], want, own))


def test_c_reconstruction_runs_as_a_top_k_not_a_full_sort_of_the_bank():
  """Issue 22: with the neighbour indices used at two shapes, XLA:CPU ran
  lax.top_k as a stable sort of every (B, N) row (~50x the step at N = 10k).
  Both reconstructions compile to the TopK kernel, no sort over N."""
  batch, items, classes = 8, 512, 5
  zeros = jnp.zeros((items, classes))
  cases = {
      "release": functools.partial(nf.reconstruct_labels_release, k=2,
                                   noisy=jnp.ones(batch, bool),
                                   labels=jnp.zeros((batch, classes))),
      "default": lambda s, bs, bc, bl, _: nf.reconstruct_labels(
          s, bs, bc, bl, k=2, self_indices=jnp.arange(batch)),
  }
  for name, fn in cases.items():
    text = jax.jit(fn).lower(jnp.zeros((batch, classes)), zeros, jnp.ones(items, bool),
                             zeros, zeros).compile().as_text()
    sorts = [line for line in text.splitlines()
             if re.search(rf"\bsort\(.*\[{batch},{items}\]", line)
             or re.search(rf"= \(f32\[{batch},{items}\].*\bsort\(", line)]
    assert not sorts, (name, sorts[:1])
    assert '"TopK"' in text, name


def _n_row_constants(closed_jaxpr, rows):
  return [c.shape for c in closed_jaxpr.consts if np.ndim(c) and np.shape(c)[0] == rows]


def test_c_clean_labels_are_state_not_a_constant_of_the_compiled_step():
  """The clean labels enter the state (bank_truth) through the init program's
  arguments; neither the init nor the robust step closes over an N-row array."""
  truth = _labels()[::-1].copy()
  method = _method(release_compat=True)
  init = jax.make_jaxpr(method._init_state)(method.train_labels, method.train_truth)
  assert not _n_row_constants(init, N)
  state = jax.device_get(method.init_state())
  np.testing.assert_array_equal(state.bank_truth, truth)
  np.testing.assert_array_equal(state.bank_labels, _labels())
  assert _method().init_state().bank_truth is None  # no leaf without the quirk
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  context = {"epoch": jnp.int32(7), "step_in_epoch": jnp.int32(0)}
  for m in (method, _method()):
    body = jax.shard_map(functools.partial(m.step_body, phase="robust"),
                         mesh=parallel.make_mesh(jax.devices()[:1]),
                         in_specs=(P(), P(parallel.AXIS), P(parallel.AXIS), P()),
                         out_specs=(P(), P()))
    step = jax.make_jaxpr(body)(jax.device_get(m.init_state()), batch, {}, context)
    assert not _n_row_constants(step, N), m.quirks
  # The step reads them from the state: other clean labels, other reconstruction.
  other = state.replace(bank_truth=np.zeros_like(truth))
  a, _ = _step(method, state, _batch(), 7, "robust")
  b, _ = _step(method, other, _batch(), 7, "robust")
  np.testing.assert_array_equal(a.bank_truth, truth)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                     jax.tree.leaves(b.params)))


def test_compat_off_is_the_default_step_and_compat_robust_step_runs():
  batch = _batch()
  state = jax.device_get(_method().init_state())
  def arrays(st):
    return jax.tree.leaves((st.params, st.batch_stats, st.bank_sim, st.bank_clean))
  # The loop's quirks change nothing in the step: bit-identical to the default.
  off, _ = _step(_method(), state, batch, 7, "robust")
  same, _ = _step(_method(release_compat="partial_last_batch,eval_every_5"),
                  state, batch, 7, "robust")
  for g, w in zip(arrays(off), arrays(same)):
    np.testing.assert_array_equal(g, w)
  # augment_unlabeled_only is the pass on U: bit-identical to
  # augment_whole_batch=False, and not to the whole-batch default.
  on_u, _ = _step(_method(augment_whole_batch=False), state, batch, 7, "robust")
  quirk, _ = _step(_method(release_compat="partial_last_batch,eval_every_5,"
                           "augment_unlabeled_only"), state, batch, 7, "robust")
  for g, w in zip(arrays(on_u), arrays(quirk)):
    np.testing.assert_array_equal(g, w)
  assert any(not np.array_equal(g, w) for g, w in zip(arrays(off), arrays(quirk)))
  compat = _method(release_compat=True)
  on, metrics = _step(compat, jax.device_get(compat.init_state()), batch, 7, "robust",
                      devices=8)
  assert np.isfinite(metrics["loss"])
  for g, w in zip(jax.tree.leaves(on.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(g, w)  # epoch 7: BN in inference mode, no update


# --- bn_unbiased_running_var: PyTorch's running variance ----------------------------


def _bn(**kw):
  return model_lib.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False, **kw)


def _torch_batchnorm1d(x, running_mean, running_var, momentum=0.1, eps=1e-5):
  """torch.nn.BatchNorm1d in training mode (weight 1, bias 0), in NumPy: the
  output uses the biased batch variance, running_var the unbiased one."""
  x = np.asarray(x, np.float64)
  mean, n = x.mean(0), len(x)
  biased = x.var(0)
  unbiased = x.var(0, ddof=1) if n > 1 else np.zeros_like(biased)
  out = (x - mean) / np.sqrt(biased + eps)
  return (out, (1 - momentum) * running_mean + momentum * mean,
          (1 - momentum) * running_var + momentum * unbiased)


def test_unbiased_running_var_matches_pytorch_batchnorm():
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(6, 5)).astype(np.float32)
  layer = _bn(unbiased_running_var=True)
  variables = layer.init(jax.random.key(0), x, True)
  stats = {"mean": np.linspace(-1, 1, 5, dtype=np.float32),
           "var": np.linspace(0.5, 2, 5, dtype=np.float32)}
  variables = {**variables, "batch_stats": stats}
  out, mutated = layer.apply(variables, x, False, mutable=["batch_stats"])
  want_out, want_mean, want_var = _torch_batchnorm1d(x, stats["mean"], stats["var"])
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mutated["batch_stats"]["mean"], want_mean, rtol=1e-6)
  np.testing.assert_allclose(mutated["batch_stats"]["var"], want_var, rtol=1e-6)
  # Off: flax's nn.BatchNorm bit for bit (its own code path), biased running var.
  off_out, off = _bn().apply(variables, x, False, mutable=["batch_stats"])
  flax_out, flax = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False
                                ).apply(variables, x, False, mutable=["batch_stats"])
  np.testing.assert_array_equal(off_out, flax_out)
  jax.tree.map(np.testing.assert_array_equal, off, flax)
  np.testing.assert_allclose(off["batch_stats"]["var"],
                             0.9 * stats["var"] + 0.1 * x.var(0), rtol=1e-6)


@pytest.mark.parametrize("rows", [[0, 1, 2, 5, 6, 7, 9, 15], [10]])
def test_unbiased_running_var_counts_the_masked_rows_of_all_devices(rows):
  """The augmented pass's BN: statistics of the masked rows over 8 devices
  (2 rows each, devices holding 0, 1 or 2 of them); n is their global count
  (one row: variance 0, where PyTorch raises)."""
  x = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
  mask = np.zeros(16, bool)
  mask[rows] = True
  layer = _bn(unbiased_running_var=True, axis_name="data")
  variables = _bn().init(jax.random.key(0), x, True)
  mesh = jax.make_mesh((8,), ("data",))
  body = lambda v, a, m: layer.apply(v, a, False, mask=m, mutable=["batch_stats"])
  rows = NamedSharding(mesh, P("data"))
  out, mutated = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                       out_specs=(P("data"), P())))(
      jax.device_put(variables, NamedSharding(mesh, P())), jax.device_put(x, rows),
      jax.device_put(mask, rows))
  want_out, want_mean, want_var = _torch_batchnorm1d(x[mask], 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(out)[mask], want_out, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mutated["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mutated["batch_stats"]["var"], want_var, rtol=1e-5)


def test_unbiased_running_var_in_a_step():
  """One training step (8 devices, global batch B): the same parameters as the
  default step (training-mode normalisation is unchanged) and every running
  variance blended with the batch variance times B/(B−1)."""
  batch = _batch()
  state = jax.device_get(_method().init_state())
  off, _ = _step(_method(warmup_epochs=20), state, batch, 0, "warmup", devices=8)
  on, _ = _step(_method(warmup_epochs=20, release_compat="bn_unbiased_running_var"),
                state, batch, 0, "warmup", devices=8)
  for g, w in zip(jax.tree.leaves(on.params), jax.tree.leaves(off.params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  flat = lambda t: flax_paths(t)
  old, got, biased = flat(state.batch_stats), flat(on.batch_stats), flat(off.batch_stats)
  assert len(old) == 10 and {k[-1] for k in old} == {"mean", "var"}  # 5 BN layers
  for key in old:
    if key[-1] == "mean":
      np.testing.assert_allclose(got[key], biased[key], rtol=1e-5, atol=1e-6)
    else:  # biased = 0.9 old + 0.1 v  ->  want = 0.9 old + 0.1 v B/(B-1)
      batch_var = (biased[key] - 0.9 * old[key]) / 0.1
      np.testing.assert_allclose(got[key], 0.9 * old[key] + 0.1 * batch_var * B / (B - 1),
                                 rtol=1e-4, atol=1e-6)


def flax_paths(tree):
  return {tuple(getattr(k, "key", k) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
