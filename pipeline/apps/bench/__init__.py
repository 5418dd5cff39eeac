"""``sonostream bench ...``: measurements side by side in one run (results in BENCHMARKS.md).

    build   shard building frames/s at 1 and 2 workers
    loader  the clip loader against a seed-style loader and raw decode
    step    the fused pretraining step against the seed's three passes
    train   pretraining images/s on real shards against a batch on the device; fp32 vs bf16
    gpu     the prepared check for a borrowed GPU machine (``--dry-run`` on CPU)
    video   segment-video on synthetic sweeps: speed, smoothing, best frame
"""
