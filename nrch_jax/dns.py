"""DNS, the dynamic noise separator: a two-component 1-D Gaussian mixture on
the min-max normalised per-item losses, once per epoch (host NumPy, float64).

    l~_i = (l_i - min l + 1e-8) / (max l - min l + 1e-8)
    fit a 2-component GMM to {l~_i} (scikit-learn's EM loop, below)
    p_i = posterior of the component with the smaller mean
    clean_i = 1[p_i >= threshold] from `start_epoch` on; 1 before it.

The EM loop follows scikit-learn's GaussianMixture(n_components=2,
covariance_type="full", n_init=1, init_params="kmeans") that the release
calls: hard responsibilities from a 2-means partition -> M-step; then repeat
E-step, M-step, lower bound = mean log-likelihood, until |change| < tol (the
first change is +inf) or max_iter iterations; component sizes n_k + 10 eps
(float64), variances + reg_covar; posteriors from the final parameters.

Initialisation (where the release is not reproducible: scikit-learn's k-means
draws from NumPy's unseeded global RNG): the EXACT optimal 1-D 2-means
partition, i.e. the threshold split of the sorted values with the least
within-group sum of squares (the first such split on ties). It is
deterministic, needs no seed, and is the partition k-means converges to on
well-separated data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NORM_EPS = 1e-8  # the release's min-max normalisation constant
_EPS = 10 * np.finfo(np.float64).eps  # scikit-learn's component-size floor


@dataclasses.dataclass(frozen=True)
class GmmFit:
  """A fitted two-component 1-D mixture (index 0: the smaller mean)."""
  weights: np.ndarray    # (2,)
  means: np.ndarray      # (2,)
  variances: np.ndarray  # (2,)
  iterations: int
  converged: bool
  lower_bound: float     # mean log-likelihood at the last iteration
  degenerate: bool = False  # fewer than 2 distinct values: no mixture fitted


def minmax_normalize(losses: np.ndarray) -> np.ndarray:
  """(l - min + 1e-8) / (max - min + 1e-8) in float64; all equal -> all 1."""
  x = np.asarray(losses, np.float64)
  return (x - x.min() + NORM_EPS) / (x.max() - x.min() + NORM_EPS)


def two_means_split(x: np.ndarray) -> np.ndarray:
  """Hard labels (0: low group, 1: high group) of the optimal 1-D 2-means.

  Among the splits of the sorted values between two DIFFERENT values, the one
  with the least sum of squared distances to the two group means; the first
  on ties. Raises ValueError with fewer than 2 distinct values.
  """
  x = np.asarray(x, np.float64).ravel()
  xs = np.sort(x)
  n = len(xs)
  k = np.arange(1, n)                       # left group = xs[:k]
  valid = xs[1:] > xs[:-1]
  if not valid.any():
    raise ValueError("2-means needs at least 2 distinct values")
  c1, c2 = np.cumsum(xs), np.cumsum(xs * xs)
  left = c2[k - 1] - c1[k - 1] ** 2 / k
  right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (n - k)
  sse = np.where(valid, left + right, np.inf)
  split = int(np.argmin(sse))               # xs[:split + 1] is the low group
  return (x > xs[split]).astype(np.int64)


def m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float, *,
           initial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(weights, means, variances) from responsibilities (N, 2), as scikit-learn:
  n_k = sum_i r_ik + 10 eps; mu_k = sum_i r_ik x_i / n_k;
  var_k = sum_i r_ik (x_i - mu_k)^2 / n_k + reg_covar; w_k = n_k / sum_k n_k
  (the initial M-step: w_k = n_k / N)."""
  nk = resp.sum(axis=0) + _EPS
  means = resp.T @ x / nk
  variances = np.einsum("ik,ik->k", resp, (x[:, None] - means[None, :]) ** 2) / nk
  variances = variances + reg_covar
  return nk / (len(x) if initial else nk.sum()), means, variances


def log_joint(x: np.ndarray, weights: np.ndarray, means: np.ndarray,
              variances: np.ndarray) -> np.ndarray:
  """log w_k + log N(x_i; mu_k, var_k), (N, 2)."""
  return (np.log(weights)[None, :]
          - 0.5 * (np.log(2 * np.pi) + np.log(variances)[None, :]
                   + (x[:, None] - means[None, :]) ** 2 / variances[None, :]))


def e_step(x: np.ndarray, weights, means, variances) -> tuple[np.ndarray, float]:
  """(responsibilities (N, 2), mean log-likelihood)."""
  lj = log_joint(x, weights, means, variances)
  top = lj.max(axis=1, keepdims=True)
  log_norm = top[:, 0] + np.log(np.exp(lj - top).sum(axis=1))
  return np.exp(lj - log_norm[:, None]), float(log_norm.mean())


def fit_gmm(x: np.ndarray, *, max_iter: int, tol: float, reg_covar: float,
            init_labels: np.ndarray | None = None) -> GmmFit:
  """Two-component 1-D EM as scikit-learn runs it (module docstring).

  Args:
    x: (N,) values.
    max_iter, tol, reg_covar: scikit-learn's arguments.
    init_labels: (N,) hard 0/1 initial assignment (default: two_means_split).

  Returns:
    GmmFit with the components ordered by mean (index 0 the smaller); with
    fewer than 2 distinct values, a degenerate fit (one component, weight 1).
  """
  x = np.asarray(x, np.float64).ravel()
  if len(x) < 2 or np.all(x == x[0]):
    mean = float(x.mean()) if len(x) else 0.0
    return GmmFit(weights=np.array([1.0, 0.0]), means=np.array([mean, mean]),
                  variances=np.array([reg_covar, reg_covar]), iterations=0,
                  converged=True, lower_bound=float("nan"), degenerate=True)
  labels = two_means_split(x) if init_labels is None else np.asarray(init_labels)
  resp = np.eye(2)[labels]
  weights, means, variances = m_step(x, resp, reg_covar, initial=True)
  lower_bound, converged, iterations = -np.inf, False, 0
  for iterations in range(1, max_iter + 1):
    previous = lower_bound
    resp, lower_bound = e_step(x, weights, means, variances)
    weights, means, variances = m_step(x, resp, reg_covar)
    if abs(lower_bound - previous) < tol:
      converged = True
      break
  order = np.argsort(means, kind="stable")
  return GmmFit(weights=weights[order], means=means[order],
                variances=variances[order], iterations=iterations,
                converged=converged, lower_bound=float(lower_bound))


def low_loss_posterior(x: np.ndarray, fit: GmmFit) -> np.ndarray:
  """p_i: posterior of the smaller-mean component under `fit`'s parameters
  (1 everywhere for a degenerate fit)."""
  x = np.asarray(x, np.float64).ravel()
  if fit.degenerate:
    return np.ones(len(x))
  resp, _ = e_step(x, fit.weights, fit.means, fit.variances)
  return resp[:, 0]


def select_clean(losses: np.ndarray, *, epoch: int, start_epoch: int,
                 threshold: float, max_iter: int, tol: float, reg_covar: float
                 ) -> tuple[np.ndarray, np.ndarray, GmmFit]:
  """The epoch's clean set from the per-item losses.

  Returns:
    (clean (N,) float32 0/1, posterior p (N,) float64, the GMM fit);
    clean_i = 1[p_i >= threshold] if epoch >= start_epoch, else 1.
  """
  x = minmax_normalize(losses)
  fit = fit_gmm(x, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
  p = low_loss_posterior(x, fit)
  if epoch < start_epoch:
    return np.ones(len(x), np.float32), p, fit
  return (p >= threshold).astype(np.float32), p, fit
