"""Videos → training shards (preprocess) and shards → batches (loading)."""
