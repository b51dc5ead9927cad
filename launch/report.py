"""Tables (Markdown, CSV, LaTeX) and plots over a sweep's runs, aggregated over seeds.

  nhj-report runs/ablation [--out=runs/ablation/report]

Reads every <root>/*/config.json with its <method>_final_results.json; see
common/report.py and docs/research.md, "Sweeps and tables".
Missing or failed runs are listed, not fatal.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app
from absl import flags

from launch import cli

_OUT = flags.DEFINE_string(
    "out", None, "Where table.md, table.csv, table.tex, diagnostics.csv and the "
    "PNGs go (default: <root>/report).")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("usage: nhj-report <root> [--out=DIR] (one root directory, "
                         f"got {len(argv) - 1} arguments)")
  from common import report as report_lib  # pylint: disable=g-import-not-at-top
  report = report_lib.write_report(argv[1], _OUT.value)
  print(report_lib.markdown(report))
  print(f"{len(report.runs)} runs in {len(report.groups)} groups; "
        f"{len(report.problems)} missing or failed")
  for name, path in report.paths.items():
    print(f"{name}: {path}")


def cli_main() -> None:
  """Console-script entry point (nhj-report)."""
  cli.run_main(main)


if __name__ == "__main__":
  cli_main()
