#!/usr/bin/env bash
# Container entry point.
#   sonostream ...              the CLI (data commands, evaluate, demo, bench ...)
#   accelerate ... | torchrun ... | deepspeed ... | python ... | bash ... | nvidia-smi ...
#                               run as given (nothing is wrapped twice)
#   anything else               handed to `accelerate launch`, e.g.
#                               --config_file launch/accelerate/multi_gpu.yaml -m pipeline.pretrain ...
#   (no arguments)              `sonostream --help`
set -euo pipefail
case "${1:-}" in
  "") exec sonostream --help ;;
  sonostream|accelerate|torchrun|deepspeed|python|python3|bash|sh|nvidia-smi|env) exec "$@" ;;
  *) exec accelerate launch "$@" ;;
esac
