"""common.exec_cache: compiled step programs loaded from disk are keyed on
everything that changes the program (a changed config, array or closure never
reuses a stale executable), give bit-identical results, survive a damaged
entry, and are off unless enabled."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from common import exec_cache
from common import experiment
from common import parallel

# common.exec_cache alone: JAX's persistent cache (on for the suite, conftest.py)
# is off here, as in a process whose launcher has --compilation_cache_dir unset.
pytestmark = pytest.mark.usefixtures("without_xla_cache")


@pytest.fixture
def cache_dir(tmp_path):
  exec_cache.enable(str(tmp_path / "cache"))
  yield tmp_path / "cache"
  exec_cache.enable(None)


def _entries(cache_dir):
  path = cache_dir / exec_cache.SUBDIR
  return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ------------------------------------------------------------- fingerprint


def test_fingerprint_follows_values_not_identities():
  config = ml_collections.ConfigDict({"lr": 0.1, "widths": (4, 8)})
  arr = np.arange(6, dtype=np.float32).reshape(2, 3)
  base = exec_cache.fingerprint((config, arr, {"a": [1, 2.5, "x"]}))
  same = exec_cache.fingerprint((ml_collections.ConfigDict({"lr": 0.1, "widths": (4, 8)}),
                                 arr.copy(), {"a": [1, 2.5, "x"]}))
  assert base == same
  changed = [
      (ml_collections.ConfigDict({"lr": 0.2, "widths": (4, 8)}), arr, {"a": [1, 2.5, "x"]}),
      (config, arr.astype(np.float64), {"a": [1, 2.5, "x"]}),
      (config, arr.reshape(3, 2), {"a": [1, 2.5, "x"]}),
      (config, np.where(arr == 5, np.nextafter(np.float32(5), 6), arr), {"a": [1, 2.5, "x"]}),
      (config, arr, {"a": [1, 2.5000000000000004, "x"]}),
      (config, arr, {"a": (1, 2.5, "x")}),
      (config, arr, {"b": [1, 2.5, "x"]}),
  ]
  prints = {exec_cache.fingerprint(v) for v in changed}
  assert base not in prints and len(prints) == len(changed)
  assert exec_cache.fingerprint(0.0) != exec_cache.fingerprint(-0.0)
  keys = [jax.random.key(0), jax.random.key(0), jax.random.key(1), jax.random.PRNGKey(0)]
  assert len({exec_cache.fingerprint(k) for k in keys}) == 3
  assert exec_cache.fingerprint(keys[0]) == exec_cache.fingerprint(keys[1])
  assert (exec_cache.fingerprint(jnp.arange(3.0))
          != exec_cache.fingerprint(jnp.arange(3.0, dtype=jnp.bfloat16)))
  assert exec_cache.fingerprint(1) != exec_cache.fingerprint(True)


def _make_scaled(scale):
  def fn(x):
    return x * scale
  return fn


class _Holder:
  def __init__(self, value):
    self.value = value
    self.me = self  # a cycle

  def body(self, x):
    return x + self.value


def test_fingerprint_of_functions_follows_code_closures_and_bound_objects():
  assert exec_cache.fingerprint(_make_scaled(2.0)) == exec_cache.fingerprint(_make_scaled(2.0))
  assert exec_cache.fingerprint(_make_scaled(2.0)) != exec_cache.fingerprint(_make_scaled(3.0))
  f = lambda x: x + 1
  g = lambda x: x + 2
  assert exec_cache.fingerprint(f) != exec_cache.fingerprint(g)
  assert (exec_cache.fingerprint(_Holder(np.ones(3)).body)
          == exec_cache.fingerprint(_Holder(np.ones(3)).body))
  assert (exec_cache.fingerprint(_Holder(np.ones(3)).body)
          != exec_cache.fingerprint(_Holder(np.zeros(3)).body))
  jitted = jax.jit(_make_scaled(2.0))
  assert exec_cache.fingerprint(jitted) != exec_cache.fingerprint(jax.jit(_make_scaled(3.0)))


def test_an_object_known_only_by_address_cannot_be_keyed():
  class Opaque:
    __slots__ = ()
  with pytest.raises(exec_cache.Unfingerprintable, match="Opaque"):
    exec_cache.fingerprint([Opaque()])


# ------------------------------------------------------------- a step driver


@dataclasses.dataclass
class _Method:
  """A toy method whose step depends on its config and a data-derived array."""
  config: ml_collections.ConfigDict
  weights: np.ndarray

  def step_body(self, state, batch, extras, context, *, phase):
    del extras, context
    grad = jax.lax.psum(jnp.sum(batch["x"] * self.weights, axis=0), parallel.AXIS)
    scale = self.config.lr * (2.0 if phase == "b" else 1.0)
    new = {"w": state["w"] - scale * grad}
    return new, {"loss": jnp.sum(new["w"] ** 2)}


def _run_steps(method, phases=("a", "a", "b", "b", "a")):
  driver = parallel.DataParallel(method.step_body, max_phases=3)
  state = driver.put_state({"w": jnp.ones(3, jnp.float32)})
  rng = np.random.default_rng(0)
  losses = []
  for i, phase in enumerate(phases):
    rows = 8 if i == 3 else 16  # a smaller batch: another program of phase b
    batch = driver.put_rows({"x": rng.normal(size=(rows, 3)).astype(np.float32)})
    state, metrics = driver.step(state, batch, {}, None, phase)
    losses.append(np.asarray(metrics["loss"]))
  return np.asarray(jax.device_get(state["w"])), np.array(losses)


def _method(lr=0.1, weights=(1.0, 2.0, 3.0)):
  return _Method(ml_collections.ConfigDict({"lr": lr}), np.asarray(weights, np.float32))


def test_steps_load_from_the_cache_bit_identically_and_never_stale(cache_dir):
  exec_cache.enable(None)
  want = {k: _run_steps(m) for k, m in (("base", _method()), ("lr", _method(lr=0.3)),
                                         ("data", _method(weights=(1.0, 2.0, 3.5))))}
  exec_cache.enable(str(cache_dir))
  before = exec_cache.stats()
  got = _run_steps(_method())                   # compiles and stores 3 programs
  assert len(_entries(cache_dir)) == 3
  assert exec_cache.stats()["misses"] - before["misses"] == 3
  again = _run_steps(_method())                 # a new driver: loads them
  assert exec_cache.stats()["hits"] - before["hits"] == 3
  for run in (got, again):
    for a, b in zip(run, want["base"]):
      np.testing.assert_array_equal(a, b)
  for key, method in (("lr", _method(lr=0.3)), ("data", _method(weights=(1.0, 2.0, 3.5)))):
    hits = exec_cache.stats()["hits"]
    run = _run_steps(method)                    # another program: not the stored one
    assert exec_cache.stats()["hits"] == hits, key
    for a, b in zip(run, want[key]):
      np.testing.assert_array_equal(a, b)
  assert len(_entries(cache_dir)) == 9
  assert not [n for n in _entries(cache_dir) if n.startswith(".tmp")]


def test_a_damaged_entry_is_compiled_again(cache_dir):
  want = _run_steps(_method(), phases=("a",))
  (entry,) = _entries(cache_dir)
  path = cache_dir / exec_cache.SUBDIR / entry
  path.write_bytes(path.read_bytes()[:100])     # e.g. a disk-full write elsewhere
  misses = exec_cache.stats()["misses"]
  got = _run_steps(_method(), phases=("a",))
  assert exec_cache.stats()["misses"] == misses + 1
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  assert path.stat().st_size > 100              # replaced by a good entry


def test_off_by_default_and_when_disabled(tmp_path):
  assert exec_cache.directory() is None
  driver = parallel.DataParallel(_method().step_body)
  state = driver.put_state({"w": jnp.ones(3, jnp.float32)})
  batch = driver.put_rows({"x": np.ones((16, 3), np.float32)})
  driver.step(state, batch, {}, None, "a")
  assert not isinstance(driver._compiled["a"], exec_cache.CachedJit)


# ------------------------------------------------------------- whole runs


def _dcgmh(**overrides):
  from configs import dcgmh  # pylint: disable=g-import-not-at-top
  config = dcgmh.get_config("synthetic:tiny")
  config.update(dict(epochs=2, batch_size=32, bits=16, hidden=32, fused=32,
                     warmup_epochs=1, progress=False, eval_every=0))
  config.update(overrides)
  return config


def _codes(workdir):
  with np.load(os.path.join(workdir, "dcgmh_codes.npz")) as f:
    return {k: f[k] for k in f.files}


def test_whole_runs_with_and_without_the_cache_are_identical(tmp_path, cache_dir):
  exec_cache.enable(None)
  off = {lr: experiment.run(_dcgmh(lr=lr), str(tmp_path / f"off{lr}"), log=lambda _: None)
         for lr in (0.01, 0.02)}
  exec_cache.enable(str(cache_dir))
  start = exec_cache.stats()
  experiment.run(_dcgmh(lr=0.01), str(tmp_path / "first"), log=lambda _: None)
  stored = exec_cache.stats()
  assert stored["misses"] - start["misses"] == 2 and stored["uncacheable"] == start["uncacheable"]
  experiment.run(_dcgmh(lr=0.01), str(tmp_path / "second"), log=lambda _: None)
  assert exec_cache.stats()["hits"] - stored["hits"] == 2
  # Another learning rate (inside optax's closures): new programs, its own results.
  experiment.run(_dcgmh(lr=0.02), str(tmp_path / "lr"), log=lambda _: None)
  assert exec_cache.stats()["hits"] - stored["hits"] == 2
  for name, lr in (("first", 0.01), ("second", 0.01), ("lr", 0.02)):
    want, got = _codes(tmp_path / f"off{lr}"), _codes(tmp_path / name)
    assert sorted(want) == sorted(got)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert off[0.01]["fused"]["map"] != off[0.02]["fused"]["map"]


def test_concurrent_writers_never_expose_a_partial_entry(tmp_path):
  """Entries are written to a temporary file and renamed: a reader sees one
  writer's whole entry or none, never a mix (processes sharing a cache)."""
  import threading  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / exec_cache.SUBDIR / "entry.pkl")
  payloads = [bytes([i]) * 200_000 for i in (1, 2)]
  stop = threading.Event()
  seen, errors = set(), []

  def write(data):
    while not stop.is_set():
      exec_cache._write_atomic(path, data)  # pylint: disable=protected-access

  def read():
    while not stop.is_set():
      try:
        with open(path, "rb") as f:
          data = f.read()
      except FileNotFoundError:
        continue
      if data not in payloads:
        errors.append(len(data))
      seen.add(data[:1])

  threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
  threads.append(threading.Thread(target=read))
  for t in threads:
    t.start()
  import time  # pylint: disable=g-import-not-at-top
  time.sleep(1.0)
  stop.set()
  for t in threads:
    t.join()
  assert not errors
  assert seen
  assert os.listdir(os.path.dirname(path)) == ["entry.pkl"]  # no temporary files left


