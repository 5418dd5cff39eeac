"""Training: the pretraining loop, its checkpoints, logs and figures (Accelerate; DeepSpeed through it)."""
