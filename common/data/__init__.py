"""Data: benchmark readers, label noise, synthetic data, TFDS builder, input pipeline."""

from common.data.splits import Split, Splits
