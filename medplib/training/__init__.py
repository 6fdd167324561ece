"""Fine-tuning: samples, stages, the training loop (DDP / FSDP), runs over a datastore, the default model recipe."""
