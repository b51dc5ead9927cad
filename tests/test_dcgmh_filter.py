"""DCGMH noise filter, bank, reconstruction vs plain-Python references."""

from fractions import Fraction
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcgmh_jax import noise_filter as nf


# ----------------------------------------------------------------- references
def ref_cosine(h, centers):
  out = np.zeros((len(h), len(centers)))
  for i, a in enumerate(np.asarray(h, np.float64)):
    for j, b in enumerate(np.asarray(centers, np.float64)):
      na = max(math.sqrt(a @ a), 1e-12)
      nb = max(math.sqrt(b @ b), 1e-12)
      out[i, j] = (a @ b) / (na * nb)
  return out


def ref_scores(sim, labels):
  out = []
  for s, y in zip(np.asarray(sim, np.float64), labels):
    pos = [s[j] for j in range(len(y)) if y[j] == 1]
    out.append(sum(pos) / len(pos) if pos else -1.0)
  return np.array(out)


def ref_flag(scores, ratio):
  items = range(len(scores))
  count = math.floor(Fraction(str(ratio)) * len(items))
  order = sorted(items, key=lambda i: (scores[i], i))
  flagged = set(order[:count])
  return np.array([i in flagged for i in range(len(scores))])


def ref_update(bank_sim, bank_clean, indices, sim, noisy, refresh):
  bank_sim = np.array(bank_sim, np.float64)
  bank_clean = np.array(bank_clean).astype(int)
  for i, n in enumerate(indices):
    if noisy[i]:
      bank_sim[n] = 0.0
      bank_clean[n] = 0
    else:
      bank_sim[n] = sim[i]
      if refresh:
        bank_clean[n] = 1
  return bank_sim, bank_clean


def ref_reconstruct(sim, bank_sim, bank_clean, bank_labels, k, noisy, self_idx,
                    own):
  new, rec = [], []
  for i in range(len(sim)):
    if not noisy[i]:
      new.append(list(own[i]))
      rec.append(False)
      continue
    cands = []
    for n in range(len(bank_sim)):
      if self_idx is not None and n == self_idx[i]:
        continue
      dot = sum(float(a) * float(b) for a, b in zip(sim[i], bank_sim[n]))
      cands.append((-dot, n))
    cands.sort()
    nbrs = [n for _, n in cands[:k]]
    lab = [tuple(bank_labels[n]) for n in nbrs]
    ok = (all(bank_clean[n] for n in nbrs) and len(set(lab)) == 1
          and sum(lab[0]) > 0)
    new.append(list(lab[0]) if ok else list(own[i]))
    rec.append(ok)
  return np.array(new), np.array(rec)


# Jitted once per shape and reused across parametrised cases.
_flag_jit = jax.jit(nf.flag_noisy)
_estimate_jit = jax.jit(nf.estimate_noise_ratio)
_reconstruct_jit = jax.jit(nf.reconstruct_labels, static_argnames="k")


# ---------------------------------------------------------- similarity/score
def test_center_similarity_and_scores():
  rng = np.random.default_rng(0)
  h = np.tanh(rng.normal(size=(6, 4))).astype(np.float32)
  h[2] = 0.0
  centers = rng.normal(size=(5, 4)).astype(np.float32)
  labels = (rng.random((6, 5)) < 0.5).astype(np.float32)
  labels[1] = 0.0
  labels[3] = 1.0
  sim = nf.center_similarity(h, centers)
  np.testing.assert_allclose(np.asarray(sim), ref_cosine(h, centers),
                             atol=1e-6)
  scores = nf.consistency_scores(sim, labels)
  np.testing.assert_allclose(np.asarray(scores), ref_scores(sim, labels),
                             atol=1e-6)
  assert float(scores[1]) == -1.0
  with pytest.raises(AssertionError, match="labels"):
    nf.consistency_scores(sim, labels[:, :3])


# ---------------------------------------------------------------- flag_noisy
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.29, 0.4, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_flag_noisy_with_ties(ratio, seed):
  rng = np.random.default_rng(seed)
  batch = 100 if ratio == 0.29 else 23
  scores = np.round(rng.uniform(-1, 1, batch), 1).astype(np.float32)  # ties
  # τ traced (a float32 scalar): the count is data, the shapes static.
  got = _flag_jit(scores, jnp.float32(ratio))
  want = ref_flag(scores, ratio)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(got.sum()) == math.floor(Fraction(str(ratio)) * batch)


