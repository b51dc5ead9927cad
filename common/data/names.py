"""config.dataset names: the one parser (source, name) every module uses.

  synthetic:<size>   the embedded generator (common.data.synthetic presets)
  tfds:<name>        a prepared TFDS dataset (nhj-prepare)
  folder:<path>      a folder or .h5 of docs/data.md's layout
  real:<name>        a small real multi-label set (common.data.real)
  <benchmark>        mirflickr25k, nuswide21, ... (config.data_dir)
"""

from __future__ import annotations

from common.data import readers
from common.errors import ConfigError

SOURCES = ("synthetic", "tfds", "folder", "real", "benchmark")
FOLDER = "folder:"


def parse_dataset(spec: str) -> tuple[str, str]:
  """config.dataset -> (source, name); ConfigError naming config.dataset."""
  if not isinstance(spec, str):
    raise ConfigError(f"config.dataset={spec!r}: expected a string")
  source, sep, name = spec.partition(":")
  if sep and source in ("synthetic", "tfds", "folder", "real") and name:
    return source, name
  if not sep and spec in readers.BENCHMARKS:
    return "benchmark", spec
  raise ConfigError(
      f"config.dataset={spec!r}: expected synthetic:<size>, tfds:<name>, "
      f"folder:<path>, real:<name> or one of {tuple(readers.BENCHMARKS)}")


def folder_path(spec) -> str | None:
  """The <path> of a folder:<path> dataset, else None (any other value)."""
  if isinstance(spec, str) and spec.startswith(FOLDER) and len(spec) > len(FOLDER):
    return spec[len(FOLDER):]
  return None
