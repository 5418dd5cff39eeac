# sonostream container: the same image runs `sonostream ...` data commands and
# `accelerate launch` training on a cluster.
#   docker build -t sonostream .
#   docker run --rm -v $PWD/data:/data sonostream sonostream build --csv /data/frames.csv --out /data/shards
#   docker run --rm --gpus all --ipc=host sonostream [accelerate launch args] -m <module> ...
# Pretraining on the 8 GPUs of one node (arguments that are not a known command go to
# `accelerate launch`, see launch/entrypoint.sh; paths are relative to the WORKDIR /opt/sonostream):
#   docker run --rm --gpus all --ipc=host -v /data:/data sonostream --config_file launch/accelerate/multi_gpu.yaml -m pipeline.pretrain --config launch/configs/pretrain.yaml --data /data/shards --out /data/runs/pt
#
# Versions: every package comes from launch/constraints.txt, the versions `make test` runs on
# (tests/repo/test_install_facts.py checks this file against them): Python 3.11, torch 2.14.1
# +cu130 (CUDA 13.0 in the wheels: the host needs an NVIDIA driver >= 580 and a GPU of compute
# capability >= 7.5), DALI for CUDA 13, DeepSpeed 0.19.8.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sonostream
COPY launch/constraints.txt launch/constraints.txt
# The CUDA 13.0 build of torch, from PyTorch's own index (PyPI's default build may differ).
RUN python -m pip install -c launch/constraints.txt --index-url https://download.pytorch.org/whl/cu130 \
        torch torchvision
# DeepSpeed for launch/accelerate/deepspeed_zero*.yaml, installed against that torch with no ops
# compiled (DS_BUILD_OPS=0). This image has no CUDA compiler (nvcc), so no DeepSpeed op can be
# built in it later either: ZeRO-2/3 with the trainer's torch AdamW need none. A config that asks
# for one (FusedAdam, DeepSpeedCPUAdam for optimizer offload) needs an image with the CUDA toolkit.
# Accelerate's DeepSpeed path imports transformers, hence it too.
RUN python -m pip install -c launch/constraints.txt setuptools wheel \
 && DS_BUILD_OPS=0 python -m pip install --no-build-isolation -c launch/constraints.txt deepspeed transformers
COPY pyproject.toml README.md LICENSE ./
COPY preprocessing ./preprocessing
COPY pipeline ./pipeline
COPY launch ./launch
# The project with DALI (the GPU loader: --loader auto picks it when CUDA is present) and s3://.
RUN python -m pip install -c launch/constraints.txt "nvidia-dali-cuda130" ".[s3]" \
 && chmod +x launch/entrypoint.sh

ENTRYPOINT ["/opt/sonostream/launch/entrypoint.sh"]
CMD ["sonostream", "--help"]
