"""``sonostream probe``: what a frozen encoder's features know, measured by linear probes, beside a
random-init encoder of the same architecture and seed.

Features: the global average of the encoder's last feature map (layer4), one vector per frame,
from frames resized to the encoder's pretraining size. Each probe is a multinomial logistic
regression on features standardised with the train split's mean and std (L2-regularised,
full-batch L-BFGS from zero weights: convex, so the fit has no randomness), fitted on the
**train** split only and scored on the chosen split (val or test):

    plane_acc                       plane (fmt.PLANES) of frames with a plane label; accuracy
    head_acc                        a head in the mask, on frames with a mask; accuracy
    standard_plane_bacc             within +-NEAR_STANDARD frames of the labelled standard plane,
                                    on frames of videos that have one (head sweeps); balanced
                                    accuracy (mean of the two recalls; its fit weighs the two
                                    classes equally)
    patient_retrieval_other_video   for each frame of a patient with >= 2 videos in the split,
                                    its nearest frame by cosine (features centred on the train
                                    mean) among the split's frames of OTHER videos: the share
                                    that belongs to the same patient (no fit)

A probe that cannot be scored (no labels of that kind, or a single class in train) is None with
the reason under ``skipped``. ``chance`` gives what a constant (or random) guess scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data import FrameDecoder, IndexView, ShardSource
from pipeline.models.encoder import ResNetEncoder, load_encoder_and_meta
from pipeline.models.inputs import normalize, to_unit
from pipeline.train.provenance import absolute, dataset_ref
from preprocessing.format import SonostreamError
from preprocessing.progress import progress_bar

PROBE_KEYS = ("plane_acc", "head_acc", "standard_plane_bacc", "patient_retrieval_other_video")
TITLES = {"plane_acc": "plane acc.", "head_acc": "head present acc.",
          "standard_plane_bacc": "near standard plane (bal. acc.)",
          "patient_retrieval_other_video": "same patient, other video (retrieval)"}
NEAR_STANDARD = 2      # frames either side of the labelled standard plane
L2 = 1e-3              # weight decay of every probe (on standardised features)
ITERATIONS = 200       # L-BFGS iterations of a fit


@dataclass
class Split:
    """One split's features and labels; -1 where a frame has no label of that kind."""
    x: np.ndarray          # [N, D] float32 features
    plane: np.ndarray      # [N] index into fmt.PLANES
    head: np.ndarray       # [N] 1 head in the mask, 0 empty mask
    near: np.ndarray       # [N] 1 within NEAR_STANDARD frames of the standard plane, 0 farther
    patient: np.ndarray    # [N] patient code (IndexView)
    video: np.ndarray      # [N] video code


