"""Segmentation data: which patients are labelled, the frame loader, its state and errors."""
import zlib

import cv2
import numpy as np
import pytest
import torch

from pipeline.data.segloader import labelled_patients
from pipeline.data.segloader import SegDataConfig, SegLoader


def test_label_fraction_is_per_patient_nested_and_stable():
    ids = [f"P{i:03d}" for i in range(40)]
    picks = {f: labelled_patients(ids, f, seed=1) for f in (0.05, 0.1, 0.25, 1.0)}
    assert [len(picks[f]) for f in (0.05, 0.1, 0.25, 1.0)] == [2, 4, 10, 40]
    assert set(picks[0.05]) <= set(picks[0.1]) <= set(picks[0.25]) <= set(ids)
    # adding patients never changes the order of the ones already there
    more = labelled_patients(ids + ["Q1", "Q2"], 1.0, seed=1)
    assert [p for p in more if p in ids] == labelled_patients(ids, 1.0, seed=1)
    assert labelled_patients(ids, 0.01, seed=1) and len(labelled_patients(ids, 0.01, seed=1)) == 1
    assert labelled_patients(ids, 0.25, seed=2) != picks[0.25]
    with pytest.raises(ValueError, match="label fraction"):
        labelled_patients(ids, 0.0)


def test_loader_uses_only_labelled_patients_and_resumes(seg_shards):
    lo = SegLoader(seg_shards, SegDataConfig(label_fraction=0.3, prefetch=0), batch_size=4,
                   unlabelled_batch=4, seed=0)
    chosen = set(lo.sel.patients)
    assert len(chosen) == 1 and lo.sel.total_patients == 3
    t = lo.view
    seen_l, seen_u = set(), set()
    for step in range(12):
        b = lo.batch(step)
        assert b.frames.shape == (4, 1, 64, 64) and b.frames.dtype == torch.uint8
        assert set(b.masks.unique().tolist()) <= {0, 1}
        seen_l |= {t.patient_ids[t.patient[r]] for r in b.rows}
        lab, unl = lo.step_rows(step)
        seen_u |= {t.patient_ids[t.patient[r]] for r in unl}
        assert (t.split[unl] == "train").all()
    assert seen_l == chosen
    assert len(seen_u) == 3        # the unlabelled stream reaches the other patients' frames
    # the state is the step count: a new loader at that state gives the same next batch
    it = iter(lo)
    for _ in range(2):
        next(it)
    state = lo.state_dict()
    want = next(it)
    lo2 = SegLoader(seg_shards, SegDataConfig(label_fraction=0.3, prefetch=0), batch_size=4,
                    unlabelled_batch=4, seed=0)
    lo2.load_state_dict(state)
    got = next(iter(lo2))
    assert np.array_equal(got.rows, want.rows) and torch.equal(got.unlabelled, want.unlabelled)
    other = SegLoader(seg_shards, SegDataConfig(label_fraction=1.0, prefetch=0), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="label_fraction"):
        other.load_state_dict(state)


def test_ranks_take_disjoint_frames(seg_shards):
    los = [SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=3, seed=0, rank=r,
                     world_size=2) for r in range(2)]
    a, b = (lo.step_rows(0)[0] for lo in los)
    whole = SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=6, seed=0).step_rows(0)[0]
    assert np.array_equal(np.r_[a, b], whole)


def test_no_masks_and_bad_masks_are_clear_errors(seg_shards, unlabelled_shards, monkeypatch):
    with pytest.raises(ValueError, match="no frames with masks"):
        SegLoader(unlabelled_shards, SegDataConfig(), batch_size=2)
    lo = SegLoader(seg_shards, SegDataConfig(prefetch=0), batch_size=2)
    grey = np.zeros((64, 64), np.uint8)
    grey[10:20, 10:20] = 128
    png = cv2.imencode(".png", grey)[1].tobytes()
    row = int(lo.sel.labelled[0])
    real = lo.source.read
    monkeypatch.setattr(lo.source, "read", lambda s, o, n: png if o == lo.view.mask_offset[row]
                        else real(s, o, n))
    lo.view.mask_crc[row] = zlib.crc32(png)   # intact bytes (the checksum agrees), bad values
    with pytest.raises(ValueError, match=r"values 0, 128, not only 0/255"):
        lo.decoder.mask(row)
    with pytest.raises(ValueError, match="multiple of 32"):
        SegDataConfig(image_size=48)


def test_label_patients_picks_that_many_nested_and_other_ones_per_seed():
    ids = [f"P{i:03d}" for i in range(40)]
    picks = {n: labelled_patients(ids, 1.0, seed=3, count=n) for n in (1, 2, 4, 8)}
    assert [len(picks[n]) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert set(picks[1]) < set(picks[2]) < set(picks[4]) < set(picks[8]) < set(ids)
    assert labelled_patients(ids, 1.0, seed=3, count=2) == picks[2]            # deterministic
    per_seed = [tuple(labelled_patients(ids, 1.0, seed=s, count=2)) for s in range(5)]
    assert len(set(per_seed)) == 5                                              # other patients
    assert len({p[0] for p in per_seed}) >= 4
    with pytest.raises(ValueError, match="only 40 patients"):
        labelled_patients(ids, 1.0, seed=0, count=41)


@pytest.mark.parametrize("kw, match", [
    (dict(label_patients=2, label_fraction=0.5), "both choose the labelled patients"),
    (dict(label_patients=0), "label_patients must be a whole number >= 1"),
    (dict(label_seed=1.5), "label_seed must be a whole number")])
def test_label_patients_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SegDataConfig(**kw)


def test_loader_draws_label_patients_with_the_label_seed(seg_shards):
    def loader(**kw):
        return SegLoader(seg_shards, SegDataConfig(prefetch=0, **kw), batch_size=4, seed=0)
    ids = loader().sel.patients               # all 3 train patients (label_fraction 1)
    sets = {}
    for s in range(4):
        lo = loader(label_patients=2, label_seed=s)
        sets[s] = lo.sel.patients
        assert sets[s] == labelled_patients(ids, 1.0, seed=s, count=2)
        t = lo.view
        rows = np.concatenate([lo.step_rows(step)[0] for step in range(10)])
        assert {t.patient_ids[t.patient[r]] for r in rows} == set(sets[s])
    assert len({tuple(v) for v in sets.values()}) >= 2      # another seed, other patients
    assert loader(label_patients=2).sel.patients == sets[0]  # unset: the run's seed (0)
    other = next(s for s in sets if sets[s] != sets[0])
    state = loader(label_patients=2, label_seed=0).state_dict()
    with pytest.raises(ValueError, match="label_seed"):
        loader(label_patients=2, label_seed=other).load_state_dict(state)
    with pytest.raises(ValueError, match="only 3 patients have masks; ask for at most"):
        loader(label_patients=4)
