"""Runtime and data shared by both hashing methods (scbch_jax, dcgmh_jax)."""
