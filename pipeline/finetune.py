"""Entry point: ``accelerate launch -m pipeline.finetune --config FILE --data DIR --out RUN --mode M``.

The same flags as ``sonostream finetune`` (``pipeline.cli.train``), which only parses them and
calls :func:`pipeline.train.finetuning.train`.
"""
import sys


def main(argv=None) -> int:
    from pipeline.cli.train import module_main
    return module_main("finetune", argv)


if __name__ == "__main__":
    sys.exit(main())
