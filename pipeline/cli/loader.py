"""``sonostream loader``: stream clip batches from a dataset without training."""
from __future__ import annotations

import json


def add_parsers(sub) -> None:
    lo = sub.add_parser("loader", help="stream clip batches from a dataset and report what came out",
                        description="Run the training loader over a dataset without training: "
                        "batches/s, frames/s, clips per epoch, skipped corrupt members. Checks "
                        "that shards stream (locally or from a URL) before GPU time is spent.")
    lo.add_argument("data", help="dataset folder or URL (http(s)://, s3://... with fsspec)")
    lo.add_argument("--loader", choices=["auto", "cpu", "dali"], default="auto",
                    help="cpu: WebDataset + OpenCV; dali: DALI (GPU decode when CUDA is present); "
                    "auto: dali when CUDA and DALI are available (default)")
    lo.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    lo.add_argument("--clip-len", type=int, default=4, help="frames per clip (default 4)")
    lo.add_argument("--stride", type=int, default=1, help="frames between clip frames (default 1)")
    lo.add_argument("--split", default="train", help="split(s), comma-separated (default train)")
    lo.add_argument("--workers", type=int, help="CPU path: decode worker processes writing "
                    "into a shared ring of batch slots (default: --threads of them; 0: decode "
                    "in threads of this process)")
    lo.add_argument("--threads", type=int, default=2, help="CPU path: decoding cores (default 2)")
    lo.add_argument("--epochs", type=int, default=1, help="epochs to stream (default 1)")
    lo.add_argument("--max-steps", type=int, help="stop after this many batches")
    lo.add_argument("--max-fault-share", type=float, default=0.01,
                    help="share of an epoch's clips that may be skipped for corrupt members "
                    "before it stops with an error (default 0.01; 1: never stop)")
    lo.add_argument("--seed", type=int, default=0, help="placement seed (default 0)")
    lo.add_argument("--cache-dir", help="where remote shards are cached (default ~/.cache/sonostream)")
    lo.add_argument("--cache-limit-gb", type=float, help="evict least recently used cached shards "
                    "beyond this size (default: no limit)")
    lo.add_argument("--shard-url", help="shard URL template with {shard}, e.g. "
                    "'pipe:aws s3 cp s3://b/ds/shards/{shard} -'")


def cmd_loader(args) -> int:
    import time

    import torch

    from pipeline.data import ClipLoader, LoaderConfig
    cfg = LoaderConfig(batch_size=args.batch_size, clip_len=args.clip_len, stride=args.stride,
                       splits=tuple(args.split.split(",")), num_workers=args.workers,
                       decode_threads=args.threads, loader=args.loader,
                       max_fault_share=args.max_fault_share)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = ClipLoader(args.data, cfg, seed=args.seed, device=device, cache_dir=args.cache_dir,
                        shard_url=args.shard_url, cache_limit_gb=args.cache_limit_gb)
    print(json.dumps(loader.describe()))
    steps = frames = 0
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for b in loader:
            steps += 1
            frames += b.num_images
            if args.max_steps and steps >= args.max_steps:
                break
        if args.max_steps and steps >= args.max_steps:
            break
    dt = time.perf_counter() - t0
    print(f"{steps} batches, {frames} frames in {dt:.1f}s ({frames / dt if dt else 0:.0f} frames/s, "
          f"{args.loader} -> {loader.kind} on {device}); {len(loader.faults)} corrupt member(s) skipped")
    for epoch, shard, key, reason in loader.faults[:20]:
        print(f"  epoch {epoch}: {shard} {key}: {reason}")
    print("state: " + json.dumps(loader.state_dict()))
    return 0


COMMANDS = {"loader": cmd_loader}
