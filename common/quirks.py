"""Release quirks: behaviours of a method's published release, reproduced on purpose.

config.release_compat selects them: False (none, the default), True (every
quirk of the run's method) or "name1,name2" (only those). Each active quirk
is labelled in every output (results["settings"]["release_compat"]).

A quirk is data: its name, a one-line label, the methods whose release has
it, and the loop-plan fields it sets (`plan`, e.g. {"eval_every": 5}). The
loop's quirks are here (LOOP_QUIRKS); a method's own are in its MethodSpec
(common.methods). `LoopPlan` is the loop's schedule once the active quirks'
plan fields are applied. This module is a leaf: it imports no other module
of the project but common.run_config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from common.run_config import check

SELECTION_MODES = ("last", "val", "test_queries")


@dataclasses.dataclass(frozen=True)
class Quirk:
  """One behaviour of a release that this project does differently by default.

  name: what config.release_compat lists; label: one line, shown in every
  output; methods: the methods whose release has it (None: every method);
  plan: the LoopPlan fields it sets (empty for a quirk of the step).
  """
  name: str
  label: str
  methods: tuple[str, ...] | None
  plan: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def quirk_registry(*quirks: Quirk) -> dict[str, Quirk]:
  """{name: quirk}, in the order given (the order outputs list them in)."""
  return {q.name: q for q in quirks}


LOOP_QUIRKS = quirk_registry(
    # PyTorch's DataLoader default (drop_last=False), in every release.
    Quirk("partial_last_batch",
          "the epoch's partial last batch is trained (PyTorch drop_last=False)",
          None, {"keep_partial": True}),
    # The SCBCH release evaluates at the START of each epoch (the model after
    # e-1 epochs; the final model is never evaluated) and reports the best of
    # those evaluations on the test queries. One quirk, not two: with
    # selection='last' the evaluations' timing changes no reported number,
    # and test-query selection alone is config.selection='test_queries'.
    Quirk("eval_at_epoch_start",
          "evaluation at the START of each epoch (the model after e-1 epochs; the "
          "final model is not evaluated), best epoch on the TEST queries",
          ("scbch",), {"eval_at_epoch_start": True, "selection": "test_queries",
                       "eval_every": 1}),
    # The DCGMH release evaluates every 5 epochs and at the end (the reported
    # model is still the last one: this changes when evaluations are logged).
    Quirk("eval_every_5", "evaluation every 5 epochs and at the end", ("dcgmh",),
          {"eval_every": 5}),
)


def method_quirks(method: str, own: Mapping[str, Quirk]) -> dict[str, Quirk]:
  """Every quirk of a method's release: the loop's that apply to it, then its own."""
  quirks = {n: q for n, q in LOOP_QUIRKS.items()
            if q.methods is None or method in q.methods}
  quirks.update(own)
  return quirks


def active_quirks(value: Any, method: str, quirks: Mapping[str, Quirk], *,
                  owners: Callable[[str], list[str]] = lambda name: []
                  ) -> dict[str, Quirk]:
  """The quirks `value` (config.release_compat) selects among `quirks`, in order.

  owners(name): the other methods whose release has quirk `name` (asked only
  for a name that is not one of `quirks`, to say whose quirk it is).

  Raises:
    ConfigError naming config.release_compat and listing the valid names: a
    value that is not a bool or a comma-separated string of names, an
    unknown name, or a quirk of another method's release.
  """
  valid = (f"valid for {method.upper() or 'this method'}: True (all), False "
           f"(none) or a comma-separated subset of {', '.join(quirks) or '(none)'}")
  if isinstance(value, bool):
    return dict(quirks) if value else {}
  check(isinstance(value, str) and value.strip(" ,"), "release_compat", value,
        f"expected a bool or quirk names; {valid}")
  names = [n.strip() for n in value.split(",") if n.strip()]
  for name in names:
    if name not in quirks:
      theirs = owners(name)
      why = (f"{name!r} is a quirk of the {'/'.join(m.upper() for m in theirs)} "
             "release" if theirs else f"unknown quirk {name!r}")
      check(False, "release_compat", value, f"{why}; {valid}")
  return {n: q for n, q in quirks.items() if n in names}


@dataclasses.dataclass(frozen=True)
class LoopPlan:
  """The loop's schedule as run: the config's, with the active quirks' plan fields.

  eval_every: evaluate after every eval_every-th epoch (0: only at the end);
  with eval_at_epoch_start the evaluation moves to the START of epoch e
  (0-based; the model after e epochs) when (e + 1) % eval_every == 0, and
  the final model is not evaluated, as in the releases that do this.
  """
  selection: str
  eval_every: int
  eval_at_epoch_start: bool = False
  keep_partial: bool = False


def loop_plan(config: ml_collections.ConfigDict, method: str,
              active: Mapping[str, Quirk]) -> LoopPlan:
  """The schedule of a run; the active quirks' plan fields replace parts of it.

  Raises:
    ConfigError: a quirk that selects on the test queries with
      config.selection='val' (the release selects on the test queries).
  """
  fields: dict[str, Any] = {}
  for quirk in active.values():
    fields.update(quirk.plan)
  selection = fields.pop("selection", config.selection)
  check(config.selection in ("last", selection), "selection", config.selection,
        f"release_compat reproduces the {method.upper()} release, which selects "
        f"with {selection!r}; use 'last' or {selection!r}")
  return LoopPlan(selection=selection,
                  eval_every=fields.pop("eval_every", config.eval_every), **fields)
