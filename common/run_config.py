"""Run configs (ml_collections.ConfigDict) as the library sees them.

Library code never reads flags: it takes a ConfigDict and reports a bad value
as `ConfigError("config.lr=0: must be > 0")`, naming the key; the launchers map
`config.<key>` to their `--config.<key>` flag. A run's resolved config (every
default filled in) is written to `<workdir>/config.json` and into each
checkpoint, and resuming compares the two key by key.

The record also holds "config_version" (SCHEMA_VERSION) and "data_files"
(common.run_data.data_fingerprints). Two rules keep identity honest across
moves and upgrades:
- Data: when both records have fingerprints, the files' sizes and hashes
  decide, not the paths (data_dir, tfds_dir, the path of folder:<path>): the
  same data elsewhere is the same run, a changed file is refused by name.
- Upgrades: a record written by an earlier version (a lower or no
  config_version) may lack keys added since; a missing key is accepted when
  the value now is its default (the value every preset of the method's
  config file gives it), so a package upgrade does not strand a long run.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
from typing import Any, Iterable, Mapping

import ml_collections

from common.errors import ConfigError  # noqa: F401  (raised and re-exported here)

CONFIG_FILE = "config.json"
# Keys that change how a run is driven, not what it computes: a resumed run
# may change them (e.g. more epochs, a different driver).
MAY_DIFFER_ON_RESUME = ("epochs", "eval_every", "checkpoint_every", "keep",
                        "log_every", "progress", "parallel", "prefetch")


# What config.json and each checkpoint's record say about their own format:
# 1 (no "config_version" key): before data fingerprints and absolute paths;
# 2: "data_files" fingerprints, absolute paths;
# 3: DCGMH's checkpointed state holds the epoch's per-item filter decisions
#    (epoch_flags, epoch_source) instead of in-step diagnostics counts, and its
#    per-epoch tau estimate is a scalar of the extras (issue 19).
SCHEMA_VERSION = 3
VERSION_KEY = "config_version"
DATA_KEY = "data_files"
# {method: the first config_version whose checkpoints hold the method's current
# state layout}: a workdir written before it cannot be restored by this version.
STATE_LAYOUT_SINCE = {"dcgmh": 3}
# Keys of a record that are not config keys.
RECORD_KEYS = ("resolved", VERSION_KEY, DATA_KEY)
# Where the data lives; with fingerprints on both sides they do not decide.
PATH_KEYS = ("data_dir", "tfds_dir")


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


def schema_version(record: Mapping[str, Any]) -> int:
  """The config_version a record was written with (1: before versions)."""
  value = record.get(VERSION_KEY, 1)
  return value if isinstance(value, int) and not isinstance(value, bool) else 1


@functools.lru_cache(maxsize=None)
def _defaults(method: str) -> dict:
  """{flat key: default} of configs/<method>.py for the keys whose default is
  the same in every preset (others have no single default)."""
  try:
    module = importlib.import_module(f"configs.{method}")
  except ImportError:
    return {}
  presets = ["synthetic"] + sorted(p for p in getattr(module, "PRESETS", {})
                                   if p != "synthetic")
  flats = [_flat(to_dict(module.get_config(p))) for p in presets]
  return {k: v for k, v in flats[0].items() if all(f.get(k, ()) == v for f in flats)}


def key_default(method: str, key: str) -> tuple[bool, Any]:
  """(known, value): the preset-independent default of config.<key>."""
  defaults = _defaults(method) if isinstance(method, str) else {}
  return key in defaults, defaults.get(key)


def _dataset_kind(value: Any) -> Any:
  """folder:<path> -> 'folder:' (the path is not the identity); else as is."""
  from common.data import names  # pylint: disable=g-import-not-at-top
  return names.FOLDER if names.folder_path(value) is not None else value


def _absolute(key: str, value: Any) -> Any:
  if isinstance(value, str) and "://" in value:
    return value
  if key in PATH_KEYS and isinstance(value, str) and value:
    return os.path.abspath(os.path.expanduser(value))
  from common.data import names  # pylint: disable=g-import-not-at-top
  path = names.folder_path(value) if key == "dataset" else None
  if path is not None:
    return names.FOLDER + os.path.abspath(os.path.expanduser(path))
  return value


def data_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
  """'data file <path>: ...' for each data file whose fingerprint (size and
  hash; not the mtime or the path) differs between two records."""
  before = (saved.get(DATA_KEY) or {}).get("files", {})
  after_data = now.get(DATA_KEY) or {}
  after, root = after_data.get("files", {}), after_data.get("root") or ""
  lines = []
  for name in sorted(set(before) | set(after)):
    path = os.path.join(root, name)
    if name not in after:
      lines.append(f"data file {path}: read by the saved run, not there now")
    elif name not in before:
      lines.append(f"data file {path}: not read by the saved run")
    elif before[name].get("size") != after[name].get("size"):
      lines.append(f"data file {path} changed: {before[name].get('size')} bytes "
                   f"saved vs {after[name].get('size')} now")
    elif before[name].get("sha256") != after[name].get("sha256"):
      lines.append(f"data file {path} changed: same size, other content")
  return lines


def differences(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                ignore: Iterable[str] = MAY_DIFFER_ON_RESUME) -> list[str]:
  """'config.lr: saved 0.0001 vs now 0.001' for each key whose values differ.

  Data identity and upgrades: see the module docstring (fingerprints, when
  both records have them, replace the paths; keys a record from an earlier
  version lacks are fine at their defaults). Data files: `data_differences`.
  """
  saved, now = to_dict(saved), to_dict(now)
  ignore = set(ignore) | {VERSION_KEY}
  fingerprinted = DATA_KEY in saved and DATA_KEY in now
  if fingerprinted:
    ignore |= set(PATH_KEYS)
  older = schema_version(saved) < schema_version(now)
  method = now.get("method", saved.get("method"))
  saved_flat = _flat({k: v for k, v in saved.items() if k != DATA_KEY})
  now_flat = _flat({k: v for k, v in now.items() if k != DATA_KEY})
  if not fingerprinted:
    # A record from before absolute paths may hold a path as typed: it is
    # read as relative to the current directory (what that run did, if it was
    # started from here).
    saved_flat = {k: _absolute(k, v) for k, v in saved_flat.items()}
  lines = []
  for key in sorted(set(saved_flat) | set(now_flat)):
    if key in ignore or saved_flat.get(key) == now_flat.get(key):
      continue
    if (fingerprinted and key == "dataset"
        and _dataset_kind(saved_flat.get(key)) == _dataset_kind(now_flat.get(key))):
      continue
    if older and key not in saved_flat:
      if key.startswith("resolved."):
        continue  # derived from the config and the data, both compared
      known, default = key_default(method, key)
      if known and now_flat[key] == default:
        continue
    def show(d):
      return "unset" if key not in d else repr(d[key])
    lines.append(f"config.{key}: saved {show(saved_flat)} vs now {show(now_flat)}")
  return lines


def read_json_object(path: str) -> dict:
  """A JSON object from `path`; ValueError naming the file when it is not one
  (invalid JSON, a list, ...)."""
  with open(path, encoding="utf-8") as f:
    try:
      values = json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
      raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged, "
                       "remove or restore it") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path}: expected a JSON object, got a "
                     f"{type(values).__name__}; the file is damaged, remove or "
                     "restore it")
  return values


def check_same_run(saved: Mapping[str, Any], now: Mapping[str, Any], *,
                   workdir: str, ignore: Iterable[str] = MAY_DIFFER_ON_RESUME) -> None:
  """Refuses to resume (or evaluate) a workdir written with another config, or
  with a state layout this version cannot restore (STATE_LAYOUT_SINCE)."""
  if saved.get("method") != now.get("method"):
    raise ConfigError(
        f"config.method: workdir {workdir} holds {saved.get('method')}, this is "
        f"{now.get('method')}; use another workdir")
  # A saved record that names an older version, or names none while this run's
  # does (a version-1 workdir); records without versions on both sides
  # (common.train_loop.train called directly) are not compared.
  since = STATE_LAYOUT_SINCE.get(saved.get("method"), 0)
  if schema_version(saved) < since and (VERSION_KEY in saved
                                        or schema_version(now) >= since):
    raise ConfigError(
        f"workdir {workdir} holds a {str(saved.get('method')).upper()} run written "
        f"with {VERSION_KEY} {schema_version(saved)}; its checkpoints hold the "
        f"training state as it was before {VERSION_KEY} {since}, which this version "
        "cannot restore. Finish, evaluate or encode it with the version that wrote "
        "it, or start a new workdir.")
  # The data first: values resolved from it (resolved.*) differ with it.
  changed = data_differences(to_dict(saved), to_dict(now))
  if changed:
    raise ConfigError(
        f"workdir {workdir} holds a run on other data ({'; '.join(changed)}). "
        "Use a new workdir, or restore the data the run started with.")
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
  values = read_json_object(path)
  if "method" not in values:
    raise ValueError(f"{path}: not a run config (no 'method' key)")
  older = schema_version(values) < SCHEMA_VERSION
  for key in RECORD_KEYS:
    values.pop(key, None)
  if older:
    # Keys added since it was written, at their defaults.
    for key, value in _defaults(values["method"]).items():
      if "." not in key and key not in values:
        values[key] = value
  # JSON has no tuples; the configs declare widths as tuples.
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return ml_collections.ConfigDict(values).lock()
