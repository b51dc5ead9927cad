"""The absl side of the launchers: flags, start-up, and one-line errors.

Library code takes a ConfigDict and never reads flags; this module owns the
flags: `--config` (ml_collections config_flags, locked so a typo fails),
`--workdir`, evaluation-only and multi-host flags, and the compilation cache.
Errors raised with `config.<key>` in the message are shown as `--config.<key>`.
"""

from __future__ import annotations

import atexit
import gc
import os
import re
import sys
from typing import Callable

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs

FLAGS = flags.FLAGS
USER_ERRORS = (flags.ValidationError, FileNotFoundError, KeyError, ValueError,
               FloatingPointError, TypeError)
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
    from common import preemption
    try:
      experiment.run(config, FLAGS.workdir or os.path.join("runs", method),
                     eval_only=FLAGS.eval_only, eval_step=FLAGS.eval_step)
    except preemption.PreemptedError as e:  # a clean, resumable stop: exit 0
      if jax.process_index() == 0:
        print(e, file=sys.stderr, flush=True)
  return main


def as_flag_names(message: str) -> str:
  """'config.lr=0: ...' -> '--config.lr=0: ...' (the flag that sets the key)."""
  return re.sub(r"(?<![\w./-])config\.(?=[a-z_])(?!json)", "--config.", message)


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


def _parse_flags(argv: list[str]) -> list[str]:
  return _reporting_override_errors(lambda: FLAGS(argv))


def run_main(main: Callable[[list[str]], None]) -> None:
  """app.run(main), bad input reported as one `error:` line (exit code 2)
  instead of a traceback; NHJ_TRACEBACK=1 shows the trace."""
  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      if os.environ.get("NHJ_TRACEBACK"):
        raise
      _fail(e.args[0] if isinstance(e, KeyError) and e.args else e)
  # Registered first, so it runs last: no collection pass over the whole
  # interpreter at exit (0.4 s; the process is ending anyway).
  atexit.register(gc.freeze)
  app.run(guarded, flags_parser=_parse_flags)
