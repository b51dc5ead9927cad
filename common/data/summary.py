"""Human-readable summaries of a data set and of a label-noise draw."""

from __future__ import annotations

from common.data import noise
from common.data.splits import Splits


def split_table(splits: Splits) -> str:
  """One row per split: items, dims, classes, mean labels/item, empty rows."""
  header = (f"{'split':<9} {'items':>8} {'d_img':>6} {'d_txt':>6} "
            f"{'classes':>7} {'labels/item':>11} {'empty rows':>10}")
  lines = [f"dataset: {splits.name}", header, "-" * len(header)]
  for part in ("query", "train", "database"):
    s = getattr(splits, part)
    counts = s.labels.sum(axis=1)
    mean = float(counts.mean()) if len(s) else 0.0
    lines.append(
        f"{part:<9} {len(s):>8} {s.image.shape[1]:>6} {s.text.shape[1]:>6} "
        f"{s.num_classes:>7} {mean:>11.3f} {int((counts == 0).sum()):>10}")
  return "\n".join(lines)


def noise_table(splits: Splits, *, protocol: str, rate: float,
                seed: int) -> str:
  """Applies `corrupt_labels` to the training labels and reports the damage."""
  noisy, _ = noise.corrupt_labels(splits.train.labels, rate, protocol=protocol,
                                  seed=seed)
  st = noise.noise_stats(splits.train.labels, noisy)
  return "\n".join([
      f"label noise on train: protocol={protocol} rate={rate} seed={seed}",
      f"  corrupted items : {st['corrupted_items']} / {st['items']} "
      f"({st['corrupted_fraction']:.4f})",
      f"  changed bits    : {st['changed_bits']} (added {st['added_labels']}, "
      f"removed {st['removed_labels']})",
      f"  labels/item     : {st['mean_labels_clean']:.3f} clean -> "
      f"{st['mean_labels_noisy']:.3f} noisy",
      f"  empty rows      : {st['empty_rows_noisy']} after noise",
  ])