# -- encoders ------------------------------------------------------------------------------------
def random_encoder(arch: str, in_chans: int = 1, seed: int = 0) -> ResNetEncoder:
    """A fresh, randomly initialised encoder: ``torch.manual_seed(seed)`` first, so the same
    (arch, seed) gives the same weights; the global RNG is restored after."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return ResNetEncoder(arch, in_chans).eval()
    finally:
        torch.random.set_rng_state(state)


def encoders(encoder, arch: str | None = None, seed: int = 0):
    """(encoder, its random-init baseline, metadata). ``encoder`` is an ``encoder.pt`` path or
    "random" (then ``arch`` is needed and the two are equal networks, built separately)."""
    if str(encoder) == "random":
        if arch is None:
            raise SonostreamError("--encoder random needs --arch (tiny, resnet18, ...): the "
                                  "architecture of the random-init network")
        meta = {"arch": arch, "in_chans": 1}
        return random_encoder(arch, 1, seed), random_encoder(arch, 1, seed), meta
    enc, meta = load_encoder_and_meta(encoder, arch)
    return enc, random_encoder(meta["arch"], meta["in_chans"], seed), meta


@torch.no_grad()
def features(encoder: ResNetEncoder, frames: np.ndarray) -> np.ndarray:
    """[N, H, W] uint8 frames -> [N, D] float32: global average of the last feature map."""
    x = normalize(to_unit(torch.from_numpy(frames)[:, None]))
    return encoder(x).mean(dim=(2, 3)).numpy().astype(np.float32)


# -- labels --------------------------------------------------------------------------------------
def near_standard(view: IndexView, rows: np.ndarray, within: int = NEAR_STANDARD) -> np.ndarray:
    """[len(rows)] 1 within ``within`` frames of its video's labelled standard plane, 0 farther,
    -1 in a video with none labelled (or an index without ``is_standard_plane``)."""
    out = np.full(len(rows), -1, np.int64)
    col = view.column("is_standard_plane")
    if col is None:
        return out
    std = np.array([v is not None and bool(v) for v in col[rows]])
    frame, codes = view.frame_index[rows], view.video[rows]
    order = np.argsort(codes, kind="stable")
    _, starts = np.unique(codes[order], return_index=True)
    for here in np.split(order, starts[1:]):   # the rows of one video
        anchors = frame[here][std[here]]
        if len(anchors):
            gap = np.abs(frame[here][:, None] - anchors[None, :]).min(axis=1)
            out[here] = (gap <= within).astype(np.int64)
    return out


def extract(nets, source: ShardSource, view: IndexView, rows: np.ndarray, size: tuple[int, int],
            batch_size: int = 64, quiet: bool = False, desc: str = "probe"):
    """One :class:`Split` per network in ``nets``, decoding each frame (and mask) once."""
    decoder = FrameDecoder(source, view, threads=2)
    feats = [[] for _ in nets]
    head = np.full(len(rows), -1, np.int64)
    has_mask = view.has_mask
    bar = progress_bar(len(rows), desc, "frame", enabled=not quiet)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size].tolist()
        frames = np.stack(decoder.map(lambda r: decoder.image(r, size), chunk))
        for f, net in zip(feats, nets):
            f.append(features(net, frames))
        masked = [r for r in chunk if has_mask[r]]
        found = dict(zip(masked, decoder.map(lambda r: bool(decoder.mask(r).any()), masked)))
        head[start:start + len(chunk)] = [int(found[r]) if r in found else -1 for r in chunk]
        bar.update(len(chunk))
    bar.close()
    labels = dict(plane=view.plane[rows], head=head, near=near_standard(view, rows),
                  patient=view.patient[rows], video=view.video[rows])
    return [Split(np.concatenate(f), **labels) for f in feats]


# -- probes --------------------------------------------------------------------------------------
def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, balanced: bool = False):
    """Logistic regression on [N, D] ``x``, labels ``y`` in 0..classes-1; returns a function
    [M, D] -> [M] predicted labels. Deterministic: standardised inputs, zero start, L-BFGS."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).double()
    yt = torch.from_numpy(y).long()
    counts = torch.bincount(yt, minlength=classes).double()
    weight = (counts.sum() / (classes * counts.clamp(min=1))) if balanced else None
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=ITERATIONS, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=weight) + L2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda z: (torch.from_numpy((z - mean) / std).double() @ w + b).argmax(1).numpy()


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in ``y`` of the share of them predicted right."""
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def linear_probe(train_x, train_y, test_x, test_y, balanced: bool = False):
    """(score, None) of a probe fitted on the train rows with a label (>= 0) and scored on the
    test rows with one: accuracy, or balanced accuracy when ``balanced``; (None, reason) when it
    cannot be scored."""
    tr, te = train_y >= 0, test_y >= 0
    if not te.any():
        return None, "no labelled frames in the scored split"
    if len(np.unique(train_y[tr])) < 2:
        return None, "the train split holds fewer than 2 classes"
    classes = int(max(train_y[tr].max(), test_y[te].max())) + 1
    pred = fit_linear(train_x[tr], train_y[tr], classes, balanced)(test_x[te])
    y = test_y[te]
    return (balanced_accuracy(y, pred) if balanced else float((pred == y).mean())), None


def retrieval_queries(patient: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Frames whose patient has >= 2 videos among these frames."""
    videos = {p: len(np.unique(video[patient == p])) for p in np.unique(patient)}
    return np.flatnonzero([videos[p] >= 2 for p in patient])


def retrieval_other_video(x: np.ndarray, patient: np.ndarray, video: np.ndarray,
                          centre: np.ndarray | None = None, chunk: int = 1024):
    """(share of queries whose cosine-nearest frame of another video is the same patient,
    chance of that share, queries); (None, None, 0) without queries."""
    queries = retrieval_queries(patient, video)
    if len(queries) == 0:
        return None, None, 0
    z = x - (centre if centre is not None else 0)
    z = torch.from_numpy(z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)).double()
    hits, chance = 0, 0.0
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sim = z[q] @ z.T
        other = torch.from_numpy(video[None, :] != video[q][:, None])
        sim = sim.masked_fill(~other, float("-inf"))
        nearest = sim.argmax(1).numpy()
        hits += int((patient[nearest] == patient[q]).sum())
        same = (patient[None, :] == patient[q][:, None]) & other.numpy()
        chance += float((same.sum(1) / other.numpy().sum(1)).sum())
    return hits / len(queries), chance / len(queries), len(queries)


