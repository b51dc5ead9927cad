"""PNG plots of retrieval curves (one line per retrieval direction).

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so
importing this module never changes the caller's matplotlib backend.
"""

from __future__ import annotations

from collections.abc import Mapping
import textwrap

import numpy as np

# matplotlib (~0.45 s to import) is imported by the first plot, not here: a
# process that imports the evaluation code without plotting does not pay it.


def _save(x_by_direction: Mapping[str, np.ndarray],
          y_by_direction: Mapping[str, np.ndarray], path: str, *,
          xlabel: str, ylabel: str, title: str, marker: str = "o",
          legend_title: str = "direction") -> str:
  """Draws one labelled line per direction and writes the PNG to `path`."""
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top
  fig = Figure(figsize=(5, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name in x_by_direction:
    ax.plot(np.asarray(x_by_direction[name], np.float64),
            np.asarray(y_by_direction[name], np.float64), marker=marker,
            markersize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(title=legend_title)
  # Fixed margins for this one size, not tight_layout: that lays the ticks out
  # in an extra pass and doubled the cost of a plot.
  fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12,
                      top=0.91 - 0.05 * min(title.count("\n"), 4))
  fig.savefig(path, format="png")
  return path


def titled(title: str, note: str) -> str:
  """A title with a run label (e.g. "[release_compat: ...]") on the next lines."""
  return f"{title}\n" + "\n".join(textwrap.wrap(note, 64)) if note else title


_titled = titled


def release_compat_note(value, *, labels: bool = False) -> str:
  """How outputs name a run's release quirks (results settings.release_compat).

  value: {name: label} of the active quirks (falsy: off; an older run's
  string: "[release_compat]"). Short form (plot titles, the table):
  "[release_compat: name, name (leaks ground truth)]"; labels=True (the
  terminal): "name (label); name (label)".
  """
  if not value:
    return ""
  if not isinstance(value, Mapping):
    return str(value) if labels else "[release_compat]"
  if labels:
    return "; ".join(f"{name} ({label})" for name, label in value.items())
  names = [f"{name} (leaks ground truth)" if "leaks ground truth" in str(label)
           else name for name, label in value.items()]
  return f"[release_compat: {', '.join(names)}]"


def plot_pr_by_radius(results: Mapping[str, Mapping], path: str, *,
                      note: str = "") -> str:
  """Precision vs recall of items within Hamming radius 0..K."""
  return _save({k: v["pr_by_radius"]["recall"] for k, v in results.items()},
               {k: v["pr_by_radius"]["precision"] for k, v in results.items()},
               path, xlabel="recall", ylabel="precision",
               title=_titled("PR by Hamming radius", note))


def plot_topn_pr(results: Mapping[str, Mapping], path: str, *,
                 note: str = "") -> str:
  """Precision vs recall at the top-N cut-offs."""
  return _save({k: v["topn_curve"]["recall"] for k, v in results.items()},
               {k: v["topn_curve"]["precision"] for k, v in results.items()},
               path, xlabel="recall", ylabel="precision",
               title=_titled("PR at top-N cut-offs", note))


def plot_precision_at_n(results: Mapping[str, Mapping], path: str, *,
                        note: str = "") -> str:
  """Precision@N against N."""
  return _save({k: v["precision_at"]["n"] for k, v in results.items()},
               {k: v["precision_at"]["precision"] for k, v in results.items()},
               path, xlabel="N (top-ranked items)", ylabel="precision@N",
               title=_titled("Precision@N", note))


def plot_epoch_series(series: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str,
                      *, title: str, ylabel: str = "value") -> str:
  """Training diagnostics over epochs: {label: (epochs, values)}, one line each."""
  return _save({k: v[0] for k, v in series.items()},
               {k: v[1] for k, v in series.items()}, path, xlabel="epoch",
               ylabel=ylabel, title=title, legend_title="")
