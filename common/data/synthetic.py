"""Synthetic paired image/text data with benchmark-like shapes (data.md).

Generator (deterministic from `seed`; labels, image view and text view use
separate PCG64 streams, so e.g. changing image_dim leaves the labels alone):

1. Labels. Class prior p_c ∝ (c + 1)^(-class_skew) (class 0 most frequent,
   like MIRFlickr's skew). Label count n_i = min_labels +
   Binomial(max_labels - min_labels, q) with q set so that E[n] = mean_labels;
   the n_i classes are drawn without replacement ∝ p (Gumbel top-k). A
   fraction `empty_fraction` of items (default 0) gets no label at all.
2. Latent. Class embeddings E (C x L), shared item content s_i ~ N(0, σ_s² I).
   Each modality sees each of the item's labels with prob. 1 - label_dropout:
   z_i^m = (ỹ_i^m E) / sqrt(max(1, n_i)) + s_i + σ_m ε_i^m.
3. Image view (dense, nonnegative like ReLU CNN features):
   x_i = ReLU(z_i^img W_img + b), W_img ~ N(0, 1/L), b = image_bias.
4. Text view (sparse bag-of-words counts): word distribution
   π_i = softmax(text_sharpness · z_i^txt W_txt) over text_dim words with its
   own projection W_txt, mixed with a Zipf background word distribution
   (weight text_background), and counts ~ Poisson(words_per_item · π_i).

Splits follow SCBCH: ids 0..q-1 are the query, ids q..q+N_db-1 the database
(query items are not in the database) and the training set is the first
train_size database items (train ⊂ database). Synthetic numbers are never
benchmark results: the returned Splits is named "synthetic:<preset>".
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.data import validation
from common.data.splits import Split, Splits


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Parameters of `make_synthetic` (see the module docstring)."""

  num_classes: int
  image_dim: int
  text_dim: int
  query_size: int
  train_size: int
  database_size: int
  mean_labels: float
  max_labels: int
  min_labels: int = 1
  empty_fraction: float = 0.0
  class_skew: float = 0.8
  latent_dim: int = 64
  shared_noise: float = 0.5
  image_noise: float = 0.6
  text_noise: float = 0.6
  label_dropout: float = 0.15
  image_bias: float = -0.2
  text_sharpness: float = 3.0
  words_per_item: float = 12.0
  text_background: float = 0.3

  def validate(self) -> None:
    """Raises ValueError naming the first impossible parameter."""
    for name in ("num_classes", "image_dim", "text_dim", "query_size",
                 "train_size", "database_size", "max_labels", "latent_dim"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    if self.train_size > self.database_size:
      raise ValueError(
          f"train_size={self.train_size} exceeds database_size="
          f"{self.database_size} (train is a subset of the database).")
    if not 0 <= self.min_labels <= self.max_labels <= self.num_classes:
      raise ValueError(
          f"need 0 <= min_labels={self.min_labels} <= max_labels="
          f"{self.max_labels} <= num_classes={self.num_classes}.")
    if not self.min_labels <= self.mean_labels <= self.max_labels:
      raise ValueError(
          f"mean_labels={self.mean_labels} must lie in [min_labels, "
          f"max_labels] = [{self.min_labels}, {self.max_labels}].")
    for name in ("empty_fraction", "label_dropout", "text_background"):
      value = getattr(self, name)
      if not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be in [0, 1].")
    for name in ("class_skew", "shared_noise", "image_noise", "text_noise",
                 "text_sharpness", "words_per_item"):
      value = getattr(self, name)
      if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be finite and >= 0.")


# Benchmark presets: dims, classes and SCBCH split sizes of the real data;
# mean/max label counts are approximate (real label statistics are the
# user's data). Memory for the float32 features ≈ 4·(q + N_db)·(d_img + d_txt)
# bytes: 0.44 GB mirflickr25k, 3.9 GB nuswide21, 2.1 GB mscoco, 0.56 GB
# iaprtc12.
SYNTHETIC_PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(
        num_classes=8, image_dim=64, text_dim=32, query_size=64,
        train_size=256, database_size=512, mean_labels=2.0, max_labels=4,
        latent_dim=16, words_per_item=8.0),
    "demo": SyntheticConfig(
        num_classes=12, image_dim=512, text_dim=256, query_size=1000,
        train_size=4000, database_size=8000, mean_labels=2.5, max_labels=5,
        latent_dim=32, words_per_item=20.0),
    "mirflickr25k": SyntheticConfig(
        num_classes=24, image_dim=4096, text_dim=1386, query_size=2000,
        train_size=10000, database_size=18015, mean_labels=3.8, max_labels=10),
    "nuswide21": SyntheticConfig(
        num_classes=21, image_dim=4096, text_dim=1000, query_size=2100,
        train_size=10500, database_size=188321, mean_labels=2.0, max_labels=6),
    "mscoco": SyntheticConfig(
        num_classes=80, image_dim=4096, text_dim=300, query_size=5000,
        train_size=10000, database_size=117218, mean_labels=2.9, max_labels=10),
    "iaprtc12": SyntheticConfig(
        num_classes=255, image_dim=4096, text_dim=2912, query_size=2000,
        train_size=10000, database_size=18000, mean_labels=5.7, max_labels=15),
}

