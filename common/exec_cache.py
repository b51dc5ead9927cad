"""Compiled step programs kept on disk, so a later process skips tracing.

JAX's persistent compilation cache (`jax.config.jax_compilation_cache_dir`)
skips only XLA's compilation: every process still traces the step function
and lowers it to StableHLO, ~1.5-2 s for the two DCGMH step programs of a
small run. This cache keeps the compiled executable itself
(jax.experimental.serialize_executable) under a key of everything the
program depends on, and a later process with the same key loads it
(milliseconds) instead of tracing, lowering and compiling.

The key (SHA-256) covers:
  - the traced Python callable and every value it reaches: functions by
    bytecode, constants, defaults and closure cells (and, for code outside
    this project and the installed libraries, its module's source file);
    bound methods with their object's attributes (the config, data-derived constants such as label
    arrays or an estimated noise ratio); arrays by dtype, shape and bytes
    (`fingerprint`);
  - the arguments' pytree structure and abstract values (shape, dtype, weak
    type, sharding);
  - the source of this project's packages (common, configs, dcgmh_jax,
    scbch_jax: a code change changes every key), the versions of jax, jaxlib,
    flax, optax, chex, numpy, ml_dtypes, ml_collections, Python, every
    jax.config value, the XLA_*/JAX_* environment, and the devices.
Anything the fingerprint cannot describe (an object whose only description
is its address) disables the cache for that program, logged once at INFO.
Only single-process runs use it (a multi-process executable is bound to the
other processes' devices); common.parallel uses it for the shard_map
driver's step programs (not pmap's). Entries are pickles (like XLA's own
cache entries, read only from your own cache directory).

Entries are written atomically (a unique temporary file renamed into place),
so concurrent processes never read a partial file; an unreadable entry is
recompiled and replaced. Off unless `enable(directory)` is called (the
launchers do, under --compilation_cache_dir; `--compilation_cache_dir=`
turns both caches off); `enable(None)` turns it off.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import pickle
import struct
import sys
import tempfile
import types
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

SUBDIR = "executables"
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_dtypes",
              "ml_collections")
_PACKAGES = ("common", "configs", "dcgmh_jax", "scbch_jax")
_state = {"directory": None}
_stats = {"hits": 0, "misses": 0, "uncacheable": 0}


def enable(directory: str | None) -> None:
  """Keep compiled step programs under `directory` (created on first write);
  None: off."""
  _state["directory"] = None if directory is None else os.path.abspath(
      os.path.expanduser(directory))


def directory() -> str | None:
  return _state["directory"]


def stats() -> dict[str, int]:
  """Counts of this process: executables loaded (hits), compiled and stored
  (misses), and programs that could not be keyed (uncacheable)."""
  return dict(_stats)


class Unfingerprintable(TypeError):
  """A value the key cannot describe (only its address tells it apart)."""


def fingerprint(obj: Any) -> str:
  """SHA-256 of a deterministic description of `obj` and everything it
  reaches (see the module docstring)."""
  h = hashlib.sha256()
  _describe(obj, h, _Memo())
  return h.hexdigest()


class _Memo:
  """Positions of the objects described so far (cycles, shared objects); it
  holds them so that their ids stay unique while describing."""

  def __init__(self):
    self.ids: dict[int, int] = {}
    self.keep: list = []

  def seen(self, obj) -> int | None:
    index = self.ids.get(id(obj))
    if index is None:
      self.ids[id(obj)] = len(self.keep)
      self.keep.append(obj)
    return index


def _describe(obj: Any, h, memo: _Memo) -> None:
  put = lambda *parts: h.update(repr(parts).encode())
  t = type(obj)
  if obj is None or t in (bool, int, str, bytes, complex, type(Ellipsis)):
    put(t.__name__, obj)
    return
  if t is float:
    put("float", struct.pack("<d", obj))
    return
  index = memo.seen(obj)
  if index is not None:  # a cycle or a shared object: its first position
    put("ref", index)
    return
  if isinstance(obj, (np.ndarray, np.generic)):
    arr = np.ascontiguousarray(obj)
    put("ndarray", str(arr.dtype), arr.shape)
    h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return
  if isinstance(obj, jax.Array):
    put("jax.Array", str(obj.dtype), str(obj.sharding))
    if jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
      obj = jax.random.key_data(obj)  # typed PRNG keys: their bits
    _describe(np.asarray(obj), h, memo)
    return
  if isinstance(obj, (list, tuple)):
    put(t.__module__, t.__qualname__, len(obj))
    for item in obj:
      _describe(item, h, memo)
    return
  if isinstance(obj, dict):
    put(t.__module__, t.__qualname__, len(obj))
    for key, value in obj.items():
      _describe(key, h, memo)
      _describe(value, h, memo)
    return
  if isinstance(obj, (set, frozenset)):
    put(t.__qualname__, sorted(fingerprint(x) for x in obj))
    return
  if isinstance(obj, type):
    put("type", obj.__module__, obj.__qualname__)
    return
  if isinstance(obj, types.ModuleType):
    # Project modules' code is in the source hash, libraries' in their
    # versions; any other module's (e.g. your own helpers) by its file.
    put("module", obj.__name__, _outside_source(obj.__name__))
    return
  if isinstance(obj, types.MethodType):
    put("method")
    _describe(obj.__func__, h, memo)
    _describe(obj.__self__, h, memo)
    return
  if isinstance(obj, types.FunctionType):
    put("function", obj.__module__, obj.__qualname__, _outside_source(obj.__module__))
    _describe(obj.__code__, h, memo)
    _describe(obj.__defaults__, h, memo)
    _describe(obj.__kwdefaults__, h, memo)
    _describe(tuple(c.cell_contents if _filled(c) else "<empty cell>"
                    for c in (obj.__closure__ or ())), h, memo)
    return
  if isinstance(obj, types.CodeType):
    put("code", obj.co_name, obj.co_code, obj.co_names, obj.co_varnames,
        obj.co_freevars, obj.co_cellvars, obj.co_argcount, obj.co_kwonlyargcount,
        obj.co_flags)
    _describe(obj.co_consts, h, memo)
    return
  if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
    self = getattr(obj, "__self__", None)
    put("builtin", getattr(obj, "__module__", None), obj.__qualname__)
    if self is not None and not isinstance(self, types.ModuleType):
      _describe(self, h, memo)
    return
  if isinstance(obj, functools.partial):
    put("partial")
    _describe((obj.func, obj.args, obj.keywords), h, memo)
    return
  if isinstance(obj, np.dtype):
    put("dtype", str(obj))
    return
  if isinstance(obj, jax.sharding.Mesh):
    put("mesh", obj.axis_names, obj.devices.shape,
        [(d.platform, d.id) for d in obj.devices.flat])
    return
  if isinstance(obj, jax.Device):
    put("device", obj.platform, obj.id, obj.device_kind)
    return
  wrapped = getattr(obj, "__wrapped__", None)
  if wrapped is not None and not hasattr(obj, "__dict__"):
    # A C++ wrapper (a jax.jit function): its Python function and its type.
    put("wrapper", t.__module__, t.__qualname__)
    _describe(wrapped, h, memo)
    return
  if _is_flax_module(obj):
    # Its constructor fields (hyper-parameters, name); not its parent/scope.
    put("flax", t.__module__, t.__qualname__)
    for field in dataclasses.fields(obj):
      if field.name not in ("parent",):
        _describe(field.name, h, memo)
        _describe(getattr(obj, field.name, None), h, memo)
    return
  if hasattr(obj, "to_dict") and type(obj).__module__.startswith("ml_collections"):
    put("config", t.__qualname__)
    _describe(obj.to_dict(), h, memo)
    return
  attrs = None
  if hasattr(obj, "__dict__"):
    attrs = dict(vars(obj))
  slots = [s for k in t.__mro__ for s in getattr(k, "__slots__", ())
           if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
  if slots:
    attrs = dict(attrs or {}, **{s: getattr(obj, s) for s in slots if hasattr(obj, s)})
  if attrs is not None:
    put("object", t.__module__, t.__qualname__, sorted(attrs))
    for key in sorted(attrs):
      _describe(attrs[key], h, memo)
    return
  text = repr(obj)
  if " at 0x" in text or "object at" in text:
    raise Unfingerprintable(f"{t.__module__}.{t.__qualname__}: {text[:80]}")
  put("repr", t.__module__, t.__qualname__, text)


def _filled(cell) -> bool:
  try:
    cell.cell_contents  # pylint: disable=pointless-statement
    return True
  except ValueError:
    return False


def _is_flax_module(obj) -> bool:
  module = sys.modules.get("flax.linen")
  return module is not None and isinstance(obj, module.Module)


@functools.lru_cache(maxsize=None)
def _outside_source(module_name: str | None) -> str | None:
  """SHA-256 of a module's source file when it is neither one of this
  project's packages nor an installed library (those are keyed by the source
  digest and the versions), else None."""
  module = sys.modules.get(module_name or "")
  path = getattr(module, "__file__", None)
  if not path or module_name.split(".")[0] in _PACKAGES or module_name.split(".")[0] in (
      _LIBRARIES):
    return None
  path = os.path.abspath(path)
  if "site-packages" in path or "dist-packages" in path or path.startswith(
      os.path.abspath(sys.base_prefix)):
    return None
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
  """SHA-256 of this project's package sources (paths and bytes)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  h = hashlib.sha256()
  for package in _PACKAGES:
    for base, dirs, files in os.walk(os.path.join(root, package)):
      dirs.sort()
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(base, name)
          h.update(os.path.relpath(path, root).encode() + b"\0")
          with open(path, "rb") as f:
            h.update(f.read())
  return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
  out = []
  for name in _LIBRARIES:
    try:
      out.append((name, importlib.metadata.version(name)))
    except importlib.metadata.PackageNotFoundError:
      out.append((name, None))
  return tuple(out)


