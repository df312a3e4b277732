"""Model loading, per-family specs, scoring heads and the batched scorer."""
