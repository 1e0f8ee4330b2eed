"""Datasets, point annotations, the answer ledger and the built-in synthetic data."""