def test_noisy_count_exact_for_decimal_ratios():
  ratios = np.array([0.0, 0.05, 0.1, 0.29, 0.3, 0.4, 0.7, 0.95, 1.0])
  sizes = np.array([1, 3, 48, 100, 4096, 200_000])
  got = np.asarray(jax.jit(jax.vmap(jax.vmap(nf.noisy_count, (None, 0)),
                                    (0, None)))(ratios.astype(np.float32),
                                                sizes))
  want = [[math.floor(Fraction(str(r)) * int(b)) for b in sizes]
          for r in ratios]
  np.testing.assert_array_equal(got, want)


def test_flag_noisy_all_tied_batch_of_one_and_errors():
  scores = np.zeros(10, np.float32)
  got = nf.flag_noisy(scores, 0.4)                  # eager, Python τ
  np.testing.assert_array_equal(np.asarray(got), np.arange(10) < 4)
  assert not bool(nf.flag_noisy(np.zeros(1, np.float32), 0.9)[0])
  assert bool(nf.flag_noisy(np.zeros(1, np.float32), 1.0)[0])
  with pytest.raises(ValueError, match="noise_ratio"):
    nf.flag_noisy(scores, 1.5)
  with pytest.raises(AssertionError, match="rank"):
    nf.flag_noisy(scores[None], 0.5)


# ---------------------------------------------------------------- bank update
@pytest.mark.parametrize("refresh", [False, True])
@pytest.mark.parametrize("clean_dtype", [bool, np.float32])
def test_update_bank(refresh, clean_dtype):
  rng = np.random.default_rng(3)
  num_items, batch, classes = 12, 6, 4
  bank_sim = rng.normal(size=(num_items, classes)).astype(np.float32)
  bank_clean = (rng.random(num_items) < 0.5).astype(clean_dtype)
  indices = rng.permutation(num_items)[:batch]
  sim = rng.uniform(-1, 1, (batch, classes)).astype(np.float32)
  noisy = np.array([1, 0, 0, 1, 0, 0], bool)
  got_sim, got_clean = nf.update_bank(
      jnp.asarray(bank_sim), jnp.asarray(bank_clean), jnp.asarray(indices),
      jnp.asarray(sim), jnp.asarray(noisy), refresh_clean=refresh)
  want_sim, want_clean = ref_update(bank_sim, bank_clean, indices, sim, noisy,
                                    refresh)
  np.testing.assert_allclose(np.asarray(got_sim), want_sim, atol=0)
  np.testing.assert_array_equal(np.asarray(got_clean).astype(int), want_clean)
  assert got_clean.dtype == jnp.asarray(bank_clean).dtype
  with pytest.raises(ValueError, match="indices"):
    nf.update_bank(bank_sim, bank_clean, indices + num_items, sim, noisy)
  with pytest.raises(AssertionError, match="noisy"):
    nf.update_bank(bank_sim, bank_clean, indices, sim, noisy[:3])
  grad = jax.grad(lambda s: nf.update_bank(
      jnp.asarray(bank_sim), jnp.asarray(bank_clean), indices, s, noisy)[0]
                  .sum())(jnp.asarray(sim))
  assert not np.any(np.asarray(grad))        # stored rows are stop-gradient


def test_init_bank():
  sim, clean = nf.init_bank(5, 3)
  assert sim.shape == (5, 3) and not np.any(np.asarray(sim))
  assert clean.dtype == jnp.bool_ and bool(clean.all())
  a, _ = nf.init_bank(5, 3, key=jax.random.key(1))
  b, _ = nf.init_bank(5, 3, key=jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="num_items"):
    nf.init_bank(0, 3)


