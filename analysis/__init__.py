"""Sweep analysis from job records (``results.jsonl`` or W&B): DataFrames, the paper's tables, plots, a notebook."""
