"""Building models and reading / writing checkpoints: the project layout, deltas, FSDP shards, the official release."""
