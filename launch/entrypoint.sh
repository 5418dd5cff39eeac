#!/usr/bin/env bash
# Container entry point: `sonostream ...` runs the CLI; anything else is handed to
# `accelerate launch` (e.g. `--num_processes 8 -m <module> --config ...`).
set -euo pipefail
case "${1:-}" in
  sonostream|python|bash|sh) exec "$@" ;;
  "") exec sonostream --help ;;
  *) exec accelerate launch "$@" ;;
esac
