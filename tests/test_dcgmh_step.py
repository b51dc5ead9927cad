"""DCGMH's step pieces (dcgmh_jax.step) against the NumPy references of
tests/test_dcgmh_filter.py and test_dcgmh_compat.py, on 1 and several devices;
the per-epoch decisions and the host's diagnostics."""

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from common import parallel
from dcgmh_jax import augment
from dcgmh_jax import noise_filter as nf
from dcgmh_jax import step
from test_dcgmh_compat import _release_reconstruct
from test_dcgmh_filter import (_recon_case, ref_cosine, ref_flag, ref_reconstruct,
                               ref_scores, ref_update)
import test_dcgmh_train as t
from dcgmh_jax.train import DcgmhMethod


def _options(**overrides):
  base = dict(tau="known", noise_ratio=0.4, ratio_cap=None, buffer_ratio=0.4,
              whole_batch=True, release_reconstruction=False, bn_eval_from_epoch=None,
              k=2, refresh_clean=False, estimate_momentum=0.9)
  return step.StepOptions(**{**base, **overrides})


def _replicated(fn, devices=1):
  """fn(*args) on `devices` devices, every argument and result replicated."""
  mesh = parallel.make_mesh(jax.devices()[:devices])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P()))


# --- forward ----------------------------------------------------------------------

@pytest.mark.parametrize("devices", [1, 4])
def test_forward_codes_similarities_and_scores(devices):
  """h equals the model on the whole batch (BN statistics over all devices);
  s and κ equal the references (an empty label row gets κ = −1)."""
  method = t._method()
  state = method.init_state()
  batch = next(t._batches(method, 1))
  batch["labels"] = batch["labels"].copy()
  batch["labels"][3] = 0
  mesh = parallel.make_mesh(jax.devices()[:devices])

  def body(params, stats, image, text, labels):
    fwd, _ = step.forward(method.model, params, stats, {"image": image, "text": text},
                          parallel.gather_rows(labels), bn_train=True)
    return parallel.as_replicated((fwd.h, fwd.sim, fwd.scores))

  h, sim, scores = jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(P(), P()) + (P(parallel.AXIS),) * 3, out_specs=P()))(
          state.params, state.batch_stats, batch["image"], batch["text"],
          batch["labels"])
  want_h = method.eval_model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, batch["image"],
      batch["text"], train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6)
  want_sim = ref_cosine(h, np.asarray(state.params["centers"]))
  np.testing.assert_allclose(sim, want_sim, rtol=1e-5, atol=1e-6)
  want_scores = ref_scores(sim, batch["labels"])
  assert want_scores[3] == -1.0
  np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)


# --- τ --------------------------------------------------------------------------

@pytest.mark.parametrize("tau", step.TAU_POLICIES)
@pytest.mark.parametrize("cap", [None, 0.3])
@pytest.mark.parametrize("first_step", [True, False])
def test_the_three_tau_policies(tau, cap, first_step):
  """τ used and the next estimate, per policy, against their formulas."""
  rng = np.random.default_rng(2)
  scores = np.concatenate([rng.normal(-0.5, 0.05, 6), rng.normal(0.6, 0.05, 10)]
                          ).astype(np.float32)
  options = _options(tau=tau, noise_ratio=0.45 if tau == "known" else None,
                     ratio_cap=cap, estimate_momentum=0.75)
  estimate, epoch_ratio = np.float32(0.42), np.float32(0.37)
  step_no = jnp.int32(0 if first_step else 5)
  ratio = _replicated(lambda e, c: step.choose_noise_ratio(
      options, estimate=e, context={"noise_ratio": c}))(estimate, epoch_ratio)
  want_ratio = {"known": 0.45, "batch_ema": 0.42, "margin": 0.37}[tau]
  np.testing.assert_allclose(ratio, min(want_ratio, cap or 1.0), rtol=1e-6)

  def next_estimate(ratio):
    return _replicated(lambda e, s, r, n: step.next_noise_ratio_estimate(
        options, estimate=e, scores=s, ratio=r, step=n))(estimate, scores, ratio, step_no)

  gmm = float(nf.estimate_noise_ratio(jnp.asarray(scores)))
  ema = gmm if first_step else 0.75 * 0.42 + 0.25 * gmm
  # margin: the τ the robust step used (capped), unchanged in warm-up (None).
  np.testing.assert_allclose(next_estimate(ratio), ratio if tau == "margin" else ema,
                             rtol=1e-6)
  np.testing.assert_allclose(next_estimate(None), 0.42 if tau == "margin" else ema,
                             rtol=1e-6)


