"""Multi-layer pooled features from a backbone, with an on-disk cache."""
