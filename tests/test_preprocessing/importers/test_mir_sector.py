"""MIR is scored inside the imaged sector: the fan derived from the clip (synthetic fans and a
real Philips DICOM screen, cropped as the importer crops it), and the loss that uses it."""
import numpy as np
import torch

from importer_helpers import dicom_file, fan_mask
from pipeline.data.tasks import sector_mask
from pipeline.objectives import TasksConfig, mir_loss, pretrain_losses
from preprocessing.media import Frames, read_dataset, region
from preprocessing.sector import SectorProbe


def _clip(frames):
    """(K, H, W) uint8 -> (1, K, 1, H, W) tensor, as ClipBatch.frames."""
    return torch.from_numpy(np.stack(frames))[None, :, None]


def test_sector_is_the_fan_lit_in_any_frame_with_black_fluid_inside_it():
    h, w = 64, 64
    fan = fan_mask(h, w)
    rng = np.random.default_rng(0)
    f0 = np.where(fan, rng.integers(20, 255, (h, w)), 0).astype(np.uint8)
    f1 = f0.copy()
    f0[:, : w // 2] = 0                   # frame 0 lights the right half, frame 1 the left
    f1[:, w // 2:] = 0
    yy, xx = np.mgrid[0:h, 0:w]
    fluid = (yy - 40) ** 2 + (xx - 32) ** 2 < 36   # anechoic: black in every frame
    f0[fluid] = f1[fluid] = 0
    s = sector_mask(_clip([f0, f1]), erode=0)[0, 0, 0].numpy()
    assert s.shape == (h, w)
    assert (s == fan).all()               # the union of the frames, fluid filled, nothing else
    eroded = sector_mask(_clip([f0, f1]))[0, 0, 0].numpy()
    assert not eroded[~fan].any() and eroded.sum() < fan.sum()    # the edge pixel goes
    assert eroded[fluid].all()
    assert sector_mask(_clip([np.full((8, 8), 9, np.uint8)])).all()   # no black: all of it


def test_sector_on_a_real_dicom_frame_excludes_the_black_around_the_fan():
    path = dicom_file("OBXXXX1A.dcm")   # Philips CX50 obstetric: fan, text and bars around it
    ds = read_dataset(path)
    frames = list(Frames(ds, path))
    box, _ = region(ds, int(ds.Rows), int(ds.Columns))
    probe = SectorProbe()
    for g, c in frames:
        probe.add(g, c)
    gray, colour = frames[0]
    img = probe.find(box).apply(gray, colour)   # what `import dicom` stores
    s = sector_mask(_clip([img]))[0, 0, 0].numpy()
    h, w = img.shape
    lit = img > 0
    assert not s[~lit].any()                    # no black pixel of this screen is scored
    assert s[lit].mean() > 0.97                 # the fan is (its 1-pixel edge aside)
    assert 0.4 < s.mean() < 0.8                 # a sector, not the whole crop
    assert not s[: h // 4, : w // 8].any() and not s[: h // 4, -w // 8:].any()  # top corners
    assert s[h // 2, w // 2]


def test_mir_loss_counts_hidden_pixels_inside_the_sector_only():
    n, h, w = 2, 16, 16
    target = torch.zeros(n, 1, h, w)
    hidden = torch.ones(n, 1, h, w, dtype=torch.bool)
    sector = torch.zeros(n, 1, h, w, dtype=torch.bool)
    sector[..., 4:12, 4:12] = True
    recon = torch.where(sector, torch.zeros(()), torch.ones(()))   # wrong outside only
    mu = logvar = torch.zeros(n, 4, 2, 2)
    _, rec, _ = mir_loss(recon, target, hidden, mu, logvar, 0.0, sector)
    assert float(rec) == 0.0
    _, rec_all, _ = mir_loss(recon, target, hidden, mu, logvar, 0.0)
    assert abs(float(rec_all) - (1 - 64 / 256)) < 1e-6
    recon2 = recon.clone()
    recon2[..., 8, 8] = 2.0               # one wrong hidden pixel inside, per frame
    _, rec2, _ = mir_loss(recon2, target, hidden, mu, logvar, 0.0, sector)
    assert abs(float(rec2) - n * 4.0 / (n * 64)) < 1e-6
    # pretrain_losses: the sector per clip (B, 1, 1, H, W) covers the clip's K frames.
    out = {"recon": recon, "target": target, "mu": mu, "logvar": logvar}
    logs = pretrain_losses(out, None, hidden.view(1, 2, 1, h, w), TasksConfig(pm=0, io=0), 0,
                           sector=sector[:1].view(1, 1, 1, h, w))
    assert float(logs["mir_rec"]) == 0.0 and float(logs["mir_rec_all"]) > 0.7
    assert abs(float(logs["mir_sector"]) - 0.25) < 1e-6
