"""Data, in the order it flows: a dataset's declaration (declaration.py), its files (sources.py
for registered releases, local.py for your own, clicklogs.py for click logs), the canonical
tables (canonical.py, movielens.py), the split with the declared fields encoded on train only
(splitting.py for the top-K protocol, rowsplit.py for the ctr protocol; fields.py, encoders.py,
schema.py), negative sampling and batches (sampling.py, batches.py)."""
