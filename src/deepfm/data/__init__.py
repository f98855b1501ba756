"""Data, in the order it flows: a dataset's declaration (declaration.py), its files (sources.py
for registered releases, local.py for your own), the canonical tables (canonical.py,
movielens.py), the protocol's split with the declared fields encoded (splitting.py,
encoders.py, schema.py), negative sampling and batches (sampling.py, batches.py)."""
