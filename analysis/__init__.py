"""Loading and tabulating sweep results (``results.jsonl``) written by :func:`distri.logging.write_result`."""
