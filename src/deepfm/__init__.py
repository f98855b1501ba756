"""deepfm: reproducible CTR / top-K recommendation models on MovieLens, driven by DVC."""

__version__ = "0.1.0"
