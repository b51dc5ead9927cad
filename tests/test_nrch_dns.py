"""DNS: the 1-D two-component GMM vs a NumPy re-derivation and scikit-learn,
the 2-means initialisation, normalisation, threshold and warm-up."""

import math

import numpy as np
import pytest

from nrch_jax import dns


def _bimodal(seed, n=400, noisy=0.3):
  rng = np.random.default_rng(seed)
  k = int(n * noisy)
  return np.concatenate([rng.normal(0.2, 0.05, n - k), rng.normal(0.7, 0.1, k)])


def ref_em(x, labels, *, max_iter, tol, reg):
  """Scalar-loop EM (scikit-learn's algorithm, written out independently)."""
  n = len(x)
  eps = 10 * np.finfo(float).eps

  def params(resp, initial):
    out = []
    for k in range(2):
      nk = sum(r[k] for r in resp) + eps
      mu = sum(r[k] * xi for r, xi in zip(resp, x)) / nk
      var = sum(r[k] * (xi - mu) ** 2 for r, xi in zip(resp, x)) / nk + reg
      out.append([nk, mu, var])
    total = n if initial else out[0][0] + out[1][0]
    return [(nk / total, mu, var) for nk, mu, var in out]

  def estep(comps):
    resp, ll = [], 0.0
    for xi in x:
      joint = [math.log(w) - 0.5 * (math.log(2 * math.pi * var) + (xi - mu) ** 2 / var)
               for w, mu, var in comps]
      top = max(joint)
      norm = top + math.log(sum(math.exp(j - top) for j in joint))
      resp.append([math.exp(j - norm) for j in joint])
      ll += norm
    return resp, ll / n

  comps = params([[1.0 - l, float(l)] for l in labels], True)
  bound, it = -math.inf, 0
  for it in range(1, max_iter + 1):
    prev = bound
    resp, bound = estep(comps)
    comps = params(resp, False)
    if abs(bound - prev) < tol:
      break
  resp, _ = estep(comps)
  return comps, resp, it


@pytest.mark.parametrize("seed,tol", [(0, 0.5), (1, 1e-3), (2, 0.5)])
def test_fit_matches_the_loop_em_from_the_same_init(seed, tol):
  x = dns.minmax_normalize(_bimodal(seed, n=150))
  labels = dns.two_means_split(x)
  fit = dns.fit_gmm(x, max_iter=10, tol=tol, reg_covar=5e-4)
  comps, resp, iterations = ref_em(x, labels, max_iter=10, tol=tol, reg=5e-4)
  order = np.argsort([c[1] for c in comps])
  np.testing.assert_allclose(fit.means, [comps[k][1] for k in order], rtol=1e-10)
  np.testing.assert_allclose(fit.variances, [comps[k][2] for k in order], rtol=1e-10)
  np.testing.assert_allclose(fit.weights, [comps[k][0] for k in order], rtol=1e-10)
  assert fit.iterations == iterations
  np.testing.assert_allclose(dns.low_loss_posterior(x, fit),
                             [r[order[0]] for r in resp], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed,tol", [(3, 0.5), (4, 1e-4)])
def test_fit_matches_scikit_learn_given_the_same_initial_parameters(seed, tol):
  mixture = pytest.importorskip("sklearn.mixture")
  x = dns.minmax_normalize(_bimodal(seed))
  labels = dns.two_means_split(x)
  w0, mu0, var0 = dns.m_step(x, np.eye(2)[labels], 5e-4, initial=True)
  gmm = mixture.GaussianMixture(
      n_components=2, max_iter=10, tol=tol, reg_covar=5e-4, weights_init=w0,
      means_init=mu0[:, None], precisions_init=(1 / var0)[:, None, None])
  gmm.fit(x[:, None])
  fit = dns.fit_gmm(x, max_iter=10, tol=tol, reg_covar=5e-4)
  order = np.argsort(gmm.means_[:, 0])
  np.testing.assert_allclose(fit.means, gmm.means_[order, 0], rtol=1e-9)
  np.testing.assert_allclose(fit.variances, gmm.covariances_[order, 0, 0], rtol=1e-9)
  np.testing.assert_allclose(fit.weights, gmm.weights_[order], rtol=1e-9)
  assert fit.iterations == gmm.n_iter_
  p = gmm.predict_proba(x[:, None])[:, gmm.means_[:, 0].argmin()]
  np.testing.assert_allclose(dns.low_loss_posterior(x, fit), p, rtol=1e-8, atol=1e-12)


def test_two_means_split_is_the_optimal_partition_and_matches_kmeans():
  cluster = pytest.importorskip("sklearn.cluster")
  rng = np.random.default_rng(5)
  x = np.round(rng.random(40), 1)  # many ties
  labels = dns.two_means_split(x)
  sse = lambda g: ((g - g.mean()) ** 2).sum() if len(g) else 0.0
  best = min(sse(x[x <= t]) + sse(x[x > t]) for t in np.unique(x)[:-1])
  assert sse(x[labels == 0]) + sse(x[labels == 1]) == pytest.approx(best, abs=1e-12)
  assert x[labels == 0].max() < x[labels == 1].min()  # equal values stay together
  y = _bimodal(6)
  km = cluster.KMeans(2, n_init=1, random_state=0).fit(y[:, None]).labels_
  ours = dns.two_means_split(y)
  assert np.array_equal(ours, km) or np.array_equal(ours, 1 - km)
  with pytest.raises(ValueError, match="2 distinct"):
    dns.two_means_split(np.ones(5))


def test_minmax_normalisation_and_the_degenerate_cases():
  np.testing.assert_allclose(dns.minmax_normalize([3.0, 1.0, 2.0]),
                             [(2 + 1e-8) / (2 + 1e-8), 1e-8 / (2 + 1e-8),
                              (1 + 1e-8) / (2 + 1e-8)])
  np.testing.assert_array_equal(dns.minmax_normalize([0.4] * 4), np.ones(4))
  for losses in (np.full(6, 0.3), np.array([0.5])):  # all equal, a single item
    clean, p, fit = dns.select_clean(losses, epoch=9, start_epoch=0, threshold=0.3,
                                     max_iter=10, tol=0.5, reg_covar=5e-4)
    assert fit.degenerate and np.all(clean == 1) and np.all(p == 1)


def test_selection_threshold_is_inclusive_and_warm_up_selects_everyone():
  losses = _bimodal(7)
  kw = dict(max_iter=10, tol=0.5, reg_covar=5e-4)
  clean, p, fit = dns.select_clean(losses, epoch=19, start_epoch=19, threshold=0.3, **kw)
  assert fit.means[0] < fit.means[1]
  np.testing.assert_array_equal(clean, (p >= 0.3).astype(np.float32))
  # threshold exactly at one item's posterior: that item is selected
  at = float(np.sort(p)[len(p) // 3])
  clean_at, _, _ = dns.select_clean(losses, epoch=19, start_epoch=19, threshold=at, **kw)
  assert clean_at[np.flatnonzero(p == at)].min() == 1
  assert 0 < clean.sum() < len(clean)
  # the low-loss items are the selected ones
  assert losses[clean == 1].mean() < losses[clean == 0].mean()
  warm, p_warm, _ = dns.select_clean(losses, epoch=18, start_epoch=19, threshold=0.3, **kw)
  assert np.all(warm == 1)
  np.testing.assert_array_equal(p_warm, p)  # the fit itself does not depend on the epoch
