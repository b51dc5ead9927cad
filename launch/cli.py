"""The absl side of the launchers: flags, start-up, and one-line errors.

Library code takes a ConfigDict and never reads flags; this module owns the
flags: `--config` (ml_collections config_flags, locked so a typo fails),
`--workdir`, evaluation-only and multi-host flags, and the compilation cache.
Errors raised with `config.<key>` in the message are shown as `--config.<key>`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import importlib
import json
import os
import re
import sys
import textwrap
import zipfile
from typing import Callable

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs
from common import preemption

FLAGS = flags.FLAGS
# Bad input: shown as one `error:` line, exit status 2. OSError covers the
# file system's refusals (read-only or full disk, a file where a folder should
# be, a dangling link, a name too long); BadZipFile and EOFError a truncated
# .npz / .npy; MemoryError an input too big for this machine.
USER_ERRORS = (flags.ValidationError, OSError, KeyError, ValueError,
               FloatingPointError, TypeError, zipfile.BadZipFile, EOFError,
               MemoryError)
HELP_FLAGS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
DEFAULT_CACHE = os.path.join("~", ".cache", "noisy_hashing_jax", "xla")


def config_path(method: str) -> str:
  """configs/<method>.py wherever the package is installed."""
  return os.path.join(os.path.dirname(configs.__file__), f"{method}.py")


def define_flags(method: str) -> None:
  # config_flags reads --config.<key> overrides from sys.argv right here.
  _reporting_override_errors(lambda: config_flags.DEFINE_config_file(
      "config", config_path(method),
      f"Run config: a file with get_config(arg), e.g. configs/{method}.py:mirflickr25k "
      f"(default: the installed configs/{method}.py, synthetic demo). Override "
      "keys with --config.<key>=<value> AFTER --config.", lock_config=True))
  flags.DEFINE_string("workdir", None, f"Where checkpoints, metrics and results go "
                      f"(default runs/{method}). Re-running the same config there resumes.")
  flags.DEFINE_bool("eval_only", False, "Do not train: evaluate a checkpoint of "
                    "--workdir (see --eval_step) and write its results and codes.")
  flags.DEFINE_integer("eval_step", None, "With --eval_only: the checkpoint's global "
                       "step (default: best when selecting, else latest).")
  flags.DEFINE_string("compilation_cache_dir", DEFAULT_CACHE,
                      "JAX's persistent compilation cache ('' turns it off).")
  flags.DEFINE_bool("executable_cache", True, "Also keep the compiled training "
                    "steps under --compilation_cache_dir/executables: a later run "
                    "with the same config, data and code loads them instead of "
                    "tracing (--noexecutable_cache: off).")
  define_multihost_flags()


def define_multihost_flags() -> None:
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-host: host:port of process 0 (jax.distributed).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's id.")
  flags.DEFINE_bool("distributed", False,
                    "Multi-host: jax.distributed.initialize() detects the cluster "
                    "(Cloud TPU / GKE TPU, SLURM, Open MPI, Kubernetes); any of the "
                    "three flags above overrides what it detects.")


def init_distributed() -> None:
  """jax.distributed.initialize from the multi-host flags (all or none must be set)."""
  given = {name: FLAGS[name].value for name in
           ("coordinator_address", "num_processes", "process_id")}
  if all(v is None for v in given.values()) and not FLAGS.distributed:
    return
  missing = [f"--{k}" for k, v in given.items() if v is None]
  if missing and not FLAGS.distributed:
    raise flags.ValidationError(
        f"multi-host runs need --coordinator_address, --num_processes and "
        f"--process_id together (or --distributed to detect them); missing "
        f"{', '.join(missing)}")
  # CPU processes need a collectives backend (GPU/TPU ignore this setting).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  except ValueError as e:  # e.g. --distributed where JAX detects no cluster
    raise flags.ValidationError(
        f"jax.distributed.initialize: {e} (--distributed found no cluster "
        "environment it knows: pass --coordinator_address, --num_processes and "
        "--process_id)") from None


def enable_compilation_cache(path: str | None, executables: bool = True) -> None:
  """Compiled programs are reused across runs (a warm start skips most compiles);
  with `executables`, the step programs' executables too, under
  <path>/executables (a warm start skips their tracing: common.exec_cache)."""
  from common import exec_cache  # pylint: disable=g-import-not-at-top
  exec_cache.enable(os.path.expanduser(path) if path and executables else None)
  if not path:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def quiet_library_logs() -> None:
  """Orbax and JAX log every checkpoint step at INFO; an explicit -v wins."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def start(argv: list[str]) -> None:
  """Everything a trainer does before `run`: usage, logs, multi-host, cache."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  enable_compilation_cache(FLAGS.compilation_cache_dir, FLAGS.executable_cache)
  init_distributed()


# A trainer stopped by a signal exits preemption.EXIT_STOPPED (75) after its
# line; a second Ctrl-C leaves at once with this line, also 75.
SECOND_INTERRUPT = ("interrupted (a second Ctrl-C): stopped at once, this step not "
                    "saved; re-run the same command to resume from the last "
                    "complete checkpoint")
# Exit status of a command interrupted by Ctrl-C outside a training run
# (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


def trainer_main(method: str) -> Callable[[list[str]], None]:
  """The `main` of nhj-<method>: start-up, then experiment.run on --config."""
  def main(argv):
    start(argv)
    from common import experiment  # after start-up: JAX is configured by now
    # The imported stack is permanent: keep it out of every GC pass of the run
    # (full passes over it cost 0.6-1.0 s in a small run).
    gc.freeze()
    config = FLAGS.config
    if config.method != method:
      raise flags.ValidationError(
          f"--config is a {config.method} config; nhj-{method} needs configs/{method}.py")
    try:
      experiment.run(config, FLAGS.workdir or os.path.join("runs", method),
                     eval_only=FLAGS.eval_only, eval_step=FLAGS.eval_step)
    except preemption.PreemptedError as e:
      # A clean stop before the end: its line, then EXIT_STOPPED (75), so that
      # `nhj-<method> ... && nhj-encode ...` does not go on with a half run.
      if jax.process_index() == 0:
        print(e, file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_STOPPED)
    except KeyboardInterrupt:
      if FLAGS.eval_only:
        raise
      # A second Ctrl-C: leave at once (no wait for a save in flight, no
      # thread joins); the last complete checkpoint stays.
      if jax.process_index() == 0:
        print(SECOND_INTERRUPT, file=sys.stderr, flush=True)
      os._exit(preemption.EXIT_STOPPED)  # pylint: disable=protected-access
  return _signals_recorded(main)


def _signals_recorded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """A trainer's main with its signals recorded from its first line (not with
  --eval_only, a reader): experiment.run's guard takes a signal that arrived
  during start-up over and stops at its first check."""
  def recorded(argv):
    with (contextlib.nullcontext() if FLAGS.eval_only
          else preemption.PreemptionGuard()):
      main(argv)
  return recorded


def as_flag_names(message: str) -> str:
  """'config.lr=0: ...' -> '--config.lr=0: ...' (the flag that sets the key)."""
  return re.sub(r"(?<![\w./-])config\.(?=[a-z_])(?!json)", "--config.", message)


def user_error_line(e: BaseException) -> str:
  """The one line an error of USER_ERRORS is shown as (without `error: `)."""
  if isinstance(e, KeyError) and e.args:
    return str(e.args[0])
  if isinstance(e, OSError) and e.filename is not None:
    what = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
      what = "no space left on device"
    target = f" -> {e.filename2}" if e.filename2 is not None else ""
    name = os.fsdecode(e.filename) if isinstance(e.filename, bytes) else str(e.filename)
    if os.path.islink(name) and not os.path.exists(name):
      what = f"a symbolic link to {os.readlink(name)!r}, which does not exist"
    # An atomic write's temporary file (.<name>.<random>.tmp): name the target.
    temporary = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", os.path.basename(name))
    if temporary:
      return f"{os.path.join(os.path.dirname(name), temporary.group(1))}: {what} (writing it)"
    return f"{e.filename}{target}: {what}"
  if isinstance(e, MemoryError):
    return f"out of memory{': ' + str(e) if str(e) else ''} (the input is too big for this machine)"
  if isinstance(e, json.JSONDecodeError):
    return f"invalid JSON: {e}"
  text = str(e) or type(e).__name__
  return text.splitlines()[0] if text.strip() else type(e).__name__


def _fail(message: str) -> None:
  print(f"error: {as_flag_names(str(message))}", file=sys.stderr)
  sys.exit(2)


def _reporting_override_errors(fn: Callable[[], object]):
  """fn(), with config-override mistakes shown as one line (exit code 2)."""
  try:
    return fn()
  except flags.Error as e:
    # config_flags puts the config file's whole traceback in the message.
    lines = [line for line in str(e).splitlines() if line.strip()]
    _fail(lines[-1] if lines else e)
  except AttributeError as e:  # ml_collections: an override of a key that is not there
    key = re.search(r"[A-Za-z_]\w*", str(e))
    hint = re.search(r'Did you mean "\w+"', str(e))
    _fail(f"--config.{key.group(0) if key else e}: no such key in the config"
          + (f" ({hint.group(0)}?)" if hint else ""))
  except (TypeError, ValueError, KeyError) as e:
    _fail(e)


def _parse_flags(argv: list[str], doc: str | None = None) -> list[str]:
  asked = [a for a in argv[1:] if a.split("=")[0] in HELP_FLAGS]
  if asked or any(a.split("=")[0] in ("--helpfull", "-helpfull") for a in argv[1:]):
    full = not asked
    rest = [a for a in argv if a.split("=")[0] not in HELP_FLAGS + ("--helpfull", "-helpfull")]
    _reporting_override_errors(lambda: FLAGS(rest))
    print(help_text(doc, full=full))
    sys.exit(0)
  return _reporting_override_errors(lambda: FLAGS(argv))


def _launcher_flags() -> list:
  """The flags this launcher defines (launch/*.py), not the libraries'."""
  seen, out = set(), []
  for module, module_flags in FLAGS.flags_by_module_dict().items():
    if "launch" not in module.replace(os.sep, "."):
      continue
    for flag in module_flags:
      if flag.name not in seen:
        seen.add(flag.name)
        out.append(flag)
  return out


def _wrap(text: str, indent: str) -> str:
  return textwrap.fill(text, width=80, initial_indent=indent,
                       subsequent_indent=indent, break_on_hyphens=False)


def help_text(doc: str | None, *, full: bool = False) -> str:
  """--help: the launcher's usage, its flags, and for the trainers the forms
  of --config and every key of the chosen config with its value and doc."""
  parts = [textwrap.dedent(doc or "").strip(), "", "Flags:"]
  for flag in _launcher_flags():
    if flag.name == "config":
      continue
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    parts.append(f"  --{flag.name}{default}")
    parts.append(_wrap(flag.help, "      "))
  if "config" in FLAGS:
    config = FLAGS.config
    method = config.method
    presets = sorted(set(getattr(importlib.import_module(f"configs.{method}"),
                                 "PRESETS", {})) - {"synthetic"})
    parts += ["", "The run config (--config, then its --config.<key> overrides):",
              f"  --config=configs/{method}.py",
              "      the synthetic CPU demo (the default)",
              f"  --config=configs/{method}.py:synthetic:<size>",
              "      synthetic data of a size: tiny, demo, mirflickr25k, nuswide21, "
              "mscoco, iaprtc12",
              f"  --config=configs/{method}.py:<benchmark>",
              f"      the release's values for {', '.join(presets)} (set "
              "--config.data_dir)",
              "  --config=path/to/file.py[:arg]",
              "      any file with get_config(arg)",
              "  --config.<key>=<value>",
              "      a key's value, AFTER --config; tuples as --config.image_hidden=512,512 "
              "or --config.text_hidden=512,",
              "", f"Config keys of this config ({method}; values with the --config and "
              "overrides given, then one line of doc):"]
    for key, value, doc_line in configs.describe(config):
      parts.append(f"  --config.{key}={value}")
      parts.append(f"      {doc_line}")
  parts += ["", "Bad input is one `error:` line, exit status 2 (NHJ_TRACEBACK=1 shows "
            "the trace)."]
  if full:
    parts += ["", "All flags, the libraries' included:", FLAGS.get_help()]
  else:
    parts += ["--helpfull adds the libraries' flags (absl, JAX)."]
  return "\n".join(parts)


def run_main(main: Callable[[list[str]], None]) -> None:
  """app.run(main), bad input reported as one `error:` line (exit code 2)
  instead of a traceback; NHJ_TRACEBACK=1 shows the trace."""
  doc = sys._getframe(1).f_globals.get("__doc__")  # the launcher's usage

  def guarded(argv):
    try:
      quiet_library_logs()
      main(argv)
    except USER_ERRORS as e:
      if os.environ.get("NHJ_TRACEBACK"):
        raise
      _fail(user_error_line(e))
  # Registered first, so it runs last: no collection pass over the whole
  # interpreter at exit (0.4 s; the process is ending anyway).
  atexit.register(gc.freeze)
  app.run(_interruptible(guarded), flags_parser=lambda argv: _parse_flags(argv, doc))


def _interruptible(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """main, with Ctrl-C outside a training run's guard shown as one line
  (exit EXIT_INTERRUPTED) instead of a traceback; NHJ_TRACEBACK=1 shows it."""
  def interruptible(argv):
    try:
      main(argv)
    except KeyboardInterrupt:
      if os.environ.get("NHJ_TRACEBACK"):
        raise
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
  return interruptible
