"""The read side: index.parquet -> task batches, for pretraining (clips) and segmentation (frames).

See README.md in this folder for the flow in a few steps.
"""
from .batch import ClipBatch
from .clips import ClipConfig, VideoTable, epoch_clips, video_table
from .decode import FrameDecoder
from .index import IndexView
from .loader import ClipLoader, LoaderConfig
from .placement import global_order, place, rank_positions, steps_per_epoch, worker_steps
from .segloader import SegBatch, SegDataConfig, SegLoader
from .source import ShardSource, is_url

__all__ = ["ClipBatch", "ClipConfig", "ClipLoader", "FrameDecoder", "IndexView", "LoaderConfig",
           "SegBatch", "SegDataConfig", "SegLoader", "ShardSource", "VideoTable", "epoch_clips",
           "global_order", "is_url", "place", "rank_positions", "steps_per_epoch", "video_table",
           "worker_steps"]
