"""The in-memory form every reader and generator returns."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a paired image/text data set; row i of every array is item i.

  Attributes:
    image: (N, d_img) float32 image features.
    text: (N, d_txt) float32 text features.
    labels: (N, C) float32 multi-hot labels with values in {0, 1}.
    index: (N,) int64 stable item id: the item's row in the source data set's
      own order (so the same item has the same id in every split it is in).
  """

  image: np.ndarray
  text: np.ndarray
  labels: np.ndarray
  index: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return int(self.labels.shape[1])


@dataclasses.dataclass(frozen=True)
class Splits:
  """query / train / database splits of one data set.

  `name` says where the data came from (benchmark name or "synthetic:<preset>"),
  so that no synthetic number is ever mistaken for a benchmark result.
  """

  query: Split
  train: Split
  database: Split
  name: str = "unnamed"

  @property
  def num_classes(self) -> int:
    return self.train.num_classes

  @property
  def image_dim(self) -> int:
    return int(self.train.image.shape[1])

  @property
  def text_dim(self) -> int:
    return int(self.train.text.shape[1])
