"""Training: the one loop (``loop.fit``), the one job skeleton (``job.run_job``), the pretraining
and fine-tuning tasks that fill it, run configs, optimizer, checkpoints and logs (Accelerate;
DeepSpeed through it)."""
