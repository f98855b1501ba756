"""Data: dataset sources, parsing to canonical tables, the split, negative sampling, batches."""
