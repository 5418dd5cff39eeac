"""Entry point: ``accelerate launch -m pipeline.pretrain --config FILE --data DIR --out RUN``.

The same flags as ``sonostream pretrain`` (``pipeline.cli.train``), which only parses them and
calls :func:`pipeline.train.pretraining.train`.
"""
import sys


def main(argv=None) -> int:
    from pipeline.cli.train import module_main
    return module_main("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