def test_an_executable_from_jaxs_own_cache_is_never_stored_broken(tmp_path):
  """With JAX's persistent compilation cache on (--compilation_cache_dir), a
  program JAX loaded from that cache does not survive serialize_executable on
  CPU; the executable cache compiles its misses with JAX's cache off, so a
  later process loads a working executable (before: NOT_FOUND at its first call)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = f"""
import jax, jax.numpy as jnp, numpy as np
from common import exec_cache
jax.config.update("jax_compilation_cache_dir", {str(tmp_path / "xla")!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
fn = lambda x: jnp.sum(x * 3.0, axis=0)
x = jnp.ones((16, 3))
import sys
# populate: JAX's cache only; store: the executable cache's miss (a hit of
# JAX's cache, before the fix); load: the stored executable.
exec_cache.enable(None if sys.argv[1] == "populate" else {str(tmp_path / "exec")!r})
print(np.asarray(exec_cache.jit(fn, name="probe")(x)).tolist(), exec_cache.stats())
"""
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  runs = [subprocess.run([sys.executable, "-c", script, which], capture_output=True,
                         text=True, env=env, timeout=120)
          for which in ("populate", "store", "load")]
  for run in runs:
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split(" {")[0] == "[48.0, 48.0, 48.0]", run.stdout
  assert "'misses': 1" in runs[1].stdout and "'hits': 1" in runs[2].stdout
