"""Files of a dataset for readers other than sonostream: DALI index files, wids shard lists.

``sonostream build`` writes both beside the shards and ``sonostream verify`` checks them:

* ``shards/{split}-NNNNNN.idx``: the shard's WebDataset index for NVIDIA DALI's
  ``fn.readers.webdataset(paths=..., index_paths=...)``, byte for byte what DALI's ``wds2idx``
  writes for the tar: a line ``v1.2 <samples>``, then one line per sample (members sharing a
  key, in tar order) of ``<ext> <data offset> <size> <member name>`` per member, joined by
  spaces. (Member names hold no spaces: keys are ``[A-Za-z0-9_-]`` and ``/``.)
* ``{split}.wids.json``: the split's shards for ``wids.ShardListDataset`` (wids' shard index
  format: ``wids_version`` 1, ``shardlist`` of ``url`` + ``nsamples``), urls relative to the
  JSON's folder (wids resolves them against the URL it was given, local or remote). Written for
  each split that has shards (wids refuses an empty shard list).
"""
from __future__ import annotations

from typing import Iterable

from .contract import SHARDS_DIR, SPLITS, split_key

__all__ = ["DALI_INDEX_VERSION", "WIDS_SUFFIX", "dali_index_name", "dali_index_text",
           "wids_name", "wids_shardlist"]

DALI_INDEX_VERSION = "v1.2"
WIDS_SUFFIX = ".wids.json"


def dali_index_name(shard: str) -> str:
    """``train-000001.tar`` -> ``train-000001.idx`` (the name ``wds2idx`` gives it)."""
    return f"{shard.partition('.')[0]}.idx"


def dali_index_text(members: Iterable[tuple[str, int, int]]) -> str:
    """The ``.idx`` text of a tar whose regular files are ``members`` (name, data offset, size)
    in tar order."""
    samples: list[list[str]] = []
    last = None
    for name, offset, size in members:
        key, ext = split_key(name)
        if key != last:
            samples.append([])
            last = key
        samples[-1].append(f"{ext} {offset} {size} {name}")
    return "".join([f"{DALI_INDEX_VERSION} {len(samples)}\n"]
                   + [" ".join(parts) + "\n" for parts in samples])


def wids_name(split: str) -> str:
    return f"{split}{WIDS_SUFFIX}"


def wids_shardlist(split: str, shards: list[dict]) -> dict:
    """The wids shard list of ``split`` from the manifest's shard records."""
    assert split in SPLITS, split
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1,
            "shardlist": [{"url": f"{SHARDS_DIR}/{r['name']}", "nsamples": r["frames"],
                           "filesize": r["bytes"]} for r in shards if r["split"] == split]}
