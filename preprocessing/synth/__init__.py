"""Deterministic synthetic fetal ultrasound cohort: B-mode sweeps with head masks and labels.

``make_cohort`` writes frames, masks and ``frames.csv`` (see ``preprocessing.format``);
``save_preview`` draws one figure of a head sweep, an abdomen and a femur frame.
"""
from preprocessing.synth.cohort import make_cohort
from preprocessing.synth.preview import save_preview

__all__ = ["make_cohort", "save_preview"]
