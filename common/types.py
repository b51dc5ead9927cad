"""Type aliases shared by the project's modules (one definition each)."""

from typing import Any

import jax

PyTree = Any  # a nest of dicts/lists/tuples/dataclasses with array leaves
Array = jax.Array
