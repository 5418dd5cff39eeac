# sonostream container: the same image runs `sonostream ...` data commands and
# `accelerate launch` training on a cluster.
#   docker build -t sonostream .
#   docker run --rm -v $PWD/data:/data sonostream sonostream build --csv /data/frames.csv --out /data/shards
#   docker run --rm --gpus all --ipc=host sonostream [accelerate launch args] -m <module> ...
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/sonostream
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
