"""SCBCH: semantic-consistent bidirectional contrastive hashing (cross-modal)."""
