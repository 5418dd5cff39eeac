"""The loader on a CUDA GPU (``gpu`` marker; skipped where there is none): DALI's mixed decode
gives the CPU path's batches within JPEG rounding, on the device; a step with no clip left is an
empty batch there too (the placeholder frame decoded on the GPU and dropped); the CPU path hands
its batches to the device. ``sonostream bench gpu`` runs these first on a lent GPU machine."""
import shutil

import pytest
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.dali import dali_available

from factories import corrupt_members

DEVICE = "cuda"
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")


def cfg(**kw):
    base = dict(batch_size=3, clip_len=3, num_workers=0, shuffle_window=5, loader="cpu",
                max_fault_share=1.0)
    return LoaderConfig(**{**base, **kw})


def assert_same_batches(cpu, gpu):
    """Labels and masks identical; frames from two JPEG decoders within rounding."""
    assert [b.step for b in cpu] == [b.step for b in gpu] and len(cpu) > 0
    for a, b in zip(cpu, gpu):
        assert b.frames.device.type == torch.device(DEVICE).type
        assert b.mir_patches.device.type == torch.device(DEVICE).type
        assert a.structure() == b.structure()
        for name in ("position", "io_perm", "io_label", "pm_a", "pm_b", "pm_label", "mir_mask"):
            assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name
        assert a.frames.shape == b.frames.shape and a.frames.dtype == b.frames.dtype
        if a.batch_size:
            diff = (a.frames.cpu().float() - b.frames.cpu().float()).abs()
            assert diff.mean() < 1.0 and diff.max() <= 16, (float(diff.mean()), float(diff.max()))


@needs_dali
def test_dali_mixed_decode_gives_the_cpu_paths_batches_on_the_gpu(dataset):
    cpu = list(ClipLoader(dataset, cfg(), seed=9))
    gpu = list(ClipLoader(dataset, cfg(loader="dali"), seed=9, device=DEVICE))
    assert_same_batches(cpu, gpu)


@needs_dali
def test_an_empty_step_on_the_gpu_decoder_keeps_the_step_count(dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    corrupt_members(ds, ClipLoader(ds, cfg(), seed=0).plan().clip_rows(1)[:, 0])
    cpu = list(ClipLoader(ds, cfg(), seed=0))
    gpu = list(ClipLoader(ds, cfg(loader="dali"), seed=0, device=DEVICE))
    assert gpu[1].batch_size == 0 and gpu[1].frames.shape[0] == 0 and len(gpu[1].faults) == 3
    assert_same_batches(cpu, gpu)


def test_the_cpu_path_hands_its_batches_to_the_gpu(dataset):
    cpu = list(ClipLoader(dataset, cfg(), seed=3))
    gpu = list(ClipLoader(dataset, cfg(), seed=3, device=DEVICE))
    assert_same_batches(cpu, gpu)
    assert all(torch.equal(a.frames, b.frames.cpu()) for a, b in zip(cpu, gpu))   # same decoder


def test_the_cpu_path_resizes_each_batch_on_the_gpu(dataset):
    """resize auto on a GPU = batch: decoded at the stored 32 px, resized to 24 on the device;
    the same frames as the CPU's batch resize, within the rounding of torch's two kernels."""
    cpu = list(ClipLoader(dataset, cfg(image_size=24, resize="batch"), seed=3))
    on_gpu = ClipLoader(dataset, cfg(image_size=24), seed=3, device=DEVICE)
    assert on_gpu.resize == "batch" and on_gpu.decode_size == (32, 32)
    gpu = list(on_gpu)
    assert [b.step for b in cpu] == [b.step for b in gpu] and len(cpu) > 0
    for a, b in zip(cpu, gpu):
        assert b.frames.device.type == "cuda" and a.frames.shape == b.frames.shape
        assert (a.frames.int() - b.frames.cpu().int()).abs().max() <= 1
