"""Data-parallel drivers: one per-device step body, wrapped by pmap or jit+shard_map.

The body is written once, for ONE device's shard of the global batch, with
named-axis collectives over `AXIS`:

    body(state, batch, extras, context, *, phase) -> (state, metrics)

- `state` is replicated (identical on every device);
- `batch` and `extras` hold this device's B/D rows of the global batch;
- `context` is replicated data from the loop, the position in the run
  ({"epoch": int32, "step_in_epoch": int32}): the loop owns epoch geometry;
- `phase` is a static, hashable value (e.g. warm-up vs robust); each distinct
  value is one compilation, so a run has as many traces as phases;
- the body returns the new (still replicated) state and metrics that are
  already reduced over `AXIS` (lax.pmean / lax.psum), so every device holds the
  same numbers.

`global_value_and_grad` is the one place where the gradient semantics of data
parallelism live: each device differentiates its local SHARE of the global
loss (shares sum to the global loss; see `local_share`), and the gradients of
the shares are summed over devices. Collectives inside the loss (all_gather of
codes, BatchNorm's pmean) then transpose to exactly the cross-device terms of
the global gradient, so D devices equal one device on the same global batch.

One objective convention for every method: an objective (a variant's loss
function, e.g. scbch_jax.objectives, dcgmh_jax.objectives) returns THIS
DEVICE's share of the global loss, never the global loss itself, and
`global_value_and_grad` sums the shares. How a share is formed is the
objective's business: SCBCH computes its pairwise term by rows (this
device's B/D rows against the gathered batch) and divides its per-item means
by D; DCGMH evaluates the whole global loss on all-gathered arrays on every
device and returns `local_share(L)` = L/D. The step body never rescales a
loss.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, ClassVar, Hashable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from common import exec_cache
from common.types import PyTree

AXIS = "data"
PARALLEL_MODES = ("shard_map", "pmap")

StepBody = Callable[..., tuple[PyTree, Mapping[str, jax.Array]]]


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named `AXIS` over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (AXIS,))


@functools.cache
def default_mesh() -> Mesh:
  """The run's mesh over every device of every process (built once: the
  driver's steps and anything sharded beside them share it)."""
  return make_mesh()


@functools.cache
def local_mesh() -> Mesh:
  """The mesh over this process's devices (built once: CSCC's per-process
  pass and the encoder's batches share it)."""
  return make_mesh(jax.local_devices())


def num_shards() -> jax.Array:
  """Number of devices along `AXIS` (call inside a driver)."""
  return lax.psum(1, AXIS)


def local_share(global_value: jax.Array) -> jax.Array:
  """Share of a loss that every device computes identically on gathered arrays.

  When each device evaluates the same global loss from all-gathered inputs,
  its share is L/D, so that the shares sum to L over devices.
  """
  return global_value / num_shards()


def gather_rows(x: jax.Array) -> jax.Array:
  """All devices' rows concatenated in device order (differentiable)."""
  return lax.all_gather(x, AXIS, tiled=True)


def check_row_block(rows: int, n: int, row_start: Any, tau: float) -> None:
  """The arguments of a loss over R rows against all N items (R rows of a
  device's block, starting at global row `row_start`; checked when concrete)
  and its temperature; ValueError naming the argument."""
  if not 1 <= rows <= n:
    raise ValueError(f"need 1 <= R <= N for the rows, got R={rows}, N={n}.")
  if not tau > 0:
    raise ValueError(f"`tau` must be > 0, got {tau}.")
  if isinstance(row_start, (int, np.integer)) and not 0 <= row_start <= n - rows:
    raise ValueError(f"`row_start` must be in [0, {n - rows}], got {row_start}.")


def row_offset(local_rows: int) -> jax.Array:
  """Global row position of this device's first row."""
  return lax.axis_index(AXIS) * local_rows


def global_value_and_grad(loss_share_fn: Callable[..., Any], params: PyTree,
                          *args, has_aux: bool = False):
  """Global loss and its gradient from per-device loss shares.

  Args:
    loss_share_fn: fn(params, *args) -> share (or (share, aux)); the shares of
      all devices must sum to the global loss.
    params: replicated parameters.
    *args: passed through.
    has_aux: whether loss_share_fn returns (share, aux).

  Returns:
    (global_loss, aux, grads) with grads replicated (summed over devices).
    aux is returned as computed on this device (reduce it yourself).
  """
  # Mark params as per-device so the gradient is the LOCAL share's gradient on
  # both drivers (shard_map would otherwise sum it implicitly, pmap would not).
  params = lax.pcast(params, AXIS, to="varying")
  grad_fn = jax.value_and_grad(loss_share_fn, has_aux=has_aux)
  out, grads = grad_fn(params, *args)
  share, aux = out if has_aux else (out, None)
  return lax.psum(share, AXIS), aux, lax.psum(grads, AXIS)


