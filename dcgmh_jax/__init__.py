"""DCGMH: distribution-consistency-guided multi-modal hashing."""
