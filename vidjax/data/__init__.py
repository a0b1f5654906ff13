"""Data sources, decoding, transforms and the grain input pipeline."""
