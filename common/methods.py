"""The seam where a hashing method plugs in: its spec, the registry, the run plan.

A method package exports one `MethodSpec` (e.g. `scbch_jax.train.SPEC`): its
config module, its config check, how to build it for a run or for encoding,
its release quirks, its retrieval directions, its empty-query convention and
its diagnostics plot. `REGISTRY` names each spec by "module:attribute" — the
one line a new method adds (imported only when the method is used, so this
module imports no method package). `resolve_plan` turns a config into the
`RunPlan` (active quirks, loop schedule) once per run; everything downstream
reads the plan, never config.release_compat again.

The loop drives a built method through the `Method` protocol below; the hook
order of one run is stated in its docstring.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Hashable, Mapping, Protocol

import jax
import ml_collections
import numpy as np

from common import quirks as quirks_lib
from common.run_config import ConfigError
from common.types import PyTree

# config.method -> "module:attribute" of its MethodSpec. Adding a method: one line.
REGISTRY = {
    "scbch": "scbch_jax.train:SPEC",
    "dcgmh": "dcgmh_jax.train:SPEC",
    "nrch": "nrch_jax.train:SPEC",
}

CROSS_MODAL = {"i2t": ("image", "text"), "t2i": ("text", "image")}
MULTI_MODAL = {"fused": ("fused", "fused")}


class Method(Protocol):
  """A method built for one run, as the loop, runner, evaluator and encoder use it.

  Hook order in a run (common.train_loop.train):
    init_state (or a checkpoint's state); then per epoch e:
      epoch_extras(state, e, train)  — unless resumed mid-epoch (checkpointed);
      phase(e); step_body(...) for each batch (compiled once per phase);
      epoch_summary(state, e, extras, train, truth);
      evaluation (encode) when due;
    then the final evaluation and export (encode, once).
  """

  name: str
  phases: tuple[Hashable, ...]   # every value `phase` returns; one compile each
  # Values resolved from config and data, recorded in config.json ({} if none).
  resolved: Mapping[str, Any]

  def init_state(self) -> PyTree:
    """The initial train state (unreplicated)."""

  def phase(self, epoch: int) -> Hashable:
    """The static phase of an epoch (e.g. warm-up vs robust)."""

  def step_body(self, state: PyTree, batch: Mapping[str, jax.Array],
                extras: Mapping[str, jax.Array], context: Mapping[str, jax.Array],
                *, phase: Hashable) -> tuple[PyTree, dict]:
    """Per-device step -> (state, metrics reduced over devices); see common.parallel.

    batch: image, text, labels, index (this device's rows); extras: the
    epoch's per-item arrays at those rows; context: epoch, step_in_epoch and
    the epoch's scalars (0-d values of epoch_extras), replicated.
    """

  def epoch_extras(self, state: PyTree, epoch: int,
                   train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This epoch's inputs: per-item arrays (N rows, indexed by batch["index"])
    and scalars (0-d, passed in the step's context); {} if none."""

  def epoch_summary(self, state: PyTree, epoch: int, extras: Mapping[str, np.ndarray],
                    train: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray] | None) -> tuple[dict[str, Any], str]:
    """Host-side diagnostics after an epoch (logged as kind "epoch") and a line.

    truth: None, or {"corrupted": (N,) bool, "labels": (N, C) clean labels} —
    for diagnostics only; it never enters a training batch.
    """

  def encode(self, state: PyTree, image: np.ndarray, text: np.ndarray, *,
             map_batches: Callable[..., np.ndarray]) -> dict[str, np.ndarray]:
    """±1 codes (int8) keyed as the spec's directions name them, computed as
    map_batches(jitted fn, arrays, batch_size)."""


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a run's config resolves to, once: the method and its active quirks.

  quirks: the ACTIVE quirk names (the loop's and the method's); release_compat:
  {name: label} of those, or None when release_compat is off; loop: the
  loop's schedule with the quirks applied.
  """
  method: str
  quirks: frozenset[str]
  release_compat: Mapping[str, str] | None
  loop: quirks_lib.LoopPlan

  def has(self, quirk: str) -> bool:
    return quirk in self.quirks


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """Everything the project needs to know about a method, as one object.

  name: config.method's value; config_module: the module with get_config(arg)
  and DOCS; check_config(config): the method's own keys (ConfigError naming
  config.<key>), before any compute; build(config, data, plan) -> Method for
  a run (data: common.run_data.RunData); for_inference(config, resolved,
  plan) -> Method for encoding a finished run's checkpoints; quirks: the
  release's own quirks (common.quirks.Quirk; may set loop-plan fields);
  directions: {name: (query code key, database code key)} the evaluator
  scores; empty_queries: the mAP convention for queries without relevant
  items ("skip" | "zero"); diagnostics: {plot label: dotted key into the
  epoch summaries}; report_columns: {short name: dotted key} of the last
  epoch summary that sweep reports tabulate (common.report).
  """
  name: str
  config_module: str
  check_config: Callable[[ml_collections.ConfigDict], None]
  build: Callable[..., Method]
  for_inference: Callable[..., Method]
  directions: Mapping[str, tuple[str, str]]
  empty_queries: str
  quirks: Mapping[str, quirks_lib.Quirk] = dataclasses.field(default_factory=dict)
  diagnostics: Mapping[str, str] = dataclasses.field(default_factory=dict)
  report_columns: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def code_keys(self) -> tuple[str, ...]:
    """The code keys `encode` returns, in direction order."""
    keys: list[str] = []
    for pair in self.directions.values():
      keys += [k for k in pair if k not in keys]
    return tuple(keys)


def get_spec(name: str) -> MethodSpec:
  """The registered method `name` (ConfigError naming config.method if unknown)."""
  if name not in REGISTRY:
    raise ConfigError(f"config.method={name!r}: expected one of {tuple(REGISTRY)}")
  module, attribute = REGISTRY[name].split(":")
  spec = getattr(importlib.import_module(module), attribute)
  if not isinstance(spec, MethodSpec) or spec.name != name:
    raise TypeError(f"{REGISTRY[name]} is not the MethodSpec of {name!r}")
  return spec


def all_quirks(spec: MethodSpec) -> dict[str, quirks_lib.Quirk]:
  """Every quirk of a method's release: the loop's that apply, then its own."""
  return quirks_lib.method_quirks(spec.name, spec.quirks)


def resolve_plan(config: ml_collections.ConfigDict,
                 spec: MethodSpec | None = None) -> RunPlan:
  """The run's plan from config.release_compat and the loop keys (once per run).

  Raises:
    ConfigError naming config.method, config.release_compat or
    config.selection.
  """
  spec = spec or get_spec(config.method)
  quirks = all_quirks(spec)
  active = quirks_lib.active_quirks(
      config.get("release_compat", False), spec.name, quirks,
      owners=lambda quirk: [m for m in REGISTRY
                            if m != spec.name and quirk in all_quirks(get_spec(m))])
  return RunPlan(method=spec.name, quirks=frozenset(active),
                 release_compat={n: q.label for n, q in active.items()} or None,
                 loop=quirks_lib.loop_plan(config, spec.name, active))