# --- filter, bank, reconstruction ---------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("path", ["project", "release", "none"])
@pytest.mark.parametrize("devices", [1, 3])
def test_filter_and_reconstruct_equals_the_references(seed, path, devices):
  """Ties in κ and in the bank's dot products, empty label rows, zero bank rows."""
  sim, bank_sim, bank_clean, bank_labels, _, index = _recon_case(seed)
  batch = len(sim)
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, 3, batch).astype(np.float32)     # ties
  labels = bank_labels[index]
  truth = np.roll(bank_labels, 1, axis=0)
  options = _options(release_reconstruction=path == "release", k=2)

  def body(sim, scores, bank_sim, bank_clean, bank_labels, truth, index, labels):
    fwd = step.Forward(h=None, centers=None, sim=sim, scores=scores)
    out = step.filter_and_reconstruct(
        options, fwd, jnp.float32(0.45), bank_sim=bank_sim, bank_clean=bank_clean,
        bank_labels=bank_labels, bank_truth=truth, index_all=index, labels_all=labels,
        reconstruction=path != "none")
    return parallel.as_replicated(dataclasses.astuple(out))

  got = step.Decisions(*_replicated(body, devices)(
      sim, scores, bank_sim, bank_clean, bank_labels, truth, index, labels))
  noisy = ref_flag(scores, 0.45)
  np.testing.assert_array_equal(got.noisy, noisy)
  want_sim, want_clean = ref_update(bank_sim, bank_clean, index, sim, noisy, False)
  np.testing.assert_allclose(got.bank_sim, want_sim)
  np.testing.assert_array_equal(got.bank_clean, want_clean.astype(bool))
  np.testing.assert_array_equal(got.index, index)
  if path == "none":
    assert not got.reconstructed.any()
    np.testing.assert_array_equal(got.new_labels, labels)
    return
  if path == "project":
    want_new, want_rec = ref_reconstruct(sim, want_sim, want_clean, bank_labels, 2,
                                         noisy, index, labels)
  else:
    ids = np.unique(truth, axis=0, return_inverse=True)[1].ravel()
    want_new, want_rec = _release_reconstruct(sim, want_sim, want_clean, bank_labels, ids)
    want_rec = want_rec & noisy
    want_new = np.where(want_rec[:, None], want_new, labels)
  np.testing.assert_array_equal(got.reconstructed, want_rec)
  np.testing.assert_array_equal(got.new_labels, want_new)
  # The source is the bank row whose label a reconstructed item got.
  rows = np.flatnonzero(want_rec)
  np.testing.assert_array_equal(bank_labels[np.asarray(got.source)[rows]], want_new[rows])


def test_filter_a_batch_of_one():
  options = _options()
  fwd = step.Forward(h=None, centers=None, sim=jnp.ones((1, 2)), scores=jnp.zeros(1))

  def body(ratio):
    out = step.filter_and_reconstruct(
        options, fwd, ratio, bank_sim=jnp.zeros((3, 2)), bank_clean=jnp.ones(3, bool),
        bank_labels=jnp.eye(3, 2), bank_truth=None, index_all=jnp.array([1]),
        labels_all=jnp.array([[0.0, 1.0]]), reconstruction=True)
    return parallel.as_replicated((out.noisy, out.reconstructed, out.bank_clean))

  noisy, rec, clean = _replicated(body)(jnp.float32(0.99))
  assert not noisy.any() and not rec.any() and clean.all()   # ⌊0.99·1⌋ = 0
  noisy, rec, clean = _replicated(body)(jnp.float32(1.0))
  # Flagged; its neighbours (rows 0 and 2, own row excluded) disagree: unlabeled.
  assert noisy.all() and not rec.any() and list(clean) == [True, False, True]