# ------------------------------------------------------------ reconstruction
def _recon_case(seed, batch=9, num_items=15, classes=3):
  rng = np.random.default_rng(seed)
  # Integer-valued similarities: dot products tie often and exactly.
  sim = rng.integers(-1, 2, (batch, classes)).astype(np.float32)
  bank_sim = rng.integers(-1, 2, (num_items, classes)).astype(np.float32)
  bank_sim[[2, 7]] = 0.0                                 # zero bank rows
  bank_clean = rng.random(num_items) < 0.85              # unclean rows
  # Labels mostly follow the similarity profile (so neighbours often agree),
  # with some random rows; one label type is the empty row.
  palette = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32)
  kind = np.where(bank_sim[:, 0] > 0, 0, 1)
  kind = np.where(rng.random(num_items) < 0.2, rng.integers(0, 3, num_items),
                  kind)
  bank_labels = palette[kind]
  noisy = rng.random(batch) < 0.7
  self_idx = rng.permutation(num_items)[:batch]
  return sim, bank_sim, bank_clean, bank_labels, noisy, self_idx


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_reconstruct_labels(seed, k, exclude_self):
  sim, bank_sim, bank_clean, bank_labels, noisy, self_idx = _recon_case(seed)
  own = bank_labels[self_idx]
  kwargs = dict(k=k, noisy=jnp.asarray(noisy))
  if exclude_self:
    kwargs["self_indices"] = jnp.asarray(self_idx)
  else:
    kwargs["labels"] = jnp.asarray(own)
  new, rec = _reconstruct_jit(sim, bank_sim, bank_clean, bank_labels,
                              **kwargs)
  want_new, want_rec = ref_reconstruct(sim, bank_sim, bank_clean, bank_labels,
                                       k, noisy,
                                       self_idx if exclude_self else None, own)
  np.testing.assert_array_equal(np.asarray(rec), want_rec)
  np.testing.assert_array_equal(np.asarray(new), want_new)


def test_reconstruct_labels_hand_case():
  # Item 0 sees rows 0,1 (tie at dot 1 with row 3 broken by lower index).
  sim = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
  bank_sim = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
  bank_labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], np.float32)
  bank_clean = np.array([1, 1, 1, 1, 1], bool)
  own = np.array([[0, 1], [1, 1], [1, 1]], np.float32)
  new, rec = nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels,
                                   labels=own, noisy=np.array([1, 1, 0], bool))
  # Item 1: rows 2 and 4 disagree ([0,1] vs empty) → unlabeled.
  np.testing.assert_array_equal(np.asarray(rec), [True, False, False])
  np.testing.assert_array_equal(np.asarray(new), [[1, 0], [1, 1], [1, 1]])
  bank_clean[1] = False                                    # unclean neighbour
  _, rec = nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels,
                                 labels=own)
  assert not bool(rec[0])


def test_reconstruct_labels_errors():
  sim, bank_sim, bank_clean, bank_labels, noisy, self_idx = _recon_case(0)
  with pytest.raises(ValueError, match="labels"):
    nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels)
  with pytest.raises(ValueError, match="`k`"):
    nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels, k=15,
                          self_indices=self_idx)
  with pytest.raises(AssertionError, match="bank_labels"):
    nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels[:4],
                          self_indices=self_idx)


# ------------------------------------------------------- noise-ratio estimate
@pytest.mark.parametrize("tau", [0.2, 0.4, 0.6])
def test_estimate_noise_ratio_recovers_tau(tau):
  rng = np.random.default_rng(int(tau * 10))
  n = 1000
  n_noisy = int(tau * n)
  scores = np.concatenate([rng.normal(-0.1, 0.08, n_noisy),
                           rng.normal(0.5, 0.1, n - n_noisy)])
  scores = rng.permutation(scores).astype(np.float32)
  est = float(_estimate_jit(scores))
  assert abs(est - tau) < 0.03, est


def test_estimate_noise_ratio_degenerate():
  for scores in (np.full(20, 0.3, np.float32), np.array([0.1], np.float32)):
    est = float(_estimate_jit(scores))
    assert np.isfinite(est) and 0.0 <= est <= 0.95
  assert float(_estimate_jit(np.full(20, 0.3, np.float32))) == 0.0
  with pytest.raises(AssertionError, match="scores"):
    nf.estimate_noise_ratio(np.zeros(0, np.float32))


