"""NRCH step: the objective vs a NumPy reference of the release's sliced form,
D devices == 1 device, an empty clean subset is an exact no-op, the optimiser
is PyTorch's RMSprop, DNS per epoch, release options from the plan."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import methods
from common import parallel
from configs import nrch as nrch_configs
from nrch_jax import dns
from nrch_jax import objectives
from nrch_jax.train import NrchMethod, make_optimizer, options_from_plan

B, D_IMG, D_TXT, C, K = 16, 12, 10, 5, 8


def _config(**overrides):
  config = nrch_configs.get_config("synthetic:tiny")
  config.update({**dict(bits=K, image_hidden=(16, 16), text_hidden=(16,), lr=1e-2,
                        weight_decay=0.1, dns_start_epoch=1, eval_batch_size=16),
                 **overrides})
  return config


def _method(options=objectives.Options(), **overrides):
  return NrchMethod(_config(**overrides), image_dim=D_IMG, text_dim=D_TXT,
                    num_classes=C, options=options)


CLEAN = [np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 1], np.float32),
         np.zeros(B, np.float32),                      # nothing clean: no update
         np.eye(1, B, 5, dtype=np.float32)[0]]         # one clean item


def _batches(steps=3):
  rng = np.random.default_rng(1)
  for s in range(steps):
    labels = (rng.random((B, C)) < 0.3).astype(np.float32)
    labels[s % B] = 0  # an empty label row
    yield ({"image": rng.normal(size=(B, D_IMG)).astype(np.float32),
            "text": rng.normal(size=(B, D_TXT)).astype(np.float32),
            "labels": labels, "index": np.arange(B, dtype=np.int32)},
           {"clean": CLEAN[s % len(CLEAN)]})


def _run(method, mode, devices, steps=3):
  dp = parallel.DataParallel(method.step_body, mode=mode,
                             mesh=parallel.make_mesh(jax.devices()[:devices]),
                             max_phases=len(method.phases))
  state = dp.put_state(method.init_state())
  states, metrics = [], []
  for batch, extras in _batches(steps):
    state, m = dp.step(state, dp.put_rows(batch), dp.put_rows(extras))
    states.append(jax.device_get(dp.get_state(state)))
    metrics.append(jax.device_get(m))
  return states, metrics


def ref_objective(u, v, p, y, clean, *, lam, m, s, tau, double_tanh=False,
                  twice=False, share_labels=True, quant_weight=None):
  """The release's form: slice the batch to the clean items, then the losses."""
  idx = clean > 0
  if not idx.any():
    return 0.0
  u, v, y = u[idx].astype(np.float64), v[idx].astype(np.float64), y[idx]
  ut, vt = (np.tanh(u), np.tanh(v)) if double_tanh else (u, v)

  def f(a, b):
    sim = a @ b.T
    d = np.diag(sim)
    cost = np.where(sim >= d[:, None] - m, sim, sim - s)
    np.fill_diagonal(cost, np.maximum(d, 0))
    share = (y @ y.T > 0).astype(float) * share_labels
    np.fill_diagonal(share, 0)
    return -d + tau * np.log(np.exp(cost / tau * (1 - share)).sum(1)) + m

  rch = 2 * f(ut, vt) if twice else f(ut, vt) + f(vt, ut)
  k = u.shape[1]
  quant = (((np.abs(ut) - 1 / np.sqrt(k)) ** 2).mean(1)
           + ((np.abs(vt) - 1 / np.sqrt(k)) ** 2).mean(1))
  z = 2 * y - 1
  proto = ((z - u @ p.T) ** 2 + (z - v @ p.T) ** 2).mean()
  quant_weight = 1 - lam if quant_weight is None else quant_weight
  return float(np.mean(lam * rch + quant_weight * quant) + proto)


