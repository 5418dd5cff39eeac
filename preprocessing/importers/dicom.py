"""`sonostream import dicom`: single- and multi-frame ultrasound DICOM -> frames CSV.

Every file with pixel data is one video (a single image is a one-frame video), frames in file
order, read by ``preprocessing.media.DicomLoop`` (decoding, windowing, colour, sector crop).

patient_id = PatientID (else ``anon-<hash of the path>``), video_name = SOPInstanceUID (else the
file name), study_id = StudyInstanceUID, frame_id = 0-based frame number; pixel_size_mm from the
B-mode ultrasound region (PhysicalDeltaX in cm), else PixelSpacing. The region also bounds the
sector search.

Identifiers are pseudonymised by default (``preprocessing.importers.pseudonym``): patient, study
and video ids become keyed hashes (``p-``, ``s-``, ``v-``), a file without PatientID gets a keyed
hash of its path, ``source_file`` is left out, and every row carries the key's fingerprint.
Besides the ids, only Manufacturer and the pixel size and frame time read from tags reach the
CSV (names, birth dates, accession numbers, institutions, physicians, stations and dates never).
``keep_identifiers=True`` keeps PatientID, SOPInstanceUID, StudyInstanceUID and ``source_file``
as they are.
"""
from __future__ import annotations

from pathlib import Path

from preprocessing.format import SonostreamError
from preprocessing.importers import pseudonym
from preprocessing.importers.common import (ImportResult, ImportWriter, ItemWriter, crop_columns,
                                            path_hash)
from preprocessing.importers.journal import describe, fingerprint
from preprocessing.importers.parallel import check_workers, run_items
from preprocessing.media import DICOM_EXTENSIONS, DicomLoop, find_files, looks_like_dicom


def import_dicom(inputs: list[str], out_dir: str, crop_sector: bool = True,
                 overwrite: bool = False, progress: bool = True, workers: int = 1,
                 pseudonyms=None, keep_identifiers: bool = False) -> ImportResult:
    """``pseudonyms``: a ``pseudonym.Pseudonymiser``; None loads (or creates) the default key
    file, unless ``keep_identifiers``."""
    check_workers(workers)
    if keep_identifiers and pseudonyms is not None:
        raise SonostreamError("keep_identifiers and pseudonyms exclude each other: pass one")
    files, missing = find_files(inputs, looks_like_dicom)
    if not files and not missing:
        raise SonostreamError(f"no DICOM files in {', '.join(inputs)} (looked for "
                              f"{', '.join(DICOM_EXTENSIONS)}"
                              " and extension-less files with a DICM marker)")
    if not keep_identifiers and pseudonyms is None:
        pseudonyms = pseudonym.Pseudonymiser.from_key_file()
    pseudonym.check_folder(out_dir, pseudonyms, overwrite)
    options = {"crop_sector": crop_sector, "pseudonyms": describe(pseudonyms)}
    with ImportWriter(out_dir, "dicom", overwrite,
                      fingerprint("dicom", options, files, missing)) as writer:
        pseudonym.record_folder(out_dir, pseudonyms)
        for path in missing:
            writer.reject(path, f"{path}: no such file or directory")
        run_items(writer, [(path, _import_file, (path, crop_sector, pseudonyms)) for path in files],
                  workers, progress, "dicom")
        return writer.finish()


def _import_file(writer: ItemWriter, path: str, crop_sector: bool, pseudonyms=None) -> None:
    loop = DicomLoop(path, crop_sector)
    ds = loop.ds
    patient = str(ds.get("PatientID") or "").strip()
    video = str(ds.get("SOPInstanceUID") or "").strip() or Path(path).stem
    study = str(ds.get("StudyInstanceUID") or "").strip()
    # Only these tags reach the CSV; with pseudonyms, the ids hashed and no source path.
    if pseudonyms is None:
        patient = patient or f"anon-{path_hash(path)}"
        ids = {"study_id": study, "source_file": path}
    else:
        patient = pseudonyms.patient(patient) if patient else pseudonyms.anonymous_patient(path)
        video = pseudonyms.video(video)
        ids = {"study_id": pseudonyms.study(study) if study else "", **pseudonyms.columns()}
    columns = {"pixel_size_mm": loop.pixel_size_mm, **ids,
               "manufacturer": str(ds.get("Manufacturer") or ""),
               "frame_time_ms": loop.frame_time_ms,
               **(crop_columns(loop.sector) if loop.sector else {})}
    writer.start_video(patient, video, path)
    for n, image in enumerate(loop.images()):
        writer.add_frame(patient, video, n, image, **columns)
