"""absl flags and run set-up shared by the launchers in launch/.

The launchers stay thin: they define their method's flags, then call these
helpers to (1) check every flag before any compute, (2) start multi-host JAX,
(3) load the data and inject label noise, (4) carve a validation split, and
(5) write and print the final results.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from common import evaluation
from common import plots
from common.entry import run_main  # noqa: F401  (re-exported for launchers)
from common.data import Split, Splits
from common.reporting import read_jsonl
from common import data as data_lib
from common.train_loop import (LoopConfig, SELECTION_MODES, restore_for_eval, train,
                               with_settings)

FLAGS = flags.FLAGS
NOISE_PROTOCOLS = ("scbch", "dcgmh", "symmetric", "release", "none")
BENCHMARKS = ("mirflickr25k", "nuswide21", "nuswide10", "mscoco", "iaprtc12")


def define_data_flags(*, default_noise_protocol: str, default_noise_rate: float) -> None:
  flags.DEFINE_string(
      "dataset", "synthetic:demo",
      "Data to train on: 'synthetic:<preset>' (embedded generator; presets "
      "tiny, demo, mirflickr25k, nuswide21, mscoco, iaprtc12), a benchmark name "
      f"({', '.join(BENCHMARKS)}) read from --data_dir, or 'tfds:<config>' read "
      "from --tfds_dir (built by launch/prepare_data.py).")
  flags.DEFINE_string("data_dir", None, "Directory with the benchmark's files.")
  flags.DEFINE_enum("layout", None, ["ucch", "scbch_h5", "dcgmh_mat"],
                    "File layout of --data_dir (default: detected from the files).")
  flags.DEFINE_string("tfds_dir", None, "TFDS data dir for --dataset=tfds:<config>.")
  flags.DEFINE_integer("query_size", None, "Query split size (default: the benchmark's).")
  flags.DEFINE_integer("train_size", None, "Train split size (default: the benchmark's).")
  flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic data generator.")
  flags.DEFINE_enum(
      "noise_protocol", default_noise_protocol, list(NOISE_PROTOCOLS),
      "Label noise injected into the TRAINING labels: scbch (flip one pair), "
      "dcgmh (four-way), symmetric (per-bit flips), release (the SCBCH release's "
      "-lall-noise_<rate>.h5 file from --data_dir), none.")
  flags.DEFINE_float("noise_rate", default_noise_rate,
                     "Fraction of corrupted training items (bit-flip probability "
                     "for symmetric).")
  flags.DEFINE_integer("noise_seed", 0, "Seed of the label-noise draw.")


def define_loop_flags(*, epochs: int, batch_size: int, eval_every: int) -> None:
  flags.DEFINE_integer("epochs", epochs, "Training epochs.")
  flags.DEFINE_integer("batch_size", batch_size,
                       "GLOBAL batch size over all devices and processes; an "
                       "epoch drops the last partial batch.")
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go. "
                      "Re-running the same command in the same workdir resumes.")
  flags.DEFINE_integer("eval_every", eval_every,
                       "Epochs between evaluations (0: only at the end).")
  flags.DEFINE_integer("checkpoint_every", 0,
                       "Global steps between mid-epoch checkpoints (0: epoch ends only).")
  flags.DEFINE_integer("keep", 3, "Checkpoints to keep (plus the best when selecting).")
  flags.DEFINE_integer("log_every", 20, "Steps between metric fetches/logs.")
  flags.DEFINE_enum("parallel", "shard_map", ["shard_map", "pmap"],
                    "Data-parallel driver: jit+shard_map over a 1-D mesh, or pmap.")
  flags.DEFINE_enum(
      "selection", "last", list(SELECTION_MODES),
      "Which epoch to report: last; val (best on a validation split carved from "
      "the training set, see --val_size); test_queries (best on the TEST "
      "queries, as the releases do; labelled in every output).")
  flags.DEFINE_integer("val_size", 500, "Validation queries held out of the training "
                       "split when --selection=val (the rest of the training split "
                       "is the validation database; labels are the noisy ones).")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")
  flags.DEFINE_bool("eval_only", False,
                    "Do not train: evaluate a checkpoint of --workdir (see --eval_step) "
                    "and write its results and codes.")
  flags.DEFINE_integer("eval_step", None, "With --eval_only: the checkpoint's global "
                       "step (default: best when selecting, else latest).")
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-host: host:port of process 0 (jax.distributed).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")


def say(line: str) -> None:
  """Prints on process 0 only."""
  if jax.process_index() == 0:
    print(line, flush=True)


def quiet_library_logs() -> None:
  """Orbax and JAX log every checkpoint step at INFO; keep that out of the way.

  An explicit --verbosity / -v wins.
  """
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def init_distributed() -> None:
  """jax.distributed.initialize from the multi-host flags (all or none must be set)."""
  given = {name: FLAGS[name].value for name in
           ("coordinator_address", "num_processes", "process_id")}
  if all(v is None for v in given.values()):
    return
  missing = [f"--{k}" for k, v in given.items() if v is None]
  if missing:
    raise flags.ValidationError(
        f"multi-host runs need --coordinator_address, --num_processes and "
        f"--process_id together; missing {', '.join(missing)}")
  # CPU processes need a collectives backend (GPU/TPU ignore this setting).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=given["coordinator_address"],
                             num_processes=given["num_processes"],
                             process_id=given["process_id"])


def require_workdir(method: str) -> str:
  workdir = FLAGS.workdir or os.path.join("runs", method)
  os.makedirs(workdir, exist_ok=True)
  return workdir


def loop_config(workdir: str, seed: int) -> LoopConfig:
  config = LoopConfig(
      epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, seed=seed, workdir=workdir,
      parallel=FLAGS.parallel, log_every=FLAGS.log_every,
      checkpoint_every=FLAGS.checkpoint_every, eval_every=FLAGS.eval_every,
      keep=FLAGS.keep, selection=FLAGS.selection, progress=FLAGS.progress)
  config.validate()
  return config


def preset_name_for(dataset: str) -> str:
  """The hyperparameter preset that matches --dataset."""
  if dataset.startswith("synthetic:"):
    return "synthetic"
  if dataset.startswith("tfds:"):
    config = dataset.split(":", 1)[1]
    return "synthetic" if config.startswith("synthetic") else config
  return dataset


def get_preset(get: Callable[[str], Any]) -> Any:
  """The --preset (default: --dataset's) via `get`, as a flag error if unknown."""
  name = FLAGS.preset or preset_name_for(FLAGS.dataset)
  try:
    return get(name)
  except (KeyError, ValueError) as e:
    message = e.args[0] if e.args else e
    raise flags.ValidationError(f"--preset={name}: {message}") from None


def resolve(preset: Any, names: Iterable[str]) -> dict[str, Any]:
  """Preset values, overridden by the flags among `names` that were given."""
  values = {}
  for name in names:
    value = FLAGS[name].value
    values[name] = value if value is not None else getattr(preset, name)
  return values


@dataclasses.dataclass(frozen=True)
class RunData:
  """The data of one run after noise injection and validation carving."""

  splits: Splits
  train_labels: np.ndarray       # noisy labels the method trains on
  corrupted: np.ndarray | None   # which training items were corrupted (if known)
  val: tuple[Split, Split] | None
  noise_summary: dict


def check_dataset_flags() -> None:
  """Validates --dataset and the flags it needs, before anything is loaded."""
  dataset = FLAGS.dataset
  kind, _, name = dataset.partition(":")
  if kind == "synthetic" and name:
    if name not in data_lib.SYNTHETIC_PRESETS:
      raise flags.ValidationError(
          f"--dataset={dataset}: unknown synthetic preset {name!r}; expected one "
          f"of {sorted(data_lib.SYNTHETIC_PRESETS)}")
  elif kind == "tfds" and name:
    if not FLAGS.tfds_dir:
      raise flags.ValidationError(f"--dataset={dataset} needs --tfds_dir")
  elif dataset in BENCHMARKS:
    if not FLAGS.data_dir:
      raise flags.ValidationError(f"--dataset={dataset} needs --data_dir with its files")
    if not os.path.isdir(FLAGS.data_dir):
      raise flags.ValidationError(f"--data_dir={FLAGS.data_dir}: no such directory")
  else:
    raise flags.ValidationError(
        f"--dataset={dataset!r}: expected synthetic:<preset>, tfds:<config> or one "
        f"of {BENCHMARKS}")
  check_noise_flags()


def load_splits() -> Splits:
  """The three splits named by --dataset (checked by check_dataset_flags)."""
  check_dataset_flags()
  kind, _, name = FLAGS.dataset.partition(":")
  if kind == "synthetic":
    overrides = {k: v for k, v in (("query_size", FLAGS.query_size),
                                   ("train_size", FLAGS.train_size)) if v is not None}
    return data_lib.make_synthetic(name, seed=FLAGS.data_seed, **overrides)
  if kind == "tfds":
    return data_lib.load_tfds_splits(name, FLAGS.tfds_dir)
  return data_lib.read_benchmark(FLAGS.dataset, FLAGS.data_dir, layout=FLAGS.layout,
                                 query_size=FLAGS.query_size,
                                 train_size=FLAGS.train_size)


def check_noise_flags() -> None:
  protocol, rate = FLAGS.noise_protocol, FLAGS.noise_rate
  if protocol != "none" and not 0.0 <= rate <= 1.0:
    raise flags.ValidationError(f"--noise_rate={rate}: must be in [0, 1]")
  if protocol == "release" and (FLAGS.dataset.startswith(("synthetic:", "tfds:"))):
    raise flags.ValidationError(
        "--noise_protocol=release reads the SCBCH release's noise files and needs a "
        f"benchmark --dataset with --data_dir, not --dataset={FLAGS.dataset}")


def load_run_data(*, selection: str, val_size: int, seed: int) -> RunData:
  """Splits + noisy training labels (+ a validation split for --selection=val)."""
  splits = load_splits()
  clean = splits.train.labels
  protocol, rate = FLAGS.noise_protocol, FLAGS.noise_rate
  if protocol == "none":
    noisy, corrupted = clean.copy(), np.zeros(len(clean), bool)
  elif protocol == "release":
    noisy, _ = data_lib.read_scbch_noisy_labels(FLAGS.dataset, FLAGS.data_dir, rate,
                                                train_labels=clean)
    corrupted = np.any(noisy != clean, axis=1)
  else:
    noisy, corrupted = data_lib.corrupt_labels(clean, rate, protocol=protocol,
                                               seed=FLAGS.noise_seed)
  noisy = np.asarray(noisy, np.float32)
  summary = {"protocol": protocol, "rate": rate, "seed": FLAGS.noise_seed,
             "corrupted_items": int(np.sum(corrupted)),
             "changed_bits": int(np.sum(noisy != clean)), "train_items": len(clean)}

  val = None
  if selection == "val":
    n = len(clean)
    if not 0 < val_size < n:
      raise flags.ValidationError(
          f"--val_size={val_size}: must be in (0, {n}) (the training split size)")
    order = np.random.default_rng(np.random.PCG64([seed, 7919])).permutation(n)
    held, kept = np.sort(order[:val_size]), np.sort(order[val_size:])
    take = lambda idx, labels: Split(image=splits.train.image[idx],
                                     text=splits.train.text[idx], labels=labels[idx],
                                     index=splits.train.index[idx])
    # Validation relevance uses the NOISY labels: the clean ones are unknown in practice.
    val = (take(held, noisy), take(kept, noisy))
    splits = dataclasses.replace(splits, train=take(kept, clean))
    noisy, corrupted = noisy[kept], corrupted[kept]
  return RunData(splits=splits, train_labels=noisy, corrupted=corrupted, val=val,
                 noise_summary=summary)


@dataclasses.dataclass(frozen=True)
class Run:
  """What a launcher needs after set-up: settings, loop, data, evaluation sets."""

  config: Any
  workdir: str
  loop: LoopConfig
  data: RunData
  eval_sets: dict


def prepare_run(method: str, argv: list[str],
                build_config: Callable[[], tuple[Any, Any]]) -> Run:
  """Everything before training, every flag checked before any heavy work.

  `build_config` returns (config, preset) from the flags; the config's
  num_classes is filled in from the data here.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  init_distributed()
  check_dataset_flags()
  config, preset = build_config()
  FLAGS.epochs = FLAGS.epochs or preset.epochs
  FLAGS.batch_size = FLAGS.batch_size or preset.batch_size
  workdir = require_workdir(method)
  loop = loop_config(workdir, seed=config.seed)
  data = load_run_data(selection=FLAGS.selection, val_size=FLAGS.val_size,
                       seed=config.seed)
  config = dataclasses.replace(config, num_classes=data.splits.num_classes)
  if config.k >= len(data.train_labels):
    raise flags.ValidationError(
        f"--k={config.k}: needs more training items than {len(data.train_labels)}")
  eval_sets = {"test": (data.splits.query, data.splits.database)}
  if data.val is not None:
    eval_sets["val"] = data.val
  return Run(config=config, workdir=workdir, loop=loop, data=data, eval_sets=eval_sets)


def run_flags(names: Iterable[str]) -> dict[str, Any]:
  """The flags that define a run (stored in checkpoints; resume must match)."""
  return {name: FLAGS[name].value for name in names}


FLAGFILE = "flags.txt"


def write_flagfile(workdir: str, launcher: str, values: Mapping[str, Any]) -> str:
  """<workdir>/flags.txt: the run's flags as an absl --flagfile (process 0).

  `nhj-evaluate --workdir=W --step=N` re-runs `launcher` with it (--eval_only)
  to evaluate any kept checkpoint.
  """
  path = os.path.join(workdir, FLAGFILE)
  if jax.process_index() != 0:
    return path
  lines = [f"# launcher: {launcher}"]
  for name, value in values.items():
    if value is None:
      continue
    if isinstance(value, bool):
      lines.append(f"--{name}" if value else f"--no{name}")
    elif isinstance(value, (list, tuple)):
      lines.append(f"--{name}={','.join(str(v) for v in value)}")
    else:
      lines.append(f"--{name}={value}")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path


def train_or_restore(method: Any, arrays: Mapping[str, np.ndarray], loop: LoopConfig,
                     run_flag_names: Iterable[str]) -> tuple[Any, dict]:
  """Trains (resuming if possible), or with --eval_only restores a checkpoint.

  Returns (state, results) of the selected checkpoint.
  """
  flag_values = run_flags(run_flag_names)
  write_flagfile(loop.workdir, f"launch.{method.name}", flag_values)
  if FLAGS.eval_only:
    state, step = restore_for_eval(method, loop, step=FLAGS.eval_step,
                                   flags=flag_values)
    results, _ = method.evaluate(state, "test")
    return state, with_settings(results, selection=f"checkpoint {step} (--eval_only)",
                                selected_step=step)
  if FLAGS.eval_step is not None:
    raise flags.ValidationError("--eval_step needs --eval_only")
  result = train(method, arrays, loop, flags=flag_values)
  return result.state, result.results


def plot_diagnostics(workdir: str, method: str, series: Mapping[str, str]) -> str | None:
  """<method>_diagnostics.png: per-epoch values of `series` ({label: dotted key}
  into the "epoch" records of metrics.jsonl; the last record of an epoch wins,
  so a resumed run plots once). None if no epoch has any of them."""
  records = {}
  for record in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if record.get("kind") == "epoch":
      records[record["epoch"]] = record
  lines = {}
  for label, key in series.items():
    points = []
    for epoch, record in sorted(records.items()):
      value = record
      for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        points.append((epoch + 1, value))
    if points:
      lines[label] = tuple(np.asarray(p) for p in zip(*points))
  if not lines:
    return None
  path = os.path.join(workdir, f"{method}_diagnostics.png")
  return plots.plot_epoch_series(lines, path, title=f"{method.upper()} diagnostics")


def finish(results: Mapping[str, Any], *, workdir: str, method: str,
           dataset_name: str, extra: Mapping[str, Any],
           codes: Mapping[str, np.ndarray],
           diagnostics: Mapping[str, str] | None = None) -> None:
  """Writes results JSON + PNG curves + codes .npz; prints the final table (process 0)."""
  if jax.process_index() != 0:
    return
  # --eval_only of checkpoint N writes <method>_step<N>_*, never over the final files.
  tag = f"step{results['settings']['selected_step']}" if FLAGS.eval_only else "final"
  codes_path = os.path.join(workdir, f"{method}_{tag}_codes.npz" if FLAGS.eval_only
                            else f"{method}_codes.npz")
  np.savez(codes_path, **codes)
  results = with_settings(results, method=method, dataset=dataset_name, **extra)
  paths = evaluation.write_results(results, workdir, prefix=f"{method}_{tag}")
  if diagnostics and not FLAGS.eval_only:
    plotted = plot_diagnostics(workdir, method, diagnostics)
    if plotted:
      paths = dict(paths, diagnostics=plotted)
  selection = results["settings"].get("selection", "last")
  note = {"last": "last epoch",
          "val": "best epoch on the validation split",
          "test_queries": "best epoch ON THE TEST QUERIES (release protocol; optimistic)"
          }.get(selection, selection)
  print(f"\n{method.upper()} final results on {dataset_name} ({note}):")
  if dataset_name.startswith("synthetic"):
    print("  (synthetic data: a demo of the pipeline, not a benchmark result)")
  print(evaluation.format_table(results))
  print("written: " + ", ".join(sorted([str(p) for p in paths.values()] + [codes_path])))
  if FLAGS.eval_only:
    return
  with open(os.path.join(workdir, "run_summary.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "dataset": dataset_name, **extra,
               "selection": selection}, f, indent=2, default=str)