# (objective, options, changes to the reference): each release option and
# each variant, checked in ONE compiled program.
CASES = {
    "full": ("full", objectives.Options(), {}),
    "double_tanh": ("full", objectives.Options(double_tanh=True), {"double_tanh": True}),
    "i2t_twice": ("full", objectives.Options(i2t_twice=True), {"twice": True}),
    "no_quant": ("no_quant", objectives.Options(), {"lam": 1.0, "quant_weight": 0.0}),
    "no_shift": ("no_shift", objectives.Options(), {"s": 0.0}),
    "label_negatives": ("label_negatives", objectives.Options(), {"share_labels": False}),
}


def test_each_release_option_and_variant_is_its_numpy_reference():
  """The objective (shares summed over a 1-device mesh) equals the release's
  sliced form, with each release option and each variant's change."""
  method = _method()
  cfg = method.config
  spec = jax.sharding.PartitionSpec
  rows = spec(parallel.AXIS)

  def values(u, v, p, y, c):
    out = {"u": u, "v": v, "prototypes": p}
    return {name: jax.lax.psum(objectives.VARIANTS[variant].objective(
        out, y, c, cfg, options)[0], parallel.AXIS)
            for name, (variant, options, _) in CASES.items()}

  value = jax.jit(jax.shard_map(values, mesh=parallel.make_mesh(jax.devices()[:1]),
                                in_specs=(rows, rows, spec(), rows, rows),
                                out_specs=spec()))
  forward = jax.jit(method.model.apply)
  params = method.init_state().params
  kw = dict(lam=cfg.lam, m=cfg.margin, s=cfg.shift, tau=cfg.tau)
  first = None
  for batch, extras in _batches(3):
    out = jax.device_get(forward({"params": params}, batch["image"], batch["text"]))
    args = (out["u"], out["v"], out["prototypes"], batch["labels"], extras["clean"])
    got = jax.device_get(value(*args))
    first = got if first is None else first
    for name, (_, _, changes) in CASES.items():
      want = ref_objective(*args, **{**kw, **changes})
      assert float(got[name]) == pytest.approx(want, rel=1e-5, abs=1e-6), name
  # On the first batch every option and variant changes the value.
  assert len({round(float(v), 6) for v in first.values()}) == len(CASES)
  assert objectives.VARIANTS["no_dns"].objective is objectives.nrch_objective
  assert not objectives.VARIANTS["no_dns"].uses_dns
  assert all(objectives.VARIANTS[v].uses_dns for v, _, _ in CASES.values())


def test_eight_devices_equal_one_device_and_an_empty_clean_batch_is_a_no_op():
  method = _method()
  ref_states, ref_metrics = _run(method, "shard_map", 1)
  for mode in parallel.PARALLEL_MODES:
    states, metrics = _run(method, mode, 8)
    for s, r, m, rm in zip(states, ref_states, metrics, ref_metrics):
      assert float(m["loss"]) == pytest.approx(float(rm["loss"]), rel=2e-5)
      for got, want in zip(jax.tree.leaves((s.params, s.opt_state)),
                           jax.tree.leaves((r.params, r.opt_state))):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    # Step 2 (index 1) has no clean item: params AND RMSprop state bit-identical.
    for before, after in zip(jax.tree.leaves((states[0].params, states[0].opt_state)),
                             jax.tree.leaves((states[1].params, states[1].opt_state))):
      np.testing.assert_array_equal(before, after)
    assert float(metrics[1]["skipped"]) == 1.0 and float(metrics[1]["loss"]) == 0.0
    assert float(metrics[1]["grad_norm"]) == 0.0  # finite: no NaN from the masks
    assert float(metrics[0]["clean_fraction"]) == pytest.approx(CLEAN[0].mean())
    assert int(states[2].step) == 3
    # ... while the one-item batch does move them.
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(states[1].params),
                                              jax.tree.leaves(states[2].params)))
  _check_first_step_is_the_sliced_gradient_through_rmsprop(method, ref_states[0])


