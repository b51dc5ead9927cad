r"""SCBCH paper-size step against its compute + memory floor, at one thread (issue 21, item 4).

  taskset -c 0 python benchmarks/scbch_floor.py          # table + records RESULTS.md
  taskset -c 0 python benchmarks/scbch_floor.py --steps=3 --no_record

Run it pinned to ONE CPU (taskset): XLA:CPU sizes its thread pool from the
affinity mask. Every time is the process's CPU seconds (time.process_time),
the steadier measure on a shared machine, median over --repeats.

Floor = sum over the step's GEMMs of FLOPs / (the single-thread rate of that
GEMM's shape, measured here) + the parameter-sized memory traffic a step
cannot avoid / (the measured streaming bandwidth): the gradient written once,
and p, g, m, v read and p, m, v written once by the Adam/L2 update
(8 x 4 bytes x parameters). Activations (B = 128 rows) are ignored (< 1%).

It also times the Adam/L2 update alone (113M parameters, donated buffers):
optax's chain + apply_updates (what the step runs; XLA:CPU emits one loop per
output array: mu', nu', p' each re-read their inputs, 9 reads + 3 writes per
parameter) against a ONE-PASS version of the same transformation
(`one_pass_apply` below: a loop over row blocks of each parameter, the
transformation applied to the block's slices while they sit in cache, the
results written back in place: 4 reads + 3 writes), after checking that both
give the same parameters and state (to 1e-6).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from common.types import PyTree  # noqa: E402

# Elements per block: the slices of a block's inputs and outputs (4-7 arrays
# of BLOCK float32) stay in a core's L2 cache.
BLOCK = 16_384
# Leaves up to this many elements are updated whole (the loop would cost more
# than the repeated passes over a small array).
SMALL = 4 * BLOCK


def _is_params_like(params_def):
  def check(node) -> bool:
    return (not isinstance(node, (jax.Array, np.ndarray, np.generic))
            and jax.tree.structure(node) == params_def)
  return check


def _rows_per_block(shape: tuple[int, ...], block: int) -> int:
  """The largest divisor r of shape[0] with r * (elements per row) <= block (>= 1)."""
  row = int(np.prod(shape[1:], dtype=np.int64))
  limit = max(1, block // max(row, 1))
  best = 1
  for r in range(1, min(limit, shape[0]) + 1):
    if shape[0] % r == 0:
      best = r
  return best


def one_pass_apply(tx: optax.GradientTransformation, grads: PyTree, state: PyTree,
                params: PyTree, *, scale: jax.Array | float | None = None,
                block: int = BLOCK, small: int = SMALL) -> tuple[PyTree, PyTree]:
  """(new params, new state) = what
      updates, new_state = tx.update(grads, state, params)
      new_params = optax.apply_updates(params, updates * scale)
  computes, in one pass over each large parameter (see the module docstring).

  Args:
    tx: an ELEMENTWISE transformation (e.g. optax.chain(add_decayed_weights,
      adam) or chain(add_decayed_weights, trace)).
    grads, state, params: as for tx.update; `state` is tx.init(params)'s
      structure (its parameter-shaped parts are split per leaf; its other
      leaves, e.g. Adam's step count, must be scalars).
    scale: optional scalar multiplying the updates before they are applied
      (e.g. -learning_rate for a transformation without the learning rate).
    block, small: elements per block; leaves up to `small` elements are
      updated whole.
  """
  p_leaves, p_def = jax.tree.flatten(params)
  if p_def == jax.tree.structure(0):
    raise ValueError("fused_apply: `params` must be a pytree of arrays (a dict), "
                     "not a single array")
  g_leaves = p_def.flatten_up_to(grads)
  top, top_def = jax.tree.flatten(state, is_leaf=_is_params_like(p_def))
  split = [p_def.flatten_up_to(x) if _is_params_like(p_def)(x) else None for x in top]
  for x, parts in zip(top, split):
    if parts is None and np.ndim(x) != 0:
      raise ValueError(f"fused_apply: a state leaf of shape {np.shape(x)} is neither "
                       "a scalar nor shaped like the parameters")

  def one(p, g, per_leaf, shared):
    """The transformation on one leaf (or block of it): (new p, new top-level
    state nodes: per-leaf arrays and the scalars)."""
    sub_state = top_def.unflatten([s if pl is None else pl
                                   for pl, s in zip(per_leaf, shared)])
    updates, new_state = tx.update(g, sub_state, p)
    if scale is not None:
      updates = scale * updates
    return optax.apply_updates(p, updates), top_def.flatten_up_to(new_state)

  shared = [None if parts is not None else x for x, parts in zip(top, split)]
  new_params, new_split = [], [[] for _ in top]
  for i, (p, g) in enumerate(zip(p_leaves, g_leaves)):
    per_leaf = [parts[i] if parts is not None else None for parts in split]
    if p.ndim == 0 or p.size <= small:
      new_p, new_leaves = one(p, g, per_leaf, shared)
    else:
      new_p, new_leaves = _blocked(one, p, g, per_leaf, shared, block)
    new_params.append(new_p)
    for j, leaf in enumerate(new_leaves):
      new_split[j].append(leaf)
  # The scalar state (e.g. Adam's step count) advances once, as in any leaf's
  # update: computed on empty slices (no array work).
  empty = [None if parts is None else parts[0].reshape(-1)[:0] for parts in split]
  _, new_shared = one(p_leaves[0].reshape(-1)[:0], g_leaves[0].reshape(-1)[:0],
                      empty, shared)
  out = [p_def.unflatten(new_split[j]) if parts is not None else new_shared[j]
         for j, parts in enumerate(split)]
  return p_def.unflatten(new_params), top_def.unflatten(out)


def _blocked(one: Callable, p, g, per_leaf, shared, block):
  """`one` over row blocks of a large leaf, written in place into its buffers."""
  shape = p.shape
  rows = _rows_per_block(shape, block)
  steps = shape[0] // rows
  state_arrays = [x for x in per_leaf if x is not None]

  def compute(p_b, g_b, states_b):
    it = iter(states_b)
    per_block = [next(it) if x is not None else None for x in per_leaf]
    new_p, new_leaves = one(p_b, g_b, per_block, shared)
    return new_p, [leaf for leaf, x in zip(new_leaves, per_leaf) if x is not None]

  def body(i, carry):
    p_c, states_c = carry
    start = (i * rows,) + (0,) * (len(shape) - 1)
    size = (rows,) + shape[1:]
    blocks = [jax.lax.dynamic_slice(x, start, size) for x in (p_c, g, *states_c)]
    # The block's results are materialised (small) before any is written back:
    # fused into the writes, each output would recompute from its inputs' rows
    # after an earlier write replaced them, and XLA would copy whole buffers.
    # A conditional is a fusion boundary; its predicate is always true.
    new_p, new_states = jax.lax.cond(
        i < steps, lambda b: compute(b[0], b[1], b[2:]),
        lambda b: (b[0], list(b[2:])), blocks)
    p_c = jax.lax.dynamic_update_slice(p_c, new_p.astype(p_c.dtype), start)
    states_c = [jax.lax.dynamic_update_slice(s, n.astype(s.dtype), start)
                for s, n in zip(states_c, new_states)]
    return p_c, states_c

  new_p, new_states = jax.lax.fori_loop(0, steps, body, (p, state_arrays))
  it = iter(new_states)
  # Scalar entries: the caller's shared pass supplies them.
  return new_p, [next(it) if x is not None else None for x in per_leaf]


# --- measurements ------------------------------------------------------------------

IMAGE, TEXT, BITS, CLASSES, BATCH = 4096, 1386, 64, 24, 128
IMAGE_HIDDEN, TEXT_HIDDEN = (8192, 8192), (8192,)


def cpu_median(fn: Callable[[], object], repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(fn())
    times.append(time.process_time() - start)
  return float(np.median(times))


def layers() -> list[tuple[int, int, bool]]:
  """(in, out, input gradient needed) of every dense layer of the step."""
  out = []
  for dims in ((IMAGE,) + IMAGE_HIDDEN + (BITS,), (TEXT,) + TEXT_HIDDEN + (BITS,)):
    out += [(a, b, i > 0) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
  return out


def gemm_floor(repeats: int) -> tuple[float, float, list]:
  """(seconds, flops, rows) of the step's GEMMs at their measured single-thread rates:
  forward x @ W (B x in x out), weight gradient x^T @ dy (in x B x out), input
  gradient dy @ W^T (B x out x in, not for the first layers)."""
  key = jax.random.key(0)
  total_s = total_f = 0.0
  rows = []
  rates = {}
  for a, b, input_grad in layers():
    shapes = [("forward", (BATCH, a), (a, b)), ("weight grad", (a, BATCH), (BATCH, b))]
    if input_grad:
      shapes.append(("input grad", (BATCH, b), (b, a)))
    for name, lhs, rhs in shapes:
      flops = 2.0 * lhs[0] * lhs[1] * rhs[1]
      if (lhs, rhs) not in rates:
        x = jax.random.normal(key, lhs)
        w = jax.random.normal(key, rhs)
        f = jax.jit(jnp.matmul)
        rates[(lhs, rhs)] = flops / cpu_median(lambda f=f, x=x, w=w: f(x, w), repeats)
      total_s += flops / rates[(lhs, rhs)]
      total_f += flops
      rows.append((f"{a}->{b} {name}", lhs, rhs, rates[(lhs, rhs)]))
  return total_s, total_f, rows


def bandwidth(n: int, repeats: int) -> float:
  """Streaming bytes/s of a <- a + 0.5 b over n float32 (2 reads + 1 write), `a`
  donated as the step's state is (a fresh output buffer would add the kernel's
  page faults on first touch to the time)."""
  holder = [jnp.ones((n,), jnp.float32)]
  b = jnp.full((n,), 1e-3, jnp.float32)
  f = jax.jit(lambda a, b: a + 0.5 * b, donate_argnums=0)

  def run():
    holder[0] = f(holder[0], b)
    return holder[0]
  return 3 * 4 * n / cpu_median(run, repeats)


def paper_params(key) -> dict:
  params = {}
  for tower, dims in (("image", (IMAGE,) + IMAGE_HIDDEN + (BITS,)),
                      ("text", (TEXT,) + TEXT_HIDDEN + (BITS,))):
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
      params[f"{tower}{i}_kernel"] = jax.random.normal(jax.random.fold_in(key, 2 * i), (a, b))
      params[f"{tower}{i}_bias"] = jax.random.normal(jax.random.fold_in(key, 2 * i + 1), (b,))
  return params


def update_times(repeats: int, lr: float = 1e-4, wd: float = 1e-5):
  """CPU seconds of one Adam/L2 update over the paper model's parameters:
  (optax chain + apply_updates, one_pass_apply), after an equality check."""
  params = paper_params(jax.random.key(1))
  grads = jax.tree.map(lambda p: 0.01 * jnp.sin(p), params)
  tx = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))

  def reference(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def fused(p, s, g):
    return one_pass_apply(tx, g, s, p)

  out = {}
  for name, fn in (("optax chain", reference), ("one pass", fused)):
    step = jax.jit(fn, donate_argnums=(0, 1))
    holder = [jax.tree.map(jnp.copy, params), tx.init(params)]

    def run(step=step, holder=holder):
      holder[0], holder[1] = step(holder[0], holder[1], grads)
      return holder[0]
    out[name] = cpu_median(run, repeats)
    out[name + " params"] = jax.tree.map(np.asarray, holder[0])
  # Parameters ~N(0, 1), each update ~lr: float32 rounding differs by an ulp.
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(out["optax chain params"]), jax.tree.leaves(out["one pass params"])))
  if diff > 1e-6:
    raise AssertionError(f"one_pass_apply differs from optax by {diff:.2e}")
  return out["optax chain"], out["one pass"], diff, sum(p.size for p in
                                                       jax.tree.leaves(params))


def step_time(repeats: int) -> tuple[float, int]:
  """CPU seconds (median) of the real SCBCH paper-size step (benchmarks/scbch_step.py's)."""
  from benchmarks import scbch_step  # pylint: disable=g-import-not-at-top
  _, _, params = scbch_step.bench(IMAGE_HIDDEN, TEXT_HIDDEN, BITS, BATCH, repeats)
  return scbch_step.bench.cpu, params


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_record", action="store_true")
  args = parser.parse_args()
  from benchmarks import bench_util  # pylint: disable=g-import-not-at-top
  threads = len(os.sched_getaffinity(0))
  load = [bench_util.load_average()]
  gemm_s, flops, gemm_rows = gemm_floor(args.repeats)
  best_rate = max(rate for _, _, _, rate in gemm_rows)
  bw = bandwidth(64 * 2**20, args.repeats)
  ref_s, one_s, diff, n_params = update_times(args.repeats)
  step_s, step_params = step_time(args.repeats)
  load.append(bench_util.load_average())
  memory_s = 8 * 4 * step_params / bw
  floor = gemm_s + memory_s
  rows = [[label, f"{lhs[0]}x{lhs[1]} @ {rhs[0]}x{rhs[1]}", f"{rate / 1e9:.1f}"]
          for label, lhs, rhs, rate in gemm_rows]
  table = bench_util.markdown_table(["GEMM", "shape", "GFLOP/s (1 thread)"], rows)
  summary = bench_util.markdown_table(
      ["quantity", "value"],
      [["GEMM FLOPs per step", f"{flops / 1e9:.1f} G"],
       ["GEMM floor (each GEMM at its shape's rate, below)", f"{gemm_s:.3f} CPU-s"],
       [f"(every GEMM at the best rate, {best_rate / 1e9:.0f} GFLOP/s)",
        f"{flops / best_rate:.3f} CPU-s"],
       ["streaming bandwidth (a <- a + 0.5 b, 256 MiB arrays, donated)",
        f"{bw / 1e9:.1f} GB/s"],
       [f"memory floor (8 x 4 B x {step_params / 1e6:.1f}M params)",
        f"{memory_s:.3f} CPU-s"],
       ["**floor**", f"**{floor:.3f} CPU-s**"],
       ["the step (median)", f"{step_s:.3f} CPU-s"],
       ["**step / floor**", f"**{step_s / floor:.2f}**"],
       ["step / floor with every GEMM at the best rate",
        f"{step_s / (flops / best_rate + memory_s):.2f}"],
       [f"Adam/L2 update alone, optax chain ({n_params / 1e6:.1f}M params)",
        f"{ref_s:.3f} CPU-s"],
       ["Adam/L2 update alone, one pass (one_pass_apply)", f"{one_s:.3f} CPU-s"],
       ["one pass vs optax, max absolute difference of the parameters", f"{diff:.1e}"]])
  body = (f"Machine: {bench_util.machine()}; date {bench_util.today()}; {threads} "
          f"thread (taskset); load average {min(load):.1f}–{max(load):.1f}. Command: "
          "`taskset -c 0 python benchmarks/scbch_floor.py`. CPU seconds "
          f"(process_time), median of {args.repeats}.\n\n{summary}\n\n{table}")
  print(body)
  if threads != 1:
    print("(not pinned to one CPU: RESULTS.md not updated)")
  elif not args.no_record:
    bench_util.record("SCBCH step vs its floor, one thread (benchmarks/scbch_floor.py)",
                      body)


if __name__ == "__main__":
  main()
