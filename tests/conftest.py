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


def pytest_configure(config):
  """JAX's persistent compilation cache, in a fresh directory per test process
  (each xdist worker its own: no writer ever races a reader): many tests
  compile the same tiny programs, and a program whose HLO, compile options,
  devices and XLA flags all match (the cache key) loads instead of compiling
  (a hit is the executable XLA builds for that same program). Exception: an
  executable loaded from this cache does not survive jax's
  serialize_executable round trip on CPU (it fails at run time with NOT_FOUND
  "Function ... not found"), so the tests of common.exec_cache, which
  serializes executables, run without it (`without_xla_cache`).
  NHJ_TEST_NO_XLA_CACHE=1 runs the whole suite without it."""
  if os.environ.get("NHJ_TEST_NO_XLA_CACHE"):
    return
  if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
    return  # the xdist controller: it runs no test
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config._nhj_xla_cache = tempfile.mkdtemp(prefix="nhj_test_xla_cache_")  # pylint: disable=protected-access
  jax.config.update("jax_compilation_cache_dir", config._nhj_xla_cache)  # pylint: disable=protected-access
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@pytest.fixture
def without_xla_cache():
  """JAX's persistent compilation cache off for one test (tests of
  common.exec_cache, which measure that cache alone)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  saved = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", saved)
  compilation_cache.reset_cache()


def pytest_unconfigure(config):
  path = getattr(config, "_nhj_xla_cache", None)
  if path:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(path, ignore_errors=True)


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
