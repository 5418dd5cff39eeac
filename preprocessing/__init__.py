"""Offline, torch-free data work: the on-disk contract (``format``, the bottom layer), sources
(importers, media, the synthetic cohort), the shard builder, verify and inspect. Never imports
``pipeline``."""