# --------------------------------------------------------------- diagnostics
def test_filter_diagnostics_and_ratios():
  rng = np.random.default_rng(11)
  batch, classes = 30, 4
  clean = (rng.random((batch, classes)) < 0.4).astype(np.float32)
  new = clean.copy()
  new[rng.random(batch) < 0.3] = 1.0
  noisy = rng.random(batch) < 0.4
  rec = noisy & (rng.random(batch) < 0.5)
  corrupted = rng.random(batch) < 0.4
  got = nf.filter_diagnostics(noisy, rec, new, corrupted, clean)
  equal = [bool(np.all(new[i] == clean[i])) for i in range(batch)]
  want = {"items": 0, "corrupted": 0, "flagged": 0, "true_positives": 0,
          "reconstructed": 0, "reconstructed_correct": 0, "unlabeled": 0}
  for i in range(batch):
    want["items"] += 1
    want["corrupted"] += corrupted[i]
    want["flagged"] += noisy[i]
    want["true_positives"] += noisy[i] and corrupted[i]
    want["reconstructed"] += rec[i]
    want["reconstructed_correct"] += rec[i] and equal[i]
    want["unlabeled"] += noisy[i] and not rec[i]
  assert {k: int(v) for k, v in got.items()} == want
  ratios = nf.diagnostics_ratios(got)
  assert ratios["precision"] == pytest.approx(
      want["true_positives"] / want["flagged"])
  assert ratios["recall"] == pytest.approx(
      want["true_positives"] / want["corrupted"])
  assert ratios["reconstruction_accuracy"] == pytest.approx(
      want["reconstructed_correct"] / want["reconstructed"])
  zero = {k: 0 for k in want}
  assert all(v == 0.0 for v in nf.diagnostics_ratios(zero).values())
  with pytest.raises(KeyError, match="flagged"):
    nf.diagnostics_ratios({"items": 1})


@pytest.mark.parametrize("seed", range(3))
def test_count_decisions_equals_a_recount_of_the_batches(seed):
  """The host's epoch counts from per-item decisions equal the per-batch
  counts the step used to sum (filter_diagnostics over each batch): unseen
  items, empty label rows, a reconstructed label equal to the clean one, a
  batch of one."""
  rng = np.random.default_rng(seed)
  n, classes = 30, 3
  observed = (rng.random((n, classes)) < 0.4).astype(np.float32)
  observed[:4] = observed[4]
  observed[5] = 0                                   # an empty label row
  truth = {"corrupted": rng.random(n) < 0.4,
           "labels": np.where(rng.random((n, classes)) < 0.2, 1 - observed, observed)}
  order = rng.permutation(n)[:n - 3]               # 3 items unseen this epoch
  batches = [order[:12], order[12:26], order[26:]]  # the last: a batch of one
  assert len(batches[-1]) == 1
  flags = np.zeros(n, np.int8)
  source = np.full(n, -1, np.int32)
  want = dict.fromkeys(("items", "corrupted", "flagged", "true_positives",
                        "reconstructed", "reconstructed_correct", "unlabeled"), 0)
  for idx in batches:
    noisy = rng.random(len(idx)) < 0.5
    rec = noisy & (rng.random(len(idx)) < 0.6)
    src = rng.integers(0, n, len(idx))
    src[rec] = np.where(rng.random(rec.sum()) < 0.5, idx[rec], src[rec])  # some exact
    new = np.where(rec[:, None], observed[src], observed[idx])
    batch = nf.filter_diagnostics(noisy, rec, new, truth["corrupted"][idx],
                                  truth["labels"][idx])
    want = {k: want[k] + int(v) for k, v in batch.items()}
    flags[idx] = 1 + 2 * noisy + 4 * rec
    source[idx] = np.where(rec, src, -1)
  assert want["reconstructed_correct"] > 0
  assert nf.count_decisions(flags, source, observed, truth) == want
  assert nf.count_decisions(flags, source, observed) == {
      k: want[k] for k in ("items", "flagged", "reconstructed", "unlabeled")}


def test_reconstruct_labels_source_is_the_top_neighbour():
  sim, bank_sim, bank_clean, bank_labels, noisy, self_idx = _recon_case(0)
  new, rec, source = nf.reconstruct_labels(sim, bank_sim, bank_clean, bank_labels,
                                           k=2, noisy=noisy, self_indices=self_idx,
                                           with_source=True)
  dots = np.asarray(sim, np.float64) @ np.asarray(bank_sim, np.float64).T
  dots[np.arange(len(sim)), self_idx] = -np.inf
  want = np.array([sorted(range(len(bank_sim)), key=lambda n: (-d[n], n))[0]
                   for d in dots])
  np.testing.assert_array_equal(source, want)
  np.testing.assert_array_equal(np.asarray(new)[np.asarray(rec)],
                                bank_labels[want][np.asarray(rec)])