def score(train: Split, test: Split) -> tuple[dict, dict]:
    """(the four figures, reasons for any that are None) of one encoder's features."""
    out, skipped = {}, {}
    for key, attr, balanced in (("plane_acc", "plane", False), ("head_acc", "head", False),
                                ("standard_plane_bacc", "near", True)):
        out[key], why = linear_probe(train.x, getattr(train, attr), test.x, getattr(test, attr),
                                     balanced)
        if why:
            skipped[key] = why
    out["patient_retrieval_other_video"], _, n = retrieval_other_video(
        test.x, test.patient, test.video, centre=train.x.mean(axis=0))
    if n == 0:
        skipped["patient_retrieval_other_video"] = "no patient has 2 videos in the scored split"
    return out, skipped


def chance_and_counts(train: Split, test: Split) -> tuple[dict, dict]:
    """What a constant guess scores (the scored split's majority share; 0.5 balanced accuracy;
    the retrieval share of a random other-video frame), and how many frames each probe used."""
    def majority(y):
        y = y[y >= 0]
        return float(np.bincount(y).max() / len(y)) if len(y) else None
    _, chance, queries = retrieval_other_video(test.x, test.patient, test.video)
    chance_of = {"plane_acc": majority(test.plane), "head_acc": majority(test.head),
                 "standard_plane_bacc": 0.5 if (test.near >= 0).any() else None,
                 "patient_retrieval_other_video": chance}
    counts = {"train_frames": len(train.x), "frames": len(test.x),
              "plane_frames": int((test.plane >= 0).sum()), "mask_frames": int((test.head >= 0).sum()),
              "head_frames": int((test.head == 1).sum()),
              "standard_plane_video_frames": int((test.near >= 0).sum()),
              "near_standard_frames": int((test.near == 1).sum()),
              "retrieval_queries": queries,
              "retrieval_patients": len(np.unique(test.patient[retrieval_queries(test.patient, test.video)]))
              if queries else 0}
    return chance_of, counts


def probe(encoder, data, split: str = "test", *, arch: str | None = None, seed: int = 0,
          image_size: int | None = None, batch_size: int = 64, quiet: bool = False) -> dict:
    """Linear probes of ``encoder`` (an encoder.pt or "random") and of a random-init encoder of
    the same arch and ``seed``, fitted on the train split of ``data`` and scored on ``split``."""
    if split == "train":
        raise SonostreamError("--split train: the probes are fitted on the train split; score "
                              "them on val or test")
    net, baseline, meta = encoders(encoder, arch, seed)
    if net is baseline:
        raise AssertionError("the random baseline must be its own network")
    source = ShardSource(data)
    view = IndexView(source.index)
    rows = {s: view.rows_of(s) for s in ("train", split)}
    for s, r in rows.items():
        if len(r) == 0:
            raise SonostreamError(f"{data} has no frames in split {s!r} (it has "
                                  f"{sorted(set(view.split.tolist()))}); the probes need train "
                                  "frames to fit and frames to score: rebuild with other fractions")
    if image_size is None:
        image_size = (meta.get("preprocessing") or {}).get("image_size")
        image_size = image_size[0] if image_size else int(view.stored_size[rows[split][0], 2])
    size = (int(image_size), int(image_size))
    (train, train_rand), (test, test_rand) = (
        extract((net, baseline), source, view, rows[s], size, batch_size, quiet, f"probe {s}")
        for s in ("train", split))
    figures, skipped = score(train, test)
    random_figures, _ = score(train_rand, test_rand)
    chance, counts = chance_and_counts(train, test)
    return {**figures, "random": random_figures, "chance": chance, "counts": counts,
            "skipped": skipped, "arch": meta["arch"], "encoder": "random" if str(encoder) == "random"
            else absolute(encoder), "encoder_step": meta.get("step"), "seed": seed,
            "split": split, "image_size": size[0], "near_standard_frames": NEAR_STANDARD,
            "feature": "global average of layer4", **dataset_ref(str(data))}


def probe_table(result: dict) -> str:
    """The result as a markdown table: encoder and random init side by side, with chance."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    name = "random init (encoder)" if result["encoder"] == "random" else "pretrained encoder"
    lines = ["| encoder | " + " | ".join(TITLES[k] for k in PROBE_KEYS) + " |",
             "|---|" + "---:|" * len(PROBE_KEYS)]
    for label, row in ((name, result), (f"random init (seed {result['seed']})", result["random"]),
                       ("chance", result["chance"])):
        lines.append(f"| {label} | " + " | ".join(f(row.get(k)) for k in PROBE_KEYS) + " |")
    return "\n".join(lines)
