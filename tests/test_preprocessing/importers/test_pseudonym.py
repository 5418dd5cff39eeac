"""Pseudonymised identifiers: no identifier of the source reaches the import folder or dataset."""
import csv
import json
import os
import pickle
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from importer_helpers import fan_loop, make_hc18, read_rows, write_video
from pipeline.cli import main
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.frames_csv import CsvError
from preprocessing.importers.dicom import import_dicom
from preprocessing.importers.hc18 import import_hc18
from preprocessing.importers.pseudonym import RECORD_FILE, KeyFileError, Pseudonymiser

OPTS = BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0)
PATIENT = "MRN4711XQ"
# Tags that never reach the CSV, not even with --keep-identifiers.
NEVER = {"PatientName": "Vantreska^Olumide", "PatientBirthDate": "19840217",
         "AccessionNumber": "ACC99812XY", "InstitutionName": "Mercyvale General Infirmary",
         "InstitutionAddress": "Quillfeather Lane 12", "ReferringPhysicianName": "Housington^Greg",
         "StationName": "USROOM7QZ", "StudyDate": "20230405", "SeriesDate": "20230406",
         "AcquisitionDateTime": "20230405093012"}
FOLDERS = ("Ward7_Zorblatt_Quenvira", "Brightwater_Clinic")  # identifying folder names


