"""Run configs (ml_collections.ConfigDict) as the library sees them.

Library code never reads flags: it takes a ConfigDict and reports a bad value
as `ConfigError("config.lr=0: must be > 0")`, naming the key; the launchers map
`config.<key>` to their `--config.<key>` flag. A run's resolved config (every
default filled in) is written to `<workdir>/config.json` and into each
checkpoint, and resuming compares the two key by key.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import ml_collections

CONFIG_FILE = "config.json"
# Keys that change how a run is driven, not what it computes: a resumed run
# may change them (e.g. more epochs, a different driver).
MAY_DIFFER_ON_RESUME = ("epochs", "eval_every", "checkpoint_every", "keep",
                        "log_every", "progress", "parallel", "prefetch")


class ConfigError(ValueError):
  """A config value that cannot run; the message names `config.<key>`."""


def check(ok: bool, key: str, value: Any, requirement: str) -> None:
  """Raises ConfigError('config.<key>=<value>: <requirement>') unless ok."""
  if not ok:
    raise ConfigError(f"config.{key}={value!r}: {requirement}")


def check_positive(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  for key in keys:
    value = config[key]
    check(isinstance(value, (int, float)) and not isinstance(value, bool)
          and value > 0, key, value, "must be > 0")


def check_choice(config: ml_collections.ConfigDict, key: str,
                 choices: Iterable[str]) -> None:
  choices = tuple(choices)
  check(config[key] in choices, key, config[key], f"expected one of {choices}")


def check_widths(config: ml_collections.ConfigDict, key: str) -> None:
  widths = config[key]
  ok = (isinstance(widths, (tuple, list)) and len(widths) > 0
        and all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                for w in widths))
  check(ok, key, widths, "expected a non-empty tuple of positive integers")


def to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict:
  """A plain, JSON-ready dict (tuples become lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  def plain(value):
    if isinstance(value, Mapping):
      return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
      return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)
    return value
  return plain(config)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def differences(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                ignore: Iterable[str] = MAY_DIFFER_ON_RESUME) -> list[str]:
  """'config.lr: saved 0.0001 vs now 0.001' for each key whose values differ."""
  ignore = set(ignore)
  saved, now = _flat(to_dict(saved)), _flat(to_dict(now))
  lines = []
  for key in sorted(set(saved) | set(now)):
    if key in ignore or saved.get(key) == now.get(key):
      continue
    def show(d):
      return "unset" if key not in d else repr(d[key])
    lines.append(f"config.{key}: saved {show(saved)} vs now {show(now)}")
  return lines


def check_same_run(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                   workdir: str, ignore: Iterable[str] = MAY_DIFFER_ON_RESUME) -> None:
  """Refuses to resume (or evaluate) a workdir written with another config."""
  differ = differences(saved, now, ignore=ignore)
  if differ:
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({'; '.join(differ)}). "
        "Use a new workdir, or repeat the original config to resume.")


def load(path_or_workdir: str) -> ml_collections.ConfigDict:
  """The locked ConfigDict saved by a run (`<workdir>/config.json` or a path)."""
  path = path_or_workdir
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no run config at {path} (was the run started with "
                            "this version of the launchers?)")
  with open(path, encoding="utf-8") as f:
    values = json.load(f)
  if not isinstance(values, dict) or "method" not in values:
    raise ValueError(f"{path}: not a run config (no 'method' key)")
  values.pop("resolved", None)
  # JSON has no tuples; the configs declare widths as tuples.
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return ml_collections.ConfigDict(values).lock()
