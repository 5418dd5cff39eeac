# sonostream container: the same image runs `sonostream ...` data commands and
# `accelerate launch` training on a cluster.
#   docker build -t sonostream .
#   docker run --rm -v $PWD/data:/data sonostream sonostream build --csv /data/frames.csv --out /data/shards
#   docker run --rm --gpus all --ipc=host sonostream [accelerate launch args] -m <module> ...
# Pretraining on the 8 GPUs of one node (arguments that do not start with `sonostream` go to
# `accelerate launch`; paths are relative to the WORKDIR /opt/sonostream):
#   docker run --rm --gpus all --ipc=host -v /data:/data sonostream --config_file launch/accelerate/multi_gpu.yaml -m pipeline.pretrain --config launch/configs/pretrain.yaml --data /data/shards --out /data/runs/pt
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sonostream
# DeepSpeed for launch/accelerate/deepspeed_zero*.yaml, installed against the base image's torch
# with no ops compiled ahead (DS_BUILD_OPS=0: the ones ZeRO-2/3 need are built on first use).
# Accelerate's DeepSpeed path imports transformers, hence the pin.
RUN DS_BUILD_OPS=0 python -m pip install --no-build-isolation "deepspeed==0.19.8" \
 && python -m pip install "transformers==5.23.0"
COPY pyproject.toml README.md LICENSE ./
COPY preprocessing ./preprocessing
COPY pipeline ./pipeline
COPY launch ./launch
# DALI for the GPU loader (--loader auto picks it when CUDA is present); cuda120 wheels match
# the CUDA 12.8 base (the dev extras' cuda130 wheel is for this repo's CUDA 13 torch).
RUN python -m pip install "accelerate==1.15.0" "nvidia-dali-cuda120==2.4.0" . \
 && chmod +x launch/entrypoint.sh

ENTRYPOINT ["/opt/sonostream/launch/entrypoint.sh"]
CMD ["sonostream", "--help"]
