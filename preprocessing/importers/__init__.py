"""Importers: real-world sources (HC18 folders, DICOM files, video files) -> the frames CSV.

Each importer writes ``OUT/frames/``, ``OUT/masks/``, ``OUT/frames.csv`` (the contract in
``preprocessing.format``) and ``OUT/rejects.csv``; ``sonostream build --csv OUT/frames.csv`` then
works unchanged. Loops are read by ``preprocessing.media``; ``preprocessing.sector`` crops frames
to the imaging fan and blanks the overlay around it.
"""
