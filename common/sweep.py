"""Sweeps: many runs of `common.experiment.run`, one directory each, resumable.

A sweep file is Python, like a config file: `get_sweep()` (or `get_sweep(arg)`
for `--sweep=file.py:arg`) returns or yields run configs (ConfigDicts from
`configs/<method>.get_config` with keys set):

    from configs import scbch

    def get_sweep():
      for bits in (16, 32, 64, 128):
        for seed in (0, 1, 2):
          config = scbch.get_config("mirflickr25k")
          config.data_dir = "/data/mir"
          config.bits, config.seed = bits, seed
          yield config

Each run goes to `<root>/<name>/`, the name built from the method, the variant
and the keys whose values DIFFER across the sweep's configs of that method
(`scbch-full-bits16-seed0`): short, filesystem-safe, deterministic and unique.
Re-running the sweep skips finished runs (`run_summary.json` written and the
same config), resumes a killed one (experiment.run resumes by itself), and
refuses a run directory that holds another config. A failed run is recorded
(`<root>/sweep_status.json` and `<run>/FAILED`, the one-line error) and the
others go on. Runs execute one after another in this process, or as `jobs`
subprocesses at a time (`python -m launch.sweep --run_one=<run dir>`, which
reads the config from `<run dir>/sweep_config.json`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

import ml_collections

from common import run_config
from common import workdir as workdir_lib

SWEEP_CONFIG = "sweep_config.json"
SWEEP_LOG = "sweep.log"
STATUS_FILE = "sweep_status.json"
FAILED_FILE = "FAILED"
SUMMARY_FILE = "run_summary.json"
# Keys that never name a run: `method`/`variant` lead every name, and the
# sweep sets `progress` itself.
_NOT_IN_NAME = ("method", "variant", "progress")
# Name order: the usual table axes first, the seeds last, the rest in between.
_FIRST = ("dataset", "noise_protocol", "noise_rate", "bits")
_LAST = ("data_seed", "noise_seed", "seed")
# Keys that do not change what a finished run computed (skip it anyway).
_DRIVING = ("progress", "parallel", "log_every", "keep", "checkpoint_every",
            "prefetch")
MAX_NAME = 120

NEW, RESUME, FINISHED = "new", "resume", "finished"


class SweepError(ValueError):
  """A sweep that cannot run as given (bad file, duplicate configs, a run
  directory holding another config); the message names the run or file."""


@dataclasses.dataclass
class SweepRun:
  """One planned run: its name, config (progress off) and directory."""
  name: str
  config: ml_collections.ConfigDict
  workdir: str
  state: str = NEW           # new | resume | finished (at planning time)
  keys: dict = dataclasses.field(default_factory=dict)  # the naming keys


@dataclasses.dataclass
class RunOutcome:
  name: str
  status: str                # finished | skipped | failed | preempted
  maps: dict = dataclasses.field(default_factory=dict)
  seconds: float | None = None
  error: str | None = None
  workdir: str = ""

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


# --- the sweep file ------------------------------------------------------------


def load_sweep(spec: str) -> list[ml_collections.ConfigDict]:
  """The configs of a sweep file: `path.py` or `path.py:arg` (get_sweep(arg))."""
  path, arg = spec, None
  if not os.path.isfile(path) and ":" in spec:
    path, arg = spec.rsplit(":", 1)
  if not os.path.isfile(path):
    raise SweepError(f"--sweep: no sweep file at {path!r}")
  module_name = "nhj_sweep_" + re.sub(r"\W", "_", os.path.basename(path))
  spec_ = importlib.util.spec_from_file_location(module_name, path)
  if spec_ is None or spec_.loader is None:
    raise SweepError(f"--sweep: {path} is not a Python file")
  module = importlib.util.module_from_spec(spec_)
  try:
    spec_.loader.exec_module(module)
  except SyntaxError as e:
    raise SweepError(f"--sweep: {e.filename or path}, line {e.lineno}: "
                     f"{e.msg}") from e
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("NHJ_TRACEBACK"):
      raise
    raise SweepError(f"--sweep: importing {path} failed: {type(e).__name__}: "
                     f"{e} (NHJ_TRACEBACK=1 shows where)") from e
  get_sweep = getattr(module, "get_sweep", None)
  if not callable(get_sweep):
    raise SweepError(f"--sweep: {path} defines no get_sweep()")
  try:
    configs = list(get_sweep() if arg is None else get_sweep(arg))
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("NHJ_TRACEBACK"):
      raise
    raise SweepError(f"--sweep: get_sweep() of {path} failed: "
                     f"{type(e).__name__}: {e} (NHJ_TRACEBACK=1 shows where)") from e
  if not configs:
    raise SweepError(f"--sweep: get_sweep() of {path} gave no configs")
  for i, config in enumerate(configs):
    if not isinstance(config, ml_collections.ConfigDict) or "method" not in config:
      raise SweepError(f"--sweep: item {i} of get_sweep() in {path} is not a run "
                       f"config (a ConfigDict from configs/<method>.py): {type(config).__name__}")
  return configs


# --- names -----------------------------------------------------------------------


def _flat(config) -> dict:
  return run_config._flat(run_config.to_dict(config))  # pylint: disable=protected-access


def _value_text(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "x".join(_value_text(v) for v in value)
  return str(value)


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def _identity(config) -> str:
  """The config as canonical JSON, less what the sweep sets itself."""
  flat = {k: v for k, v in _flat(config).items() if k != "progress"}
  return json.dumps(flat, sort_keys=True, default=str)


def _key_order(key: str):
  if key in _FIRST:
    return (0, _FIRST.index(key), key)
  if key in _LAST:
    return (2, _LAST.index(key), key)
  return (1, 0, key)


def run_names(configs: Sequence[ml_collections.ConfigDict]) -> list[tuple[str, dict]]:
  """(name, naming keys) per config: `<method>-<variant>[-<key><value>...]` over
  the keys whose values differ among the sweep's configs of the same method.

  Raises SweepError if two configs are identical.
  """
  flats = [_flat(c) for c in configs]
  seen: dict[str, int] = {}
  for i, config in enumerate(configs):
    ident = _identity(config)
    if ident in seen:
      raise SweepError(f"configs #{seen[ident]} and #{i} of the sweep are identical "
                       "(every run needs at least one key that differs)")
    seen[ident] = i
  differing: dict[str, list[str]] = {}
  for method in {f["method"] for f in flats}:
    group = [f for f in flats if f["method"] == method]
    keys = set().union(*group)
    differing[method] = sorted(
        (k for k in keys if k not in _NOT_IN_NAME and
         len({json.dumps(f.get(k), sort_keys=True, default=str) for f in group}) > 1),
        key=_key_order)
  out = []
  for config, flat in zip(configs, flats):
    keys = {k: flat.get(k) for k in differing[flat["method"]]}
    parts = [flat["method"], str(flat.get("variant", "full"))]
    parts += [f"{k}{_value_text(v)}" for k, v in keys.items()]
    name = _safe("-".join(parts))
    if len(name) > MAX_NAME:
      digest = hashlib.sha1(_identity(config).encode()).hexdigest()[:8]
      name = f"{name[:MAX_NAME - 9]}-{digest}"
    out.append((name, keys))
  # Different configs whose names collide after sanitising: a hash tells them apart.
  names = [n for n, _ in out]
  for i, (name, keys) in enumerate(out):
    if names.count(name) > 1:
      digest = hashlib.sha1(_identity(configs[i]).encode()).hexdigest()[:8]
      out[i] = (f"{name}-{digest}", keys)
  return out


# --- planning ------------------------------------------------------------------------


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_state(run: SweepRun) -> str:
  """new, resume or finished; SweepError if the directory holds another config."""
  config_path = os.path.join(run.workdir, run_config.CONFIG_FILE)
  if not os.path.exists(config_path):
    return NEW
  try:
    saved = _read_json(config_path)
  except (OSError, ValueError) as e:
    raise SweepError(f"run {run.name}: cannot read {config_path}: {e}") from None
  saved = {k: v for k, v in saved.items() if k != "resolved"}
  now = run_config.to_dict(run.config)
  differ = run_config.differences(saved, now)
  if differ:
    raise SweepError(
        f"run {run.name}: {run.workdir} holds a run with a different config "
        f"({'; '.join(differ)}); move it away or use another --root")
  if (os.path.exists(os.path.join(run.workdir, SUMMARY_FILE))
      and not run_config.differences(saved, now, ignore=_DRIVING)):
    return FINISHED
  return RESUME


def plan(configs: Sequence[ml_collections.ConfigDict], root: str, *,
         check: bool = True) -> list[SweepRun]:
  """Names, directories and states of a sweep's runs (nothing is written).

  Every config is checked first (`common.experiment.check_config`), so a bad
  value stops the sweep before any compute, naming the run.
  """
  if not configs:
    raise SweepError("the sweep has no configs")
  runs = []
  for config, (name, keys) in zip(configs, run_names(configs)):
    config = copy.deepcopy(config)
    with config.unlocked():
      config.progress = False
    run = SweepRun(name=name, config=config, workdir=os.path.join(root, name), keys=keys)
    if check:
      from common import experiment  # pylint: disable=g-import-not-at-top
      try:
        experiment.check_config(config)
      except run_config.ConfigError as e:
        raise SweepError(f"run {name}: {e}") from None
    run.state = run_state(run)
    runs.append(run)
  return runs


# --- running -------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  if not isinstance(error, (ValueError, FileNotFoundError, KeyError)):
    text = f"{type(error).__name__}: {text}"
  return text


def _summary(workdir: str) -> dict:
  try:
    return _read_json(os.path.join(workdir, SUMMARY_FILE))
  except (OSError, ValueError):
    return {}


def _finished(run: SweepRun, status: str, seconds: float | None = None) -> RunOutcome:
  summary = _summary(run.workdir)
  if os.path.exists(os.path.join(run.workdir, FAILED_FILE)):
    os.unlink(os.path.join(run.workdir, FAILED_FILE))
  return RunOutcome(run.name, status, maps=dict(summary.get("maps", {})),
                    seconds=summary.get("seconds") if seconds is None else seconds,
                    workdir=run.workdir)


def _failed(run: SweepRun, error: str, seconds: float) -> RunOutcome:
  os.makedirs(run.workdir, exist_ok=True)
  workdir_lib.atomic_write_text(os.path.join(run.workdir, FAILED_FILE), error + "\n")
  return RunOutcome(run.name, "failed", seconds=seconds, error=error, workdir=run.workdir)


def _write_sweep_config(run: SweepRun) -> str:
  os.makedirs(run.workdir, exist_ok=True)
  path = os.path.join(run.workdir, SWEEP_CONFIG)
  workdir_lib.atomic_write_json(path, run_config.to_dict(run.config))
  return path


def _log_file(run: SweepRun):
  return open(os.path.join(run.workdir, SWEEP_LOG), "a", encoding="utf-8")


def _run_in_process(run: SweepRun) -> RunOutcome:
  from common import experiment  # pylint: disable=g-import-not-at-top
  from common import preemption  # pylint: disable=g-import-not-at-top
  _write_sweep_config(run)
  started = time.time()
  with _log_file(run) as log:
    def write(line: str) -> None:
      log.write(f"{line}\n")
      log.flush()
    try:
      experiment.run(run.config, run.workdir, log=write)
    except preemption.PreemptedError as e:
      write(str(e))
      return RunOutcome(run.name, "preempted", seconds=time.time() - started,
                        error=str(e), workdir=run.workdir)
    except Exception as e:  # pylint: disable=broad-except
      log.write(traceback.format_exc())
      return _failed(run, _one_line(e), time.time() - started)
  return _finished(run, "finished", time.time() - started)


def _child_command(run: SweepRun, cache_dir: str | None) -> list[str]:
  command = [sys.executable, "-m", "launch.sweep", f"--run_one={run.workdir}"]
  if cache_dir is not None:
    command.append(f"--compilation_cache_dir={cache_dir}")
  return command


def _child_env() -> dict:
  # The child imports this package, installed or not.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.environ.get("PYTHONPATH")
  return dict(os.environ, PYTHONPATH=repo + (os.pathsep + path if path else ""))


def _child_error(run: SweepRun, returncode: int) -> str:
  try:
    with open(os.path.join(run.workdir, SWEEP_LOG), encoding="utf-8") as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    lines = []
  errors = [line for line in lines if line.startswith("error:")]
  if errors:
    return errors[-1][len("error:"):].strip()
  tail = lines[-1] if lines else "no output"
  return f"exit status {returncode}: {tail}"


def _run_subprocesses(runs: Sequence[SweepRun], jobs: int, cache_dir: str | None,
                      done: Callable[[RunOutcome], None]) -> None:
  pending = list(runs)
  active: dict[subprocess.Popen, tuple[SweepRun, float, Any]] = {}
  previous = None
  if threading.current_thread() is threading.main_thread():
    # SIGTERM (SLURM, Kubernetes) to this process: stop the children at a
    # checkpoint, as Ctrl-C does (that reaches the whole process group).
    def interrupt(signum, frame):
      raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    while pending or active:
      while pending and len(active) < jobs:
        run = pending.pop(0)
        _write_sweep_config(run)
        log = _log_file(run)
        proc = subprocess.Popen(_child_command(run, cache_dir), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_child_env())
        active[proc] = (run, time.time(), log)
      time.sleep(0.1)
      for proc in [p for p in active if p.poll() is not None]:
        run, started, log = active.pop(proc)
        log.close()
        seconds = time.time() - started
        if proc.returncode == 0 and os.path.exists(os.path.join(run.workdir, SUMMARY_FILE)):
          done(_finished(run, "finished", seconds))
        elif proc.returncode == 0:
          done(RunOutcome(run.name, "preempted", seconds=seconds,
                          error="stopped early; re-run the sweep to resume",
                          workdir=run.workdir))
        else:
          done(_failed(run, _child_error(run, proc.returncode), seconds))
  finally:
    for proc, (_, _, log) in active.items():  # interrupted: children checkpoint and stop
      proc.terminate()
    for proc, (_, _, log) in active.items():
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
      log.close()
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def format_outcome(outcome: RunOutcome, width: int = 0) -> str:
  """`name  status  i2t=0.612 t2i=0.634  12.3s` (or the error of a failed run)."""
  maps = " ".join(f"{k}={v:.4f}" for k, v in outcome.maps.items()
                  if isinstance(v, (int, float)))
  seconds = f"{outcome.seconds:.1f}s" if outcome.seconds is not None else "-"
  status = "FAILED" if outcome.status == "failed" else outcome.status
  detail = f"error: {outcome.error}" if outcome.status == "failed" else (maps or "-")
  return f"{outcome.name:<{width}}  {status:<9}  {detail}  {seconds}"


def write_status(root: str, outcomes: Mapping[str, RunOutcome],
                 runs: Sequence[SweepRun]) -> str:
  path = os.path.join(root, STATUS_FILE)
  os.makedirs(root, exist_ok=True)
  workdir_lib.atomic_write_json(path, {
      "updated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "runs": {run.name: (outcomes[run.name].as_json() if run.name in outcomes
                          else {"name": run.name, "status": "pending",
                                "workdir": run.workdir})
               for run in runs}})
  return path


def run_sweep(configs: Sequence[ml_collections.ConfigDict] | Iterable, root: str, *,
              jobs: int = 0, dry_run: bool = False, print_fn: Callable[[str], None] = print,
              progress: bool = True, cache_dir: str | None = None) -> dict[str, RunOutcome]:
  """Runs (or, with dry_run, lists) a sweep into `root`; returns {name: outcome}.

  Args:
    configs: the run configs (see the module docstring).
    root: each run goes to `<root>/<name>/`.
    jobs: 0 runs one after another in this process; N > 0 runs N subprocesses
      at a time (`python -m launch.sweep --run_one=<run dir>`).
    dry_run: print the plan (name, state, naming keys) and run nothing.
    print_fn: where the per-run summary lines go (stdout by default).
    progress: an overall tqdm bar with ETA on stderr.
    cache_dir: subprocesses: their --compilation_cache_dir (None: the default).

  Raises:
    SweepError before anything runs: identical configs, a bad config value, a
    run directory holding another config.
  """
  runs = plan(list(configs), root)
  width = max(len(r.name) for r in runs)
  if dry_run:
    for run in runs:
      keys = " ".join(f"{k}={_value_text(v)}" for k, v in run.keys.items())
      print_fn(f"{run.name:<{width}}  {run.state:<8}  {keys}".rstrip())
    counts = {s: sum(r.state == s for r in runs) for s in (NEW, RESUME, FINISHED)}
    print_fn(f"dry run: {len(runs)} runs in {root}: {counts[NEW]} new, "
             f"{counts[RESUME]} to resume, {counts[FINISHED]} finished")
    return {}
  from common.reporting import ProgressBar  # pylint: disable=g-import-not-at-top
  outcomes: dict[str, RunOutcome] = {}
  todo = [r for r in runs if r.state != FINISHED]
  bar = ProgressBar(len(runs), desc="sweep", enabled=progress)
  for run in runs:
    if run.state == FINISHED:
      outcomes[run.name] = _finished(run, "skipped")
      print_fn(format_outcome(outcomes[run.name], width))
  write_status(root, outcomes, runs)
  bar.update(len(outcomes))

  def done(outcome: RunOutcome) -> None:
    outcomes[outcome.name] = outcome
    write_status(root, outcomes, runs)
    print_fn(format_outcome(outcome, width))
    bar.update(len(outcomes), postfix=outcome.name)

  try:
    if jobs > 0:
      _run_subprocesses(todo, jobs, cache_dir, done)
    else:
      for run in todo:
        outcome = _run_in_process(run)
        done(outcome)
        if outcome.status == "preempted":
          break
  finally:
    bar.close()
  failed = [o.name for o in outcomes.values() if o.status == "failed"]
  stopped = [r.name for r in runs if r.name not in outcomes
             or outcomes[r.name].status == "preempted"]
  finished = sum(o.status in ("finished", "skipped") for o in outcomes.values())
  skipped = sum(o.status == "skipped" for o in outcomes.values())
  line = (f"sweep: {finished} of {len(runs)} runs finished ({skipped} skipped as "
          f"already finished)")
  if failed:
    line += f"; {len(failed)} FAILED: {', '.join(failed)} (see {os.path.join(root, STATUS_FILE)})"
  if stopped:
    line += f"; {len(stopped)} stopped early: re-run the same command to resume"
  print_fn(line)
  return outcomes


def run_one(run_dir: str) -> dict:
  """A subprocess's run: the config of `<run_dir>/sweep_config.json`, into run_dir."""
  from common import experiment  # pylint: disable=g-import-not-at-top
  path = os.path.join(run_dir, SWEEP_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--run_one: no {SWEEP_CONFIG} in {run_dir}")
  config = run_config.load(path)
  return experiment.run(config, run_dir)
