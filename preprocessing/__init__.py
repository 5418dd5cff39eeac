"""Offline, torch-free preprocessing: sources, synthetic cohort, shard building (the on-disk contract)."""