def _environment() -> str:
  """What a process adds to every key: code, versions, flags, devices."""
  h = hashlib.sha256()
  h.update(repr((
      _source_digest(), _versions(), sys.version,
      sorted((k, repr(v)) for k, v in jax.config.values.items()),
      sorted((k, v) for k, v in os.environ.items()
             if k.startswith(("XLA_", "JAX_", "TPU_", "LIBTPU", "CUDA_", "NVIDIA_"))),
      jax.devices()[0].client.platform_version,
      [(d.platform, d.id, d.device_kind, d.process_index) for d in jax.devices()],
  )).encode())
  return h.hexdigest()


def signature(args: tuple) -> str:
  """The arguments' pytree structure and abstract values, as a string."""
  leaves, treedef = jax.tree.flatten(args)
  parts = [str(treedef)]
  for leaf in leaves:
    if isinstance(leaf, jax.Array):
      parts.append(("array", repr(jax.typeof(leaf)), str(leaf.dtype),
                    getattr(leaf, "weak_type", None), repr(leaf.sharding),
                    getattr(leaf, "committed", None)))
    elif isinstance(leaf, (np.ndarray, np.generic)):
      parts.append(("numpy", np.shape(leaf), str(np.asarray(leaf).dtype)))
    else:
      parts.append(("python", type(leaf).__name__))
  return repr(parts)