def as_replicated(tree: PyTree) -> PyTree:
  """Values every device computed identically (from gathered inputs) -> replicated.

  Under shard_map such values are still typed per-device; a max over devices
  of equal values returns them bit-exactly (a mean might round) and types them
  as replicated. Only for small arrays (metrics, a batch's rows, BN stats).
  """
  def one(x):
    if x.dtype == jnp.bool_:
      return lax.pmax(x.astype(jnp.int32), AXIS) > 0
    return lax.pmax(x, AXIS)
  return jax.tree.map(one, tree)


def put_replicated(x: Any, sharding: NamedSharding) -> jax.Array:
  """The same host value on every device of `sharding`, also across processes.

  (jax.device_put cannot target other processes' devices; every process holds
  the same value here, so each contributes its local copy.)
  """
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = put_replicated(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.make_array_from_process_local_data(sharding, np.asarray(x))


@dataclasses.dataclass
class DataParallel:
  """Runs one per-device step body on a global batch, with pmap or shard_map.

  Attributes:
    body: the per-device step body (see module docstring).
    mode: "shard_map" (jit + jax.shard_map over a 1-D mesh) or "pmap".
    mesh: the 1-D device mesh (default: all devices).
    max_phases: how many distinct `phase` values (= compilations) are allowed;
      a further trace raises (chex.assert_max_traces), catching recompiles.
    donate: donate the state buffers to the step.
  """

  _instances: ClassVar[int] = 0

  body: StepBody
  mode: str = "shard_map"
  mesh: Mesh | None = None
  max_phases: int = 2
  donate: bool = True

  def __post_init__(self):
    if self.mode not in PARALLEL_MODES:
      raise ValueError(f"parallel={self.mode!r}: expected one of {PARALLEL_MODES}")
    if self.mesh is None:
      self.mesh = default_mesh()
    self.local_devices = [d for d in self.mesh.devices.flat
                          if d.process_index == jax.process_index()]
    # chex counts traces per (source, name): a name unique to this driver makes
    # it count this driver's compilations only.
    body = self.body
    def per_device_step(*args, **kwargs):
      return body(*args, **kwargs)
    DataParallel._instances += 1
    per_device_step.__name__ = (
        f"{getattr(body, '__name__', 'step_body')}[driver {DataParallel._instances}]")
    traced = chex.assert_max_traces(per_device_step, n=self.max_phases)
    # chex has fixed its count key; the compiled program gets the body's stable
    # name back, so the persistent compilation cache serves a later driver too.
    traced.__name__ = traced.__qualname__ = getattr(body, "__name__", "step_body")
    self._compiled: dict[Hashable, Callable] = {}
    self._traced_body = traced
    self._replicated = NamedSharding(self.mesh, P())
    self._rows = NamedSharding(self.mesh, P(AXIS))
    # pmap's layout: a leading axis of one entry per local device, named like
    # pmap's own outputs so step 2 sees the same input sharding (no retrace).
    self._local_stacked = NamedSharding(make_mesh(self.local_devices), P(AXIS))
    if self.mode == "pmap":
      self._pmapped = jax.pmap(
          lambda s, b, e, c, phase: traced(s, b, e, c, phase=phase),
          axis_name=AXIS, static_broadcasted_argnums=(4,),
          # Metrics are reduced over AXIS (equal on every device): one copy
          # comes back, with no per-step slicing on the host.
          out_axes=(0, None),
          donate_argnums=(0,) if self.donate else (),
          devices=self.local_devices if jax.process_count() == 1 else None)

  # --- placing data ---------------------------------------------------------

  def put_state(self, state: PyTree) -> PyTree:
    """Host (or single-device) state -> the driver's replicated layout."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(
          lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + jnp.shape(x)),
                                   self._local_stacked), state)
    return jax.tree.map(lambda x: put_replicated(x, self._replicated), state)

  def get_state(self, dstate: PyTree) -> PyTree:
    """The driver's state -> one copy (device arrays, no leading device axis)."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: x[0], dstate)
    return dstate

  def put_rows(self, tree: PyTree) -> PyTree:
    """This process's rows of a global batch (numpy, leading dim) -> sharded layout."""
    if self.mode == "pmap":
      n = len(self.local_devices)

      def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
          raise ValueError(
              f"batch of {x.shape[0]} rows cannot be split over {n} local devices")
        return jax.device_put(x.reshape((n, -1) + x.shape[1:]), self._local_stacked)

      return jax.tree.map(split, tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._rows, np.asarray(x)),
        tree)

  # --- running ----------------------------------------------------------------

  def step(self, dstate: PyTree, dbatch: PyTree, dextras: PyTree,
           context: Mapping[str, Any] | None = None,
           phase: Hashable = None) -> tuple[PyTree, PyTree]:
    """One training step; returns (new driver state, replicated metrics).

    `context` is host data every device sees (default: epoch 0, step 0), or
    int32 arrays already placed with `put_state` (used as they are: no host
    round-trip, e.g. under jax.transfer_guard("disallow")).
    """
    context = dict(context or {"epoch": 0, "step_in_epoch": 0})
    placed = bool(context) and all(isinstance(v, jax.Array)
                                   for v in jax.tree.leaves(context))
    if not placed:
      context = jax.tree.map(_context_value, context)
    if self.mode == "pmap":
      n = len(self.local_devices)
      if not placed:
        context = jax.tree.map(lambda v: np.broadcast_to(v, (n,) + v.shape), context)
      return self._pmapped(dstate, dbatch, dextras, context, phase)
    fn = self._compiled.get(phase)
    if fn is None:
      body = functools.partial(self._traced_body, phase=phase)
      sharded = jax.shard_map(body, mesh=self.mesh,
                              in_specs=(P(), P(AXIS), P(AXIS), P()),
                              out_specs=(P(), P()))
      fn = jax.jit(sharded, donate_argnums=(0,) if self.donate else ())
      if exec_cache.directory() is not None and jax.process_count() == 1:
        # Loaded from disk in a later process: no tracing (common.exec_cache).
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self._traced_body.__name__}-{phase}")
        fn = exec_cache.CachedJit(fn, (self.body, phase, self.donate, self.mesh,
                                       self.mode), name)
      self._compiled[phase] = fn
    if jax.process_count() > 1 and not placed:
      context = jax.tree.map(lambda v: put_replicated(v, self._replicated), context)
    return fn(dstate, dbatch, dextras, context)