def _check_first_step_is_the_sliced_gradient_through_rmsprop(method, state1):
  """Step 1 == jax.grad of the loss on the sliced clean batch (no masks, no
  collectives), through a NumPy PyTorch RMSprop with L2 weight decay."""
  from nrch_jax import losses
  cfg = method.config
  state0 = method.init_state()
  batch, extras = next(_batches(1))
  idx = np.flatnonzero(extras["clean"])

  @jax.jit
  def sliced_loss(params):
    out = method.model.apply({"params": params}, batch["image"][idx], batch["text"][idx])
    y = batch["labels"][idx]
    kw = dict(margin=cfg.margin, shift=cfg.shift, tau=cfg.tau)
    rch = losses.rch_loss(out["u"], out["v"], y, **kw) + losses.rch_loss(
        out["v"], out["u"], y, **kw)
    q = losses.quantization_items(out["u"], out["v"])
    w = losses.prototype_items(out["u"], out["v"], y, out["prototypes"])
    return jnp.mean(cfg.lam * rch + (1 - cfg.lam) * q) + jnp.mean(w)

  grads = jax.jit(jax.grad(sliced_loss))(state0.params)
  for got, p, g in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state0.params),
                       jax.tree.leaves(grads)):
    p = np.asarray(p, np.float64)
    g = np.asarray(g, np.float64) + cfg.weight_decay * p
    sq = (1 - cfg.rmsprop_decay) * g * g
    want = p - cfg.lr * g / (np.sqrt(sq) + cfg.rmsprop_eps)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_optimizer_is_pytorch_rmsprop_over_several_steps():
  config = _config(lr=0.01, weight_decay=0.05, rmsprop_decay=0.99, rmsprop_eps=1e-3)
  tx = make_optimizer(config)
  rng = np.random.default_rng(2)
  p = {"a": rng.normal(size=(3, 4)).astype(np.float32)}
  state = tx.init(p)
  ref, sq = p["a"].astype(np.float64), np.zeros((3, 4))
  for _ in range(4):
    g = rng.normal(size=(3, 4)).astype(np.float32)
    updates, state = tx.update({"a": g}, state, p)
    p = optax.apply_updates(p, updates)
    gd = g + 0.05 * ref                          # torch: grad.add(p, alpha=wd)
    sq = 0.99 * sq + 0.01 * gd * gd              # square_avg.mul_(alpha).addcmul_
    ref = ref - 0.01 * gd / (np.sqrt(sq) + 1e-3)  # eps OUTSIDE the sqrt
    np.testing.assert_allclose(p["a"], ref, rtol=1e-5, atol=1e-6)


def test_epoch_extras_are_dns_of_the_numpy_scores():
  method = _method()
  rng = np.random.default_rng(3)
  train = {"labels": (rng.random((40, C)) < 0.3).astype(np.float32),
           "image": rng.normal(size=(40, D_IMG)).astype(np.float32),
           "text": rng.normal(size=(40, D_TXT)).astype(np.float32)}
  train["labels"][7] = 0
  state = method.init_state()
  out = jax.device_get(jax.jit(method.model.apply)({"params": state.params},
                                                   train["image"], train["text"]))
  z = 2 * train["labels"] - 1
  e = (z - out["u"] @ out["prototypes"].T) ** 2 + (z - out["v"] @ out["prototypes"].T) ** 2
  scores = (e * train["labels"]).max(1)
  warm = method.epoch_extras(state, 0, train)
  assert np.all(warm["clean"] == 1)
  active = method.epoch_extras(state, 1, train)
  want, _, fit = dns.select_clean(scores, epoch=1, start_epoch=1, threshold=0.3,
                                  max_iter=10, tol=0.5, reg_covar=5e-4)
  np.testing.assert_array_equal(active["clean"], want)
  assert float(active["gmm_mean_low"]) == pytest.approx(fit.means[0], rel=1e-4)
  corrupted = np.zeros(40, bool)
  corrupted[::3] = True
  summary, line = method.epoch_summary(state, 1, active, train,
                                       {"corrupted": corrupted, "labels": train["labels"]})
  sel = want > 0
  assert summary["dns_precision"] == pytest.approx((sel & ~corrupted).sum() / sel.sum())
  assert summary["dns_recall"] == pytest.approx((sel & ~corrupted).sum() / (~corrupted).sum())
  assert "precision" in line
  # no_dns: every item, every epoch, no pass.
  assert np.all(_method(variant="no_dns").epoch_extras(state, 5, train)["clean"] == 1)