def _dicom(path: Path, seed: int, **tags) -> dict:
    frames, _ = fan_loop(4, seed=seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.Modality, ds.Manufacturer = "US", "Acme Ultrasound"
    for k, v in {"SOPInstanceUID": generate_uid(), **NEVER, **tags}.items():
        setattr(ds, k, v)
    ds.set_pixel_data(frames, photometric_interpretation="MONOCHROME2", bits_stored=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return {"SOPInstanceUID": ds.SOPInstanceUID, **tags}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two loops of one patient and study, and one without PatientID, under identifying names."""
    root = tmp_path_factory.mktemp("src")
    study = generate_uid()
    folder = root / FOLDERS[0] / FOLDERS[1]
    a = _dicom(folder / "Zorblatt_loop1.dcm", 0, PatientID=PATIENT, StudyInstanceUID=study)
    b = _dicom(folder / "Zorblatt_loop2.dcm", 1, PatientID=PATIENT, StudyInstanceUID=study)
    c = _dicom(root / FOLDERS[0] / "Quenvira_noid.dcm", 2)
    uids = [a["SOPInstanceUID"], b["SOPInstanceUID"], c["SOPInstanceUID"], study]
    return root, uids


def _needles(uids) -> list[str]:
    parts = [p for v in NEVER.values() for p in v.replace("^", " ").split() if len(p) >= 6]
    return [PATIENT, *uids, *FOLDERS, "Zorblatt", "Quenvira", *parts]


def _found(roots, needles) -> set[str]:
    """Every needle found (case-insensitively) in any byte or name under ``roots``, parquet
    values and metadata decoded as well (their pages may be compressed)."""
    hay = []
    for root in roots:
        for p in Path(root).rglob("*"):
            hay.append(str(p.relative_to(root)).lower().encode())
            if p.is_file():
                hay.append(p.read_bytes().lower())
                if p.suffix == ".parquet":
                    t = pq.read_table(p)
                    text = json.dumps(t.to_pylist(), default=str) + str(t.schema.metadata)
                    hay.append(text.lower().encode())
    return {n for n in needles if any(n.lower().encode() in h for h in hay)}


def _build(csv_path, out):
    r = build(str(csv_path), str(out), OPTS, workers=1, progress=False)
    assert r.rejects == 0 and r.frames == 12
    return pq.read_table(Path(out) / fmt.INDEX_FILE).to_pylist()


def test_default_dicom_import_and_build_hold_no_identifier(source, tmp_path, capsys, monkeypatch):
    root, uids = source
    key = tmp_path / "keys" / "pseudonym.key"
    monkeypatch.setenv("SONOSTREAM_KEY_FILE", str(key))  # the CLI's default key, created here
    assert main(["import", "dicom", "--input", str(root), "--out", str(tmp_path / "imp"),
                 "--quiet"]) == 0
    assert main(["build", "--csv", str(tmp_path / "imp" / "frames.csv"), "--out",
                 str(tmp_path / "ds"), "--workers", "1", "--image-size", "64", "--quiet"]) == 0
    assert "created a new pseudonym key in" in capsys.readouterr().err
    rows = pq.read_table(tmp_path / "ds" / fmt.INDEX_FILE).to_pylist()
    assert len(rows) == 12 and all(r["patient_id"].startswith("p-") for r in rows)
    assert len({r["patient_id"] for r in rows}) == 2 and len({r["video_name"] for r in rows}) == 3
    assert {r["study_id"] for r in rows} - {None} and all(
        r["study_id"].startswith("s-") for r in rows if r["study_id"])
    assert {r[fmt.PSEUDONYM_COLUMN] for r in rows} == {Pseudonymiser.from_key_file(key).fingerprint}
    manifest = json.loads((tmp_path / "ds" / fmt.MANIFEST_FILE).read_text())
    assert manifest[fmt.PSEUDONYM_COLUMN] == Pseudonymiser.from_key_file(key).fingerprint
    assert {r["manufacturer"] for r in rows} == {"Acme Ultrasound"}  # kept: not an identifier
    assert _found([tmp_path / "imp", tmp_path / "ds"], _needles(uids)) == set()


def test_keep_identifiers_keeps_ids_and_paths_but_no_other_tag(source, tmp_path):
    root, uids = source
    r = import_dicom([str(root)], tmp_path / "imp", progress=False, keep_identifiers=True)
    _build(r.csv_path, tmp_path / "ds")
    found = _found([tmp_path / "imp", tmp_path / "ds"], _needles(uids))
    assert {PATIENT, *uids, *FOLDERS} <= found   # the grep above does find what is there
    never = [p for v in NEVER.values() for p in v.replace("^", " ").split() if len(p) >= 6]
    assert found.isdisjoint(never)


def _import(root, out, key, **kw):
    return import_dicom([str(root)], out, progress=False, pseudonyms=key, **kw)


def test_same_key_same_ids_other_key_other_ids_and_mixing_them_is_refused(source, tmp_path):
    root, _ = source
    k1 = Pseudonymiser.from_key_file(tmp_path / "k1", quiet=True)
    k2 = Pseudonymiser.from_key_file(tmp_path / "k2", quiet=True)
    a, b = _import(root, tmp_path / "a", k1), _import(root, tmp_path / "b", k1)
    assert Path(a.csv_path).read_bytes() == Path(b.csv_path).read_bytes()  # same key, same ids
    _import(root, tmp_path / "c", k2)
    ra, rc = read_rows(tmp_path / "a"), read_rows(tmp_path / "c")
    for col in ("patient_id", "video_name", "study_id", "frame_path"):  # the no-PatientID file too
        assert set(ra[col]) - {""} and set(ra[col]).isdisjoint(set(rc[col]) - {""}), col
    # Importing into a folder made with another key: refused, the earlier import untouched.
    before = Path(a.csv_path).read_bytes()
    with pytest.raises(KeyFileError, match=f"{RECORD_FILE}.*{k1.fingerprint}.*--key-file"):
        _import(root, tmp_path / "a", k2, overwrite=True)
    assert Path(a.csv_path).read_bytes() == before
    # Building rows of both keys together: refused, naming the keys and their lines.
    rows = []
    for folder in ("a", "c"):
        with open(tmp_path / folder / "frames.csv", newline="") as f:
            rows += [{**r, "frame_path": str(tmp_path / folder / r["frame_path"])}
                     for r in csv.DictReader(f)]
    merged = tmp_path / "merged.csv"
    with open(merged, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CsvError, match=f"{k1.fingerprint} on 12 row.*first line 2.*"
                                       f"{k2.fingerprint} on 12 row.*first line 14"):
        build(str(merged), str(tmp_path / "ds"), OPTS, workers=1, progress=False)


def test_key_file_created_private_once_and_bad_key_files_refused(tmp_path, capsys):
    path = tmp_path / "cfg" / "sonostream" / "pseudonym.key"
    p = Pseudonymiser.from_key_file(path)
    err = capsys.readouterr().err
    assert str(path) in err and "Keep it" in err and p.fingerprint in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert Pseudonymiser.from_key_file(path) == p and path.read_text() == text  # not replaced
    assert capsys.readouterr().err == ""
    assert text.strip() not in repr(p) and text.strip()[:16] not in p.fingerprint
    q = pickle.loads(pickle.dumps(p))   # importer worker processes get a copy
    assert q == p and q.patient("x") == p.patient("x") and p.patient("x")[2:] != p.video("x")[2:]
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Pseudonymiser.from_key_file(path)
    os.chmod(path, 0o600)
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="64 hex digits"):
        Pseudonymiser.from_key_file(path)


def test_video_and_hc18_pseudonymise_on_request(tmp_path):
    frames, _ = fan_loop(4)
    (tmp_path / "Zorblatt_Quenvira").mkdir()
    video = write_video(tmp_path / "Zorblatt_Quenvira" / "Quenvira_scan.mp4", frames)
    key = str(tmp_path / "key")
    assert main(["import", "video", "--input", str(video), "--out", str(tmp_path / "v"),
                 "--key-file", key, "--quiet"]) == 2   # --key-file without --pseudonymise
    assert main(["import", "video", "--input", str(video), "--out", str(tmp_path / "v"),
                 "--patient-from", "folder", "--pseudonymise", "--key-file", key,
                 "--quiet"]) == 0
    rows = read_rows(tmp_path / "v")
    assert set(rows.patient_id) == {Pseudonymiser.from_key_file(key).patient("Zorblatt_Quenvira")}
    assert _found([tmp_path / "v"], ["Zorblatt", "Quenvira"]) == set()
    r = import_hc18(str(make_hc18(tmp_path / "hc18")), tmp_path / "h", progress=False,
                    pseudonyms=Pseudonymiser.from_key_file(key))
    rows = read_rows(tmp_path / "h")
    assert r.frames == 6 and "source_file" not in rows and all(rows.patient_id.str.startswith("p-"))
    pair = rows[rows.hc18_set == "training_set"].patient_id.value_counts()
    assert sorted(pair) == [1, 1, 2]   # 001_HC and 001_2HC: still one patient
    assert "_HC" not in Path(r.csv_path).read_text()