def _context_value(value: Any) -> np.ndarray:
  """A context value on the host: integers as int32 (epoch, step_in_epoch),
  floating scalars (an epoch's estimates) as float32."""
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating):
    return value.astype(np.float32)
  return value.astype(np.int32)


def process_rows(n: int) -> tuple[int, int]:
  """This process's contiguous share [start, stop) of n rows (per-epoch passes)."""
  p, count = jax.process_index(), jax.process_count()
  return n * p // count, n * (p + 1) // count


def gather_process_rows(local: np.ndarray, n: int) -> np.ndarray:
  """Every process's `process_rows(n)` share, concatenated in process order.

  Each process passes the rows it computed; all get the full (n, ...) array,
  bit-exact in any dtype. One process: `local` itself.
  """
  count = jax.process_count()
  if count == 1:
    return np.asarray(local)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  longest = -(-n // count)
  local = np.ascontiguousarray(local)
  # Exchanged as raw bytes: JAX would round float64/int64 to 32 bits.
  raw = local.reshape(len(local), -1).view(np.uint8)
  padded = np.zeros((longest, raw.shape[1]), np.uint8)
  padded[:len(raw)] = raw
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  sizes = [n * (p + 1) // count - n * p // count for p in range(count)]
  rows = np.concatenate([gathered[p, :size] for p, size in enumerate(sizes)])
  return np.ascontiguousarray(rows).view(local.dtype).reshape((n,) + local.shape[1:])


def fetch(tree: PyTree) -> PyTree:
  """Device metrics -> host numpy (one transfer; call every N steps, not every step)."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def check_finite(metrics: Mapping[str, Any], *, step: int, epoch: int) -> None:
  """Stops the run with a clear message when a fetched metric is NaN/inf."""
  bad = {k: float(v) for k, v in metrics.items()
         if np.ndim(v) == 0 and not np.isfinite(v)}
  if bad:
    raise FloatingPointError(
        f"non-finite training metrics at epoch {epoch}, global step {step}: {bad}. "
        "The last good checkpoint is kept; lower the learning rate or check the "
        "input features.")
