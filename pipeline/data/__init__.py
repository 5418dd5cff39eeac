"""Streaming clip loader: placement, clips, task labels, and the CPU (WebDataset) and DALI paths."""
from .batch import ClipBatch
from .clips import ClipConfig, VideoTable, epoch_clips, video_table
from .loader import ClipLoader, LoaderConfig
from .placement import global_order, place, rank_positions, steps_per_epoch, worker_steps

__all__ = ["ClipBatch", "ClipConfig", "ClipLoader", "LoaderConfig", "VideoTable", "epoch_clips",
           "global_order", "place", "rank_positions", "steps_per_epoch", "video_table",
           "worker_steps"]
