"""Applications built on the pipeline: the end-to-end demo and its report, experiments that
train and evaluate many runs, and the benchmarks (``bench/``). Nothing below imports them."""
