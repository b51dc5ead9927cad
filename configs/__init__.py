"""Run configs as code: `get_config(arg)` files for ml_collections' config_flags.

  nhj-scbch --config=configs/scbch.py:mirflickr25k --config.bits=64 --workdir=W

Each file declares every key of one method's run once (data, noise, loop and
hyperparameters); the argument after ':' picks a dataset preset.
"""

from __future__ import annotations

import importlib

from common import methods as _methods

# Every registered method (common.methods.REGISTRY), in registry order.
METHODS = tuple(_methods.REGISTRY)


def key_docs(method: str) -> dict[str, str]:
  """{key: one line of doc} for every key of configs/<method>.py's configs:
  the shared keys' docs (configs/base.py DOCS) and the method's own (DOCS of
  configs/<method>.py)."""
  from configs import base
  own = getattr(importlib.import_module(f"configs.{method}"), "DOCS", {})
  return {**base.DOCS, **own}


def format_value(value) -> str:
  """A config value as it is written on the command line."""
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value) + ("," if len(value) == 1 else "")
  return "None" if value is None else str(value)


def describe(config) -> list[tuple[str, str, str]]:
  """(key, value as on the command line, doc) for every key of `config`, in
  the config's order. A key the DOCS dicts lack (a config file of your own
  that adds keys) is described as such; tests/test_readme.py keeps every key
  of configs/ documented."""
  docs = key_docs(config.method)
  return [(k, format_value(config[k]), docs.get(k, "(not documented in configs/)"))
          for k in config.keys()]


def markdown_table() -> str:
  """docs/config.md's key table: every key of every method's default config,
  its default per method and its doc (generated: `python -m configs`)."""
  rows, values = {}, {}
  for method in METHODS:
    config = importlib.import_module(f"configs.{method}").get_config()
    for key, value, doc in describe(config):
      rows.setdefault(key, doc if key not in rows else rows[key])
      values.setdefault(key, {})[method] = value
  own = {m: set(getattr(importlib.import_module(f"configs.{m}"), "DOCS", {}))
         for m in METHODS}
  lines = ["| key | " + " | ".join(METHODS) + " | meaning |",
           "|---|" + "---|" * len(METHODS) + "---|"]
  for key, doc in rows.items():
    if sum(key in own[m] for m in METHODS) > 1:   # same name, per-method meaning
      for m in METHODS:
        if key in own[m]:
          cells = [f"`{values[key][x]}`" if x == m else "—" for x in METHODS]
          mdoc = importlib.import_module(f"configs.{m}").DOCS[key]
          lines.append(f"| `config.{key}` | " + " | ".join(cells) + f" | {m.upper()}: {mdoc} |")
      continue
    cells = [f"`{values[key][m]}`" if m in values[key] else "—" for m in METHODS]
    lines.append(f"| `config.{key}` | " + " | ".join(cells) + f" | {doc} |")
  return "\n".join(lines) + "\n"


# Training items of the synthetic demo, whose schedule the default configs
# (epochs, batch_size) are set for.
DEMO_TRAIN_ITEMS = 4000


def schedule_hint(config, train_items: int, *, factor: float = 3.0) -> str | None:
  """One line when a run's schedule is far from its preset's: the total
  optimisation steps (epochs x steps an epoch) below 1/factor of what the
  method's default config trains on the demo's DEMO_TRAIN_ITEMS items, or
  above factor times it. None for synthetic and benchmark data (their presets
  are set for them) and for schedules near the preset's."""
  dataset = str(config.dataset)
  if not dataset.startswith(("folder:", "tfds:")) or train_items <= 0:
    return None
  default = importlib.import_module(f"configs.{config.method}").get_config()
  reference = default.epochs * (DEMO_TRAIN_ITEMS // default.batch_size)
  per_epoch = max(train_items // config.batch_size, 0)
  total = per_epoch * config.epochs
  if reference / factor <= total <= reference * factor:
    return None
  advice = ("raise config.epochs (or lower config.batch_size) if the results "
            "fall short" if total < reference else
            "fewer config.epochs may do, in less time")
  return (f"note: {train_items} training items at config.batch_size="
          f"{config.batch_size} are {per_epoch} steps an epoch, {total} steps in "
          f"config.epochs={config.epochs}; the {config.method} preset trains "
          f"{reference} ({default.epochs} epochs of {DEMO_TRAIN_ITEMS // default.batch_size}"
          f" steps): {advice}.")

