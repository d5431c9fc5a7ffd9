"""Model x dictionaries -> statistics: corpus windows, extraction, exact accumulators, decoder
tables, checkpoints and merging of stores, and evaluation. Torch lives here; the store
(`scope.store`) is what it writes."""