def _leaf_key(leaf) -> tuple:
  if isinstance(leaf, jax.Array):
    return ("array", leaf.shape, leaf.dtype, getattr(leaf, "weak_type", None),
            leaf.sharding, getattr(leaf, "committed", None))
  if isinstance(leaf, (np.ndarray, np.generic)):
    return ("numpy", np.shape(leaf), leaf.dtype)
  return ("python", type(leaf))


def _call_key(args: tuple) -> tuple:
  """A hashable form of `signature` (cheap: every step looks it up)."""
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple(map(_leaf_key, leaves))


def jit(fun: Callable, *, name: str | None = None, **jit_kwargs) -> "CachedJit":
  """jax.jit(fun, **jit_kwargs), its executables kept in the cache when it is
  enabled at the first call (keyed on `fun` and `jit_kwargs` too)."""
  return CachedJit(jax.jit(fun, **jit_kwargs), (fun, sorted(jit_kwargs.items())),
                   name or getattr(fun, "__name__", "fn"))


class CachedJit:
  """`jitted(*args)`, with each compiled program (one per argument signature)
  loaded from / stored to the cache directory current at its first call.

  Args:
    jitted: a jax.jit-wrapped function.
    program: every Python value the traced program depends on besides the
      arguments (the traced callable and its static settings), fingerprinted.
    name: for file names and log lines.
  """

  def __init__(self, jitted: Callable, program: Any, name: str):
    self.jitted = jitted
    self.program = program
    self.name = name
    self._programs: dict[tuple, Callable] = {}
    self._last: Callable | None = None

  def __call__(self, *args):
    last = self._last
    if last is not None:
      # The executable checks the arguments' structure, types and shardings
      # before it runs (or donates anything) and raises TypeError/ValueError
      # on a mismatch: then the signature picks (or makes) another one.
      try:
        return last(*args)
      except (TypeError, ValueError):
        pass
    call_key = _call_key(args)
    fn = self._programs.get(call_key)
    if fn is None:
      fn = self._programs[call_key] = self._load_or_compile(args)
    self._last = None if fn is self.jitted else fn
    return fn(*args)

  def _load_or_compile(self, args: tuple) -> Callable:
    root = directory()
    if root is None or jax.process_count() > 1:
      return self.jitted
    try:
      key = hashlib.sha256(repr((fingerprint(self.program), signature(args),
                                 _environment())).encode()).hexdigest()
    except Unfingerprintable as e:
      _stats["uncacheable"] += 1
      logging.info("executable cache: %s not cached (%s)", self.name, e)
      return self.jitted
    except Exception as e:  # pylint: disable=broad-except
      _stats["uncacheable"] += 1  # a value whose description failed: traced as usual
      logging.warning("executable cache: %s not cached (%s: %s)", self.name,
                      type(e).__name__, e)
      return self.jitted
    from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
    path = os.path.join(root, SUBDIR, f"{self.name}-{key[:40]}.pkl")
    if os.path.exists(path):
      try:
        with open(path, "rb") as f:
          stored_key, payload, in_tree, out_tree = pickle.load(f)
        if stored_key == key:
          compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
          _stats["hits"] += 1
          return compiled
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("executable cache: %s unreadable (%s: %s); compiling again",
                        path, type(e).__name__, e)
    compiled = _compile_fresh(self.jitted, args)
    _stats["misses"] += 1
    try:
      payload, in_tree, out_tree = serialize_executable.serialize(compiled)
      _write_atomic(path, pickle.dumps((key, payload, in_tree, out_tree),
                                       protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("executable cache: %s not stored (%s: %s)", self.name,
                      type(e).__name__, e)
    return compiled


def _compile_fresh(jitted: Callable, args: tuple):
  """Compiles with JAX's persistent compilation cache off: an executable that
  JAX loaded from its own cache does not survive serialize_executable's round
  trip on CPU (the reloaded copy fails at run time: `NOT_FOUND: Function
  multiply_reduce_fusion not found`), so only freshly compiled ones are stored."""
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return jitted.lower(*args).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