# --- the augmented pass -------------------------------------------------------------

@pytest.mark.parametrize("devices", [1, 4])
def test_whole_batch_augmented_pass_equals_the_model_on_the_augmented_batch(devices):
  method = t._method()
  state = method.init_state()
  batch = next(t._batches(method, 1))
  keys = tuple(jax.random.split(jax.random.key(3)))
  unlabeled = np.arange(t.B) % 5 == 0
  mesh = parallel.make_mesh(jax.devices()[:devices])

  def body(params, stats, image, text, h_all, unlabeled):
    rows, stats = step.augmented_pass(method.options, method.model, params, stats,
                                      {"image": image, "text": text}, h_all, unlabeled,
                                      keys, bn_train=True)
    return parallel.as_replicated((rows, stats))

  h_all = np.random.default_rng(0).normal(size=(t.B, 8)).astype(np.float32)
  (h_aug, h, mask), stats = jax.jit(jax.shard_map(
      body, mesh=mesh, in_specs=(P(), P(), P(parallel.AXIS), P(parallel.AXIS), P(), P()),
      out_specs=P()))(state.params, state.batch_stats, batch["image"], batch["text"],
                      h_all, unlabeled)
  ids = np.arange(t.B)
  image = augment.augment_image(jnp.asarray(batch["image"]), keys[0], row_ids=ids)
  text = augment.augment_text(jnp.asarray(batch["text"]), keys[1], row_ids=ids)
  want, mutated = method.eval_model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, image, text,
      train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(h_aug, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(h, h_all)
  np.testing.assert_array_equal(mask, unlabeled)
  for g, w in zip(jax.tree.leaves(stats), jax.tree.leaves(mutated["batch_stats"])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# --- per-epoch decisions ------------------------------------------------------------

def ref_record(flags, source, index, noisy, rec, src, first):
  flags, source = np.array(flags), np.array(source)
  if first:
    flags[:], source[:] = 0, -1
  for i, n in enumerate(index):
    flags[n] = 1 | (2 if noisy[i] else 0) | (4 if rec[i] else 0)
    source[n] = src[i] if rec[i] else -1
  return flags, source


@pytest.mark.parametrize("first", [True, False])
def test_record_decisions(first):
  rng = np.random.default_rng(4)
  n, b = 20, 7
  flags = rng.integers(0, 8, n).astype(np.int8)
  source = rng.integers(-1, n, n).astype(np.int32)
  index = rng.permutation(n)[:b].astype(np.int32)
  noisy = rng.random(b) < 0.5
  rec = noisy & (rng.random(b) < 0.5)
  src = rng.integers(0, n, b).astype(np.int32)
  decisions = step.Decisions(noisy=jnp.asarray(noisy), reconstructed=jnp.asarray(rec),
                             new_labels=None, source=jnp.asarray(src),
                             index=jnp.asarray(index), bank_sim=None, bank_clean=None)
  got = step.record_decisions(jnp.asarray(flags), jnp.asarray(source), decisions,
                              jnp.int32(0 if first else 3))
  want = ref_record(flags, source, index, noisy, rec, src, first)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  assert got[0].dtype == np.int8 and got[1].dtype == np.int32


def _epoch_batches(method, epoch_seed):
  """One epoch: a permutation of the N items in batches of B."""
  rng = np.random.default_rng(epoch_seed)
  order = rng.permutation(t.N).astype(np.int32)
  for s in range(t.N // t.B):
    idx = order[s * t.B:(s + 1) * t.B]
    yield {"image": rng.normal(size=(t.B, t.D_IMG)).astype(np.float32),
           "text": rng.poisson(1.0, size=(t.B, t.D_TXT)).astype(np.float32),
           "labels": method.train_labels[idx], "index": idx}


@pytest.mark.parametrize("devices", [1, 4])
def test_epoch_summary_recounts_the_steps_decisions_with_the_truth(devices):
  """The host's counts (epoch_summary, from the per-item decisions) equal a
  recount of each step's decisions, as the step used to count them
  (nf.filter_diagnostics per batch, summed); without the truth, only the
  counts that need none; a new epoch starts from zero."""
  rng = np.random.default_rng(9)
  # Two label rows (one of them empty): bank neighbours often agree.
  labels = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], np.float32)[
      (rng.random(t.N) < 0.2).astype(int)]
  method = DcgmhMethod(t._method().config, image_dim=t.D_IMG, text_dim=t.D_TXT,
                       train_labels=labels, noise_ratio=0.4)
  truth = {"corrupted": rng.random(t.N) < 0.4,
           "labels": np.where(rng.random((t.N, t.C)) < 0.1, 1 - method.train_labels,
                              method.train_labels).astype(np.float32)}
  truth["labels"][truth["corrupted"]] = method.train_labels[0]  # reconstructible
  dp = parallel.DataParallel(method.step_body, mesh=parallel.make_mesh(
      jax.devices()[:devices]), max_phases=2, donate=False)
  state = dp.put_state(method.init_state())
  for epoch in (1, 2):
    want = {k: 0 for k in ("items", "corrupted", "flagged", "true_positives",
                           "reconstructed", "reconstructed_correct", "unlabeled")}
    sums = {"flagged": 0, "reconstructed": 0, "unlabeled": 0}
    for s, batch in enumerate(_epoch_batches(method, epoch)):
      before = jax.device_get(dp.get_state(state))
      state, metrics = dp.step(state, dp.put_rows(batch), dp.put_rows({}),
                               {"epoch": epoch, "step_in_epoch": s}, "robust")
      after = jax.device_get(dp.get_state(state))
      idx = batch["index"]
      # This step's decisions, read back independently: F from the bank (a
      # flagged row is zeroed and marked unclean), R and ŷ from the step's own
      # reconstruction rule on the state it saw (the NumPy reference).
      noisy = ~after.bank_clean[idx] & np.all(after.bank_sim[idx] == 0, axis=1)
      assert noisy.sum() == int(np.floor(0.4 * t.B))
      sim = ref_cosine(method.eval_model.apply(
          {"params": before.params, "batch_stats": before.batch_stats},
          batch["image"], batch["text"], train=True, mutable=["batch_stats"])[0],
          np.asarray(before.params["centers"]))
      new, rec = ref_reconstruct(sim, after.bank_sim, after.bank_clean,
                                 before.bank_labels, 2, noisy, idx, batch["labels"])
      counts = nf.filter_diagnostics(noisy, rec, new, truth["corrupted"][idx],
                                     truth["labels"][idx])
      want = {k: want[k] + int(v) for k, v in counts.items()}
      for k in sums:
        sums[k] += int(metrics[k])
    summary, line = method.epoch_summary(after, epoch, {}, {}, truth)
    assert summary["filter_counts"] == want, epoch
    assert {k: want[k] for k in sums} == sums
    assert want["reconstructed"] and want["items"] == t.N
    assert summary["filter"] == nf.diagnostics_ratios(want) and "precision" in line
    blind, _ = method.epoch_summary(after, epoch, {}, {}, None)
    assert blind["filter_counts"] == {k: want[k] for k in ("items", "flagged",
                                                           "reconstructed", "unlabeled")}
    assert "filter" not in blind