# Independent PCG64 streams: SeedSequence([seed, stream]).
_LABELS, _LATENT, _IMAGE, _TEXT = range(4)


def _rng(seed: int, stream: int) -> np.random.Generator:
  return np.random.Generator(np.random.PCG64([seed, stream]))


def synthetic_config(preset: str, **overrides) -> SyntheticConfig:
  """The preset's parameters with `overrides` applied and validated."""
  if preset not in SYNTHETIC_PRESETS:
    raise ValueError(f"Unknown synthetic preset={preset!r}; expected one of "
                     f"{sorted(SYNTHETIC_PRESETS)}.")
  fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown synthetic override(s) {unknown}; valid: "
                     f"{sorted(fields)}.")
  config = dataclasses.replace(SYNTHETIC_PRESETS[preset], **overrides)
  config.validate()
  return config


def _labels(config: SyntheticConfig, num_items: int,
            rng: np.random.Generator) -> np.ndarray:
  """Multi-hot labels with skewed class frequencies and bounded counts."""
  c = config.num_classes
  log_prior = -config.class_skew * np.log(np.arange(1, c + 1))
  spread = config.max_labels - config.min_labels
  q = (config.mean_labels - config.min_labels) / spread if spread else 0.0
  counts = config.min_labels + rng.binomial(spread, q, size=num_items)
  counts[rng.random(num_items) < config.empty_fraction] = 0
  # Gumbel top-k = sampling without replacement proportional to the prior.
  keys = log_prior + rng.gumbel(size=(num_items, c))
  ranks = np.argsort(np.argsort(-keys, axis=1), axis=1)
  return (ranks < counts[:, None]).astype(np.float32)


def _latent(config: SyntheticConfig, labels: np.ndarray, embed: np.ndarray,
            shared: np.ndarray, noise: float,
            rng: np.random.Generator) -> np.ndarray:
  """One modality's label-driven latent: seen labels' embeddings + noise."""
  seen = labels * (rng.random(labels.shape) >= config.label_dropout)
  scale = 1.0 / np.sqrt(np.maximum(labels.sum(axis=1, keepdims=True), 1.0))
  noise_term = noise * rng.standard_normal(shared.shape, dtype=np.float32)
  return (seen @ embed) * scale + shared + noise_term


def _image(config: SyntheticConfig, latent: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
  w = rng.standard_normal((config.latent_dim, config.image_dim),
                          dtype=np.float32) / float(np.sqrt(config.latent_dim))
  x = latent @ w + np.float32(config.image_bias)
  return np.maximum(x, 0.0, out=x)


def _text(config: SyntheticConfig, latent: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
  w = rng.standard_normal((config.latent_dim, config.text_dim),
                          dtype=np.float32) / float(np.sqrt(config.latent_dim))
  logits = config.text_sharpness * (latent @ w)
  logits -= logits.max(axis=1, keepdims=True)
  topic = np.exp(logits)
  topic /= topic.sum(axis=1, keepdims=True)
  background = 1.0 / np.arange(1, config.text_dim + 1)
  background = rng.permutation(background / background.sum())
  words = ((1 - config.text_background) * topic
           + config.text_background * background)
  counts = rng.poisson(config.words_per_item * words)
  return counts.astype(np.float32)


def make_synthetic(preset: str, *, seed: int = 0, **overrides) -> Splits:
  """Generates query/train/database splits of synthetic paired data.

  Args:
    preset: a key of SYNTHETIC_PRESETS (tiny, demo, mirflickr25k, nuswide21,
      mscoco, iaprtc12).
    seed: non-negative integer; the same (preset, overrides, seed) gives the
      same data on any machine.
    **overrides: SyntheticConfig fields to change (sizes, dims, noise, ...).

  Returns:
    Splits named "synthetic:<preset>": float32 nonnegative dense image
    features, float32 bag-of-words counts, float32 0/1 labels, int64 ids
    (query 0..q-1, database q..q+N_db-1, train = the first train_size
    database items).

  Raises:
    ValueError: unknown preset or override, impossible parameters, bad seed.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer.")
  config = synthetic_config(preset, **overrides)
  total = config.query_size + config.database_size
  labels = _labels(config, total, _rng(seed, _LABELS))
  rng = _rng(seed, _LATENT)
  embed = rng.standard_normal((config.num_classes, config.latent_dim),
                              dtype=np.float32)
  shared = config.shared_noise * rng.standard_normal(
      (total, config.latent_dim), dtype=np.float32)
  image_rng, text_rng = _rng(seed, _IMAGE), _rng(seed, _TEXT)
  image = _image(config, _latent(config, labels, embed, shared,
                                 config.image_noise, image_rng), image_rng)
  text = _text(config, _latent(config, labels, embed, shared,
                               config.text_noise, text_rng), text_rng)
  ids = np.arange(total, dtype=np.int64)
  q, n = config.query_size, config.train_size

  def part(lo: int, hi: int) -> Split:
    return Split(image=image[lo:hi], text=text[lo:hi], labels=labels[lo:hi],
                 index=ids[lo:hi])

  splits = Splits(query=part(0, q), train=part(q, q + n),
                  database=part(q, total), name=f"synthetic:{preset}")
  validation.validate_splits(splits)
  return splits
