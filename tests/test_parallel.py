"""The data-parallel drivers: D devices == one device on the same global batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import parallel


def _global_loss(w, x, y):
  """A pair loss over the whole batch plus a per-item loss (mean over B)."""
  z = jnp.tanh(x @ w)
  pair = jnp.mean((z @ z.T - y @ y.T) ** 2)
  item = jnp.mean(jnp.sum((z - y) ** 2, axis=1))
  return pair + item


def _body(state, batch, extras, context, *, phase):
  x, y = batch["x"], batch["y"]
  n_local = x.shape[0]

  def share(w):
    z = jnp.tanh(x @ w)
    z_all = parallel.gather_rows(z)
    y_all = parallel.gather_rows(y)
    b = z_all.shape[0]
    pair_rows = jnp.sum((z @ z_all.T - y @ y_all.T) ** 2) / (b * b)  # rows form
    item = jnp.sum(jnp.sum((z - y) ** 2, axis=1) * extras["w"]) / b
    return pair_rows + item

  loss, _, grads = parallel.global_value_and_grad(share, state["w"])
  scale = 1.0 if phase == "warmup" else 0.5
  # The loop's position arrives as replicated data (no recompile per epoch).
  scale = scale / (1.0 + context["epoch"].astype(jnp.float32))
  new_w = state["w"] - 0.1 * scale * grads
  del n_local
  return {"w": new_w, "step": state["step"] + 1}, {"loss": loss}


def _reference(w, x, y, scale):
  loss, g = jax.value_and_grad(_global_loss)(w, x, y)
  return w - 0.1 * scale * g, loss


@pytest.mark.parametrize("mode", parallel.PARALLEL_MODES)
@pytest.mark.parametrize("num_devices", [1, 8])
def test_driver_matches_single_device(mode, num_devices):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 5)).astype(np.float32)
  y = rng.normal(size=(16, 3)).astype(np.float32)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  dp = parallel.DataParallel(_body, mode=mode, mesh=mesh)
  state = dp.put_state({"w": w0, "step": np.int32(0)})
  want_w = w0
  for epoch, (phase, scale) in enumerate([("warmup", 1.0), ("robust", 0.5),
                                          ("robust", 0.5)]):
    batch = dp.put_rows({"x": x, "y": y})
    extras = dp.put_rows({"w": np.ones(16, np.float32)})
    state, metrics = dp.step(state, batch, extras,
                             {"epoch": epoch, "step_in_epoch": 0}, phase)
    scale /= 1.0 + epoch
    want_w, want_loss = _reference(want_w, x, y, scale)
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5)
  got = dp.get_state(state)
  np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(want_w), rtol=1e-5, atol=1e-6)
  assert int(got["step"]) == 3


def test_driver_rejects_unknown_mode():
  with pytest.raises(ValueError, match="parallel"):
    parallel.DataParallel(_body, mode="pjit")


@pytest.mark.parametrize("mode", parallel.PARALLEL_MODES)
def test_repeated_phases_do_not_retrace_and_a_third_phase_is_an_error(mode):
  x = np.zeros((8, 5), np.float32)
  y = np.zeros((8, 3), np.float32)
  dp = parallel.DataParallel(_body, mode=mode, max_phases=2)
  state = dp.put_state({"w": np.zeros((5, 3), np.float32), "step": np.int32(0)})
  for phase in ["warmup", "warmup", "robust", "robust", "warmup"]:
    state, _ = dp.step(state, dp.put_rows({"x": x, "y": y}),
                       dp.put_rows({"w": np.ones(8, np.float32)}), phase=phase)
  with pytest.raises(AssertionError):
    dp.step(state, dp.put_rows({"x": x, "y": y}),
            dp.put_rows({"w": np.ones(8, np.float32)}), phase="third")


def test_check_finite_names_metric():
  with pytest.raises(FloatingPointError, match="loss"):
    parallel.check_finite({"loss": np.float32(np.nan)}, step=3, epoch=1)
