"""config.compute_dtype='bfloat16': the networks compute in bf16, parameters,
optimiser state, losses, filter, CSCC and codes stay float32; a short run on
synthetic:tiny lands within a stated mAP tolerance of the float32 run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import experiment
from common.run_config import ConfigError
from configs import dcgmh as dcgmh_configs
from configs import scbch as scbch_configs

# |mAP(bf16) − mAP(fp32)| on synthetic:tiny after 3 epochs (observed well below).
MAP_TOLERANCE = 0.05


def _maps(results):
  """Every mAP of a results dict, by its path."""
  out = {}
  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        if k == "map" and isinstance(v, (int, float)):
          out[path] = float(v)
        elif k != "settings":
          walk(v, f"{path}/{k}")
  walk(results, "")
  return out


def _scbch(**overrides):
  config = scbch_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, bits=16, epochs=3, image_hidden=(64, 64),
                     text_hidden=(64,), cscc_start_epoch=1, k=5, progress=False,
                     eval_every=0, **overrides))
  return config


def _dcgmh(**overrides):
  config = dcgmh_configs.get_config("synthetic:tiny")
  config.update(dict(batch_size=32, bits=16, epochs=3, hidden=64, fused=64,
                     warmup_epochs=1, progress=False, eval_every=0, **overrides))
  return config


@pytest.mark.parametrize("make", [_scbch, _dcgmh], ids=["scbch", "dcgmh"])
def test_bf16_run_lands_within_tolerance_of_float32(make, tmp_path):
  quiet = dict(log=lambda _: None)
  want = _maps(experiment.run(make(), str(tmp_path / "fp32"), **quiet))
  got = _maps(experiment.run(make(compute_dtype="bfloat16"), str(tmp_path / "bf16"),
                             **quiet))
  assert want and got.keys() == want.keys()
  for key in want:
    assert abs(got[key] - want[key]) <= MAP_TOLERANCE, (key, got[key], want[key])


def test_dcgmh_bf16_keeps_float32_params_and_codes():
  from dcgmh_jax.train import DcgmhMethod
  config = _dcgmh(compute_dtype="bfloat16")
  labels = (np.random.default_rng(0).random((32, 4)) < 0.4).astype(np.float32)
  method = DcgmhMethod(config, image_dim=6, text_dim=5, train_labels=labels,
                       noise_ratio=0.4)
  state = method.init_state()
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))} == {
      jnp.dtype(jnp.float32)}
  kernel = method.model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      jnp.ones((4, 6)), jnp.ones((4, 5)), train=False)
  assert kernel.dtype == jnp.bfloat16  # the network computes in bf16 ...
  codes = method.encode(state, np.ones((3, 6), np.float32), np.ones((3, 5), np.float32))
  assert codes["fused"].dtype == np.int8  # ... codes are taken from it as ±1


@pytest.mark.parametrize("make", [_scbch, _dcgmh], ids=["scbch", "dcgmh"])
@pytest.mark.parametrize("key", ["compute_dtype", "param_dtype"])
def test_unknown_dtype_is_refused_naming_the_key(make, key, tmp_path):
  with pytest.raises(ConfigError, match=f"config.{key}"):
    experiment.run(make(**{key: "float16"}), str(tmp_path), log=lambda _: None)
