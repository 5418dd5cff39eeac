"""The CPU path's speed-ups give the same batches: recycled batch arrays never overwrite a batch
the training loop still holds, and the two resize modes give their documented frames."""
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.data import ClipLoader, LoaderConfig
from preprocessing.format import SonostreamError


def cfg(**kw):
    base = dict(batch_size=3, clip_len=3, num_workers=0, shuffle_window=5, loader="cpu")
    return LoaderConfig(**{**base, **kw})


def stored_frames(dataset, loader, batch):
    """[B, K, H, W] uint8: the batch's frames decoded from their indexed bytes, at stored size."""
    index = pq.read_table(dataset / "index.parquet").to_pandas()
    out = []
    for i in range(batch.batch_size):
        rows = index[index.video_key == loader.table.video_keys[int(batch.video[i])]]
        rows = rows.set_index("frame_index")
        clip = []
        for fi in batch.frame_index[i].tolist():
            r = rows.loc[fi]
            data = (dataset / "shards" / r.shard).read_bytes()[r.image_offset:r.image_offset + r.image_size]
            clip.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
        out.append(np.stack(clip))
    return np.stack(out)


def test_batches_held_by_the_loop_keep_their_frames(dataset):
    loader = ClipLoader(dataset, cfg(decode_threads=2, prefetch=3), seed=2)
    held = list(loader)                      # every batch of the epoch alive at once
    assert len(held) > 8                     # more than the arrays the decoder keeps
    for b in held:
        assert np.array_equal(b.frames[:, :, 0].numpy(), stored_frames(dataset, loader, b))


def test_a_released_batch_array_is_reused(dataset):
    loader = ClipLoader(dataset, cfg(decode_threads=2, prefetch=0), seed=2)
    for _ in loader:                          # each batch dropped before the next is decoded
        pass
    assert len(loader.decoder._arrays) <= 2


def test_resize_batch_is_antialiased_bilinear_of_the_stored_frames(dataset):
    loader = ClipLoader(dataset, cfg(image_size=24, resize="batch"), seed=5)
    assert loader.decode_size == (32, 32) and loader.image_size == (24, 24)
    n = 0
    for b in loader:
        assert b.frames.shape[2:] == (1, 24, 24) and b.frames.dtype == torch.uint8
        full = torch.from_numpy(stored_frames(dataset, loader, b)).reshape(-1, 1, 32, 32)
        want = F.interpolate(full, size=(24, 24), mode="bilinear", antialias=True)
        assert torch.equal(b.frames.reshape(-1, 1, 24, 24), want)
        n += 1
    assert n > 0


@pytest.mark.parametrize("resize", ["frame", "auto"])   # auto on the CPU: frame, as before
def test_resize_frame_is_the_former_per_frame_inter_area(dataset, resize):
    loader = ClipLoader(dataset, cfg(image_size=24, resize=resize), seed=5)
    assert loader.resize == "frame" and loader.decode_size == (24, 24)
    b = next(iter(loader))
    full = stored_frames(dataset, loader, b)
    want = np.stack([[cv2.resize(f, (24, 24), interpolation=cv2.INTER_AREA) for f in clip]
                     for clip in full])
    assert np.array_equal(b.frames[:, :, 0].numpy(), want)


def test_both_resizes_give_the_same_labels_and_close_frames(dataset):
    a = list(ClipLoader(dataset, cfg(image_size=24, resize="batch"), seed=3))
    b = list(ClipLoader(dataset, cfg(image_size=24, resize="frame"), seed=3))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for name in ("position", "io_perm", "io_label", "pm_a", "pm_b", "pm_label", "mir_mask"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
        diff = (x.frames.float() - y.frames.float()).abs()
        assert diff.mean() < 8.0     # two downscaling filters of random-noise frames


def test_a_bad_resize_setting_names_the_choices():
    with pytest.raises(SonostreamError, match="loader.resize must be one of"):
        LoaderConfig(resize="area")


def test_simplejpeg_decodes_the_frames_of_opencv_into_the_batch(dataset):
    pytest.importorskip("simplejpeg")
    fast = ClipLoader(dataset, cfg(decode_threads=1, prefetch=0), seed=6)
    assert fast.decoder.direct
    slow = ClipLoader(dataset, cfg(decode_threads=1, prefetch=0), seed=6)
    slow.decoder.direct = False
    n = 0
    for a, b in zip(fast, slow):
        assert torch.equal(a.frames, b.frames)
        assert np.array_equal(a.frames[:, :, 0].numpy(), stored_frames(dataset, fast, a))
        n += 1
    assert n > 0 and fast.decoder.direct       # the first frame's check passed


def test_a_direct_decoder_unlike_opencv_is_dropped_after_its_first_frame(dataset, monkeypatch):
    """A stand-in for simplejpeg that gets pixels wrong: the check on the first frame turns it
    off, and every batch (that first frame included) is OpenCV's."""
    from pipeline.data import decode

    class Wrong:
        @staticmethod
        def decode_jpeg(data, colorspace, buffer):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            buffer[:] = 255 - img
            return buffer[..., None]

    monkeypatch.setattr(decode, "_SJ", Wrong)
    loader = ClipLoader(dataset, cfg(decode_threads=1, prefetch=0), seed=6)
    assert loader.decoder.direct
    for b in loader:
        assert np.array_equal(b.frames[:, :, 0].numpy(), stored_frames(dataset, loader, b))
    assert loader.decoder.direct is False
