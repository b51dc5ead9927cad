"""Console entry points: absl app.run with bad input reported as one line."""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app
from absl import flags

USER_ERRORS = (flags.ValidationError, FileNotFoundError, KeyError, ValueError,
               FloatingPointError)


def run_main(main: Callable[[list[str]], None]) -> None:
  """app.run(main), printing bad input as one clear line (exit code 2) instead of
  a traceback; set NHJ_TRACEBACK=1 to see the full trace."""
  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      if os.environ.get("NHJ_TRACEBACK"):
        raise
      message = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"error: {message}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)
