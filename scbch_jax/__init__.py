"""SCBCH: semantic-consistent bidirectional contrastive hashing (cross-modal)."""

from scbch_jax.cscc import consistency_auc
from scbch_jax.cscc import neighbour_consistency_weights
from scbch_jax.losses import bsch_loss
from scbch_jax.losses import bsch_loss_rows
from scbch_jax.losses import classification_loss
from scbch_jax.losses import label_jaccard
from scbch_jax.losses import label_jaccard_rows
from scbch_jax.losses import quantization_loss
from scbch_jax.model import l2_normalize
from scbch_jax.model import ScbchNet
from scbch_jax.model import to_codes
from scbch_jax.presets import get_preset
from scbch_jax.presets import PRESETS
from scbch_jax.presets import ScbchPreset

__all__ = [
    "PRESETS",
    "ScbchNet",
    "ScbchPreset",
    "bsch_loss",
    "bsch_loss_rows",
    "classification_loss",
    "consistency_auc",
    "get_preset",
    "l2_normalize",
    "label_jaccard",
    "label_jaccard_rows",
    "neighbour_consistency_weights",
    "quantization_loss",
    "to_codes",
]