def test_release_options_come_from_the_plan():
  config = _config(release_compat="double_tanh")
  plan = methods.resolve_plan(config)
  assert options_from_plan(plan) == objectives.Options(double_tanh=True, i2t_twice=False)
  assert not plan.loop.eval_at_epoch_start and plan.loop.eval_every == 5
  plan = methods.resolve_plan(_config(release_compat="rch_image_to_text_twice"))
  assert options_from_plan(plan) == objectives.Options(double_tanh=False, i2t_twice=True)
  plan = methods.resolve_plan(_config(release_compat="eval_every_20_at_epoch_start"))
  assert options_from_plan(plan) == objectives.Options()
  assert (plan.loop.eval_every, plan.loop.eval_at_epoch_start, plan.loop.selection,
          plan.loop.keep_partial) == (20, True, "test_queries", False)
  config = _config(release_compat=True)
  plan = methods.resolve_plan(config)
  assert options_from_plan(plan) == objectives.Options(True, True)
  assert plan.loop.eval_every == 20 and plan.loop.eval_at_epoch_start
  assert plan.loop.selection == "test_queries" and plan.loop.keep_partial
  assert options_from_plan(methods.resolve_plan(_config())) == objectives.Options()


@pytest.mark.parametrize("key,value,needle", [
    ("lam", 1.5, "must be in [0, 1]"),
    ("threshold", -0.1, "must be in [0, 1]"),
    ("gmm_max_iter", 0, "integer >= 1"),
    ("gmm_tol", 0.0, ""),
    ("rmsprop_decay", 1.0, "must be in [0, 1)"),
    ("dns_start_epoch", -1, "integer >= 0"),
    ("variant", "nope", "label_negatives"),
    ("release_compat", "eval_at_epoch_start", "SCBCH release"),
    ("image_hidden", (0,), ""),
])
def test_bad_values_are_refused_naming_the_key(key, value, needle):
  from common import experiment
  from common.run_config import ConfigError
  config = _config()
  config[key] = value
  with pytest.raises(ConfigError, match=rf"config\.{key}") as raised:
    experiment.check_config(config)
  assert needle in str(raised.value)


def test_configs_release_values_synthetic_arguments_and_locking():
  for name in ("mirflickr25k", "nuswide21", "nuswide10", "mscoco", "iaprtc12"):
    c = nrch_configs.get_config(name)
    assert (c.method, c.dataset, c.noise_protocol, c.noise_rate) == (
        "nrch", name, "scbch", 0.5)
    assert (c.lam, c.margin, c.shift, c.tau, c.threshold, c.dns_start_epoch,
            c.gmm_max_iter, c.gmm_tol, c.gmm_reg_covar, c.lr, c.weight_decay,
            c.rmsprop_decay, c.rmsprop_eps, c.batch_size, c.epochs, c.eval_every,
            c.image_hidden, c.text_hidden) == (
                0.6, 0.2, 1.0, 1.0, 0.3, 19, 10, 0.5, 5e-4, 1e-5, 1e-5, 0.99, 1e-8,
                128, 100, 20, (8192, 8192), (8192,))
  assert nrch_configs.get_config().dataset == "synthetic:demo"
  assert nrch_configs.get_config("synthetic:tiny").dataset == "synthetic:tiny"
  with pytest.raises(ValueError, match="mirflickr25k"):
    nrch_configs.get_config("flickr")
  c = nrch_configs.get_config()
  with pytest.raises(AttributeError, match="bits"):
    c.bitz = 3
  from configs import key_docs
  assert set(c.keys()) <= set(key_docs("nrch"))  # every key documented
