"""Checkpoint conversion into vidjax: Hugging Face VideoMAE/TimeSformer/ViViT and official VideoMamba."""
