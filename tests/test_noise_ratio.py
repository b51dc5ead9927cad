"""The label-margin noise-ratio estimator against a NumPy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from dcgmh_jax import noise_filter as nf


def ref_margins(sim, labels):
  out = []
  for s, y in zip(np.asarray(sim, np.float64), np.asarray(labels)):
    m = int(y.sum())
    if m == 0:
      out.append(nf.EMPTY_ROW_SCORE - s.max())
      continue
    kappa = s[y == 1].mean()
    best = np.sort(s)[::-1][:m].mean()
    out.append(min(kappa - best, 0.0))
  return np.asarray(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margins_and_ratio_match_reference(seed):
  rng = np.random.default_rng(seed)
  n, c = 50, 6
  sim = np.round(rng.uniform(-1, 1, (n, c)), 1).astype(np.float32)  # many ties
  labels = (rng.random((n, c)) < 0.3).astype(np.float32)
  labels[0] = 0                                  # an empty row
  labels[1] = 1                                  # every class: margin 0
  labels[2] = 0
  labels[2, np.argmax(sim[2])] = 1               # the top class: margin 0
  got = np.asarray(nf.label_margins(jnp.asarray(sim), jnp.asarray(labels)))
  want = ref_margins(sim, labels)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got[1] == 0 and got[2] == 0 and np.all(got <= 0)
  for threshold in (0.0, 0.047, 0.13, 0.51):  # off the tie grid of the sims
    ratio = float(nf.margin_noise_ratio(jnp.asarray(sim), jnp.asarray(labels),
                                        threshold=threshold))
    assert ratio == pytest.approx(np.mean(want < -threshold))


def test_one_item_and_bad_threshold():
  sim = jnp.asarray([[0.2, 0.9]])
  assert float(nf.margin_noise_ratio(sim, jnp.asarray([[1.0, 0.0]]))) == 1.0
  assert float(nf.margin_noise_ratio(sim, jnp.asarray([[0.0, 1.0]]))) == 0.0
  with pytest.raises(ValueError, match="threshold"):
    nf.margin_noise_ratio(sim, jnp.asarray([[0.0, 1.0]]), threshold=-1.0)


def test_dcgmh_uses_the_epoch_margin_estimate_when_tau_is_unknown():
  import test_dcgmh_train as t
  from common import parallel
  import jax
  method = t._method(noise_ratio=None)          # warmup_epochs=1: epoch 1 is robust
  assert method.options.tau == "margin"
  rng = np.random.default_rng(3)
  train = {"image": rng.normal(size=(t.N, t.D_IMG)).astype(np.float32),
           "text": rng.poisson(1.0, size=(t.N, t.D_TXT)).astype(np.float32),
           "labels": method.train_labels}
  state = method.init_state()
  assert method.epoch_extras(state, 0, train) == {}  # warm-up: nothing to estimate
  extras = method.epoch_extras(state, 1, train)
  h = np.asarray(method._encode({"params": state.params,
                                 "batch_stats": state.batch_stats},
                                train["image"], train["text"]), np.float64)
  c = np.asarray(state.params["centers"], np.float64)
  sim = (h / np.linalg.norm(h, axis=1, keepdims=True)) @ (
      c / np.linalg.norm(c, axis=1, keepdims=True)).T
  want = np.mean(ref_margins(sim, train["labels"]) < -method.config.noise_ratio_margin)
  # One scalar per epoch (the loop passes it to the step's context).
  assert np.shape(extras["noise_ratio"]) == () and extras["noise_ratio"].dtype == np.float32
  np.testing.assert_allclose(extras["noise_ratio"], want, atol=1.5 / t.N)
  dp = parallel.DataParallel(method.step_body, mesh=parallel.make_mesh(jax.devices()[:2]),
                             max_phases=2)
  batch = next(t._batches(method, 1))
  _, metrics = dp.step(dp.put_state(state), dp.put_rows(batch), dp.put_rows({}),
                       {"epoch": 1, "step_in_epoch": 0, **extras}, "robust")
  # The unlabeled-only pass caps τ at its static buffer (noise_ratio_max·B
  # rows); the whole-batch pass (the default) uses the estimate as it is.
  used = float(extras["noise_ratio"])
  if not method.config.augment_whole_batch:
    used = min(used, method.config.noise_ratio_max)
  assert float(metrics["noise_ratio_used"]) == pytest.approx(used)
  assert float(metrics["noise_ratio_estimate"]) == pytest.approx(used)
