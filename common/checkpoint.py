"""Orbax checkpoints that resume a run exactly.

A checkpoint holds three items:
- "state": the train-state pytree (params, optimiser state, step, rng, and any
  per-item arrays a method keeps in its state, e.g. DCGMH's memory bank);
- "extras": per-item arrays computed at an epoch's start that a mid-epoch
  resume must not recompute with later params (SCBCH's CSCC weights);
- "meta": JSON with the loop position (epoch, step in epoch, global step), the
  run's flags, and the evaluation score if one was computed.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a crash never leaves a half-written checkpoint behind; saves are
asynchronous. Preservation: the last `keep` checkpoints, plus the best one by
`score` when a selection metric is used.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as managers

PyTree = Any


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _extras_item(extras: Mapping[str, Any]) -> dict:
  # A count beside the arrays keeps the item non-empty for methods without extras.
  return {"arrays": dict(extras), "count": np.asarray(len(extras), np.int32)}


class Checkpointer:
  """Saves and restores (state, extras, meta) under `directory`."""

  def __init__(self, directory: str, *, keep: int = 3, track_best: bool = False,
               async_save: bool = True):
    if keep < 1:
      raise ValueError(f"--keep={keep}: must keep at least one checkpoint")
    policies = [managers.LatestN(n=keep)]
    if track_best:
      policies.append(managers.BestN(get_metric_fn=lambda m: m["score"], n=1,
                                     keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "extras", "meta"))
    self.track_best = track_best

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The kept checkpoint with the highest score (latest among equals), if any."""
    scored = [(meta["score"], step) for step in self.all_steps()
              if (meta := self.read_meta(step)).get("score") is not None]
    return max(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, *, state: PyTree, extras: Mapping[str, np.ndarray],
           meta: Mapping[str, Any], score: float | None = None) -> None:
    metrics = None if score is None else {"score": float(score)}
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            extras=ocp.args.StandardSave(_extras_item(extras)),
            meta=ocp.args.JsonSave(dict(meta, score=score)),
        ),
        metrics=metrics,
        force=True,
    )

  def restore(self, step: int, *, state_template: PyTree) -> tuple[PyTree, dict, dict]:
    """Restores checkpoint `step`: state in the structure of `state_template`,
    extras as saved (an epoch-boundary checkpoint has none), and meta."""
    if step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory} "
          f"(have {self.all_steps()})")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_template)),
            extras=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
        ),
    )
    extras = {k: np.asarray(v) for k, v in restored["extras"].get("arrays", {}).items()}
    return restored["state"], extras, dict(restored["meta"])

  def read_meta(self, step: int) -> dict:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def check_same_run(saved_flags: Mapping[str, Any], flags: Mapping[str, Any], *,
                   workdir: str, may_differ: tuple[str, ...] = ()) -> None:
  """Refuses to resume a workdir that was written by a different configuration."""
  differ = sorted(k for k in set(saved_flags) | set(flags)
                  if k not in may_differ and saved_flags.get(k) != flags.get(k))
  if differ:
    detail = ", ".join(f"--{k}: saved {saved_flags.get(k)!r} vs now {flags.get(k)!r}"
                       for k in differ)
    raise ValueError(
        f"workdir {workdir} holds a run with different settings ({detail}). "
        "Use a new --workdir, or repeat the original flags to resume.")
