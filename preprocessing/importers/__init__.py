"""Importers: real-world sources (HC18 folders, DICOM files, video files) -> the frames CSV.

Each importer writes ``OUT/frames/``, ``OUT/masks/``, ``OUT/frames.csv`` (the contract in
``preprocessing.format``) and ``OUT/import_rejects.csv``; ``sonostream build --csv
OUT/frames.csv`` then works unchanged. Loops are read by ``preprocessing.media``;
``preprocessing.sector`` crops frames to the imaging fan and blanks the overlay around it.
An importer lists its inputs and hands one task per input file to ``parallel.run_items``
(``workers`` processes; the same bytes for any number), which commits them through
``common.ImportWriter``; ``journal`` keeps what an interrupted import committed, so a rerun
with the same inputs and options continues it.
"""
