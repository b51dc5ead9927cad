"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

# The tests' programs are tiny and compiled once each: cheaper XLA compilation
# (no expensive LLVM passes) makes the suite ~25% faster on 2 cores; both sides
# of every equality test run with the same flags.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def _restore_checkpoint(workdir, step):
  """(params, extras) of checkpoint `step` of a finished run's workdir."""
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from common import methods, run_config  # pylint: disable=g-import-not-at-top
  from common.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  workdir = str(workdir)
  config = run_config.load(workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    resolved = json.load(f)["resolved"]
  spec = methods.get_spec(config.method)
  method = spec.for_inference(config, resolved, methods.resolve_plan(config, spec))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=100)
  try:
    state, extras, _ = ckpt.restore(step, state_template=jax.eval_shape(method.init_state))
  finally:
    ckpt.close()
  return jax.device_get(state.params), extras


@pytest.fixture
def restore_checkpoint():
  """restore_checkpoint(workdir, step) -> (params, extras) of that checkpoint."""
  return _restore_checkpoint
