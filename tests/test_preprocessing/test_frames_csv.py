import os

import pytest

from preprocessing.frames_csv import CsvError, parse_labels, plan_build


def _csv(tmp_path, text, name="frames.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_missing_column_names_it_and_the_fix(tmp_path):
    path = _csv(tmp_path, "frame_path,patient_id,frame_id\na.png,1,1\n")
    with pytest.raises(CsvError, match=r"missing column\(s\) 'video_name'.*needs frame_path"):
        plan_build(path, 0.1, 0.1, 0)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(CsvError, match="file is empty"):
        plan_build(_csv(tmp_path, ""), 0.1, 0.1, 0)
    with pytest.raises(CsvError, match="no rows"):
        plan_build(_csv(tmp_path, "frame_path,patient_id,video_name,frame_id\n"), 0.1, 0.1, 0)
    with pytest.raises(CsvError, match="no such file"):
        plan_build(str(tmp_path / "nope.csv"), 0.1, 0.1, 0)


def test_reserved_and_duplicate_columns(tmp_path):
    with pytest.raises(CsvError, match=r"column\(s\) \['shard'\] are reserved for the index"):
        plan_build(_csv(tmp_path, "frame_path,patient_id,video_name,frame_id,shard\na,1,v,1,x\n"),
                   0.1, 0.1, 0)
    with pytest.raises(CsvError, match="more than once"):
        plan_build(_csv(tmp_path, "frame_path,patient_id,video_name,frame_id,plane,plane\n"
                        "a,1,v,1,head,head\n"), 0.1, 0.1, 0)


def test_ids_stay_strings_and_paths_resolve(tmp_path):
    absolute = str(tmp_path / "abs.png")
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id\n"
                f"sub/b.png,007,v,010\n{absolute},007,v,9\n")
    plan = plan_build(path, 0.0, 0.0, 0)
    (video,) = plan.videos
    assert video.patient_id == "007"
    assert [f.frame_id for f in video.frames] == ["9", "010"]  # numeric order, text kept
    assert video.frames[1].path == os.path.join(str(tmp_path), "sub/b.png")
    assert video.frames[0].path == absolute


def test_row_problems_become_rejects_with_line_numbers(tmp_path):
    path = _csv(tmp_path,
                "frame_path,patient_id,video_name,frame_id,plane,pixel_size_mm,ellipse_cx\n"
                "a.png,1,v,1,head,0.2,\n"      # line 2: fine
                "a.png,1,v,1,head,0.2,\n"      # line 3: duplicate of line 2
                "b.png,,v,2,head,0.2,\n"       # line 4: empty patient_id
                "c.png,1,v,3,brain,0.2,\n"     # line 5: unknown plane
                "d.png,1,v,4,head,-1,\n"       # line 6: bad pixel size
                "e.png,1,v,5,head,0.2,10\n")   # line 7: incomplete ellipse
    plan = plan_build(path, 0.0, 0.0, 0)
    reasons = {r["csv_line"]: r["reason"] for r in plan.rejects}
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert "as line 2" in reasons[3]
    assert "patient_id" in reasons[4]
    assert "brain" in reasons[5]
    assert "pixel_size_mm" in reasons[6]
    assert "incomplete" in reasons[7]
    assert plan.num_rows == 6 and sum(len(v.frames) for v in plan.videos) == 1


def test_parse_labels_types():
    labels = parse_labels({"plane": "Head", "pixel_size_mm": "0.15", "is_standard_plane": "TRUE",
                           "hc_mm": ""})
    assert labels["plane"] == "head" and labels["pixel_size_mm"] == 0.15
    assert labels["is_standard_plane"] is True and labels["hc_mm"] is None


def test_video_order_is_independent_of_row_order(tmp_path):
    rows = [f"f{p}_{f}.png,{p},v,{f}" for p in range(8) for f in range(3)]
    header = "frame_path,patient_id,video_name,frame_id\n"
    a = plan_build(_csv(tmp_path, header + "\n".join(rows) + "\n", "a.csv"), 0.2, 0.2, 5)
    b = plan_build(_csv(tmp_path, header + "\n".join(reversed(rows)) + "\n", "b.csv"), 0.2, 0.2, 5)
    assert [v.key for v in a.videos] == [v.key for v in b.videos]
    assert [[f.frame_id for f in v.frames] for v in a.videos] == \
           [[f.frame_id for f in v.frames] for v in b.videos]


def _splits(plan):
    return {v.patient_id: v.split for v in plan.videos}


def test_split_column_overrides_the_hash_and_empty_cells_fall_back(tmp_path):
    from preprocessing import format as fmt
    rows = ["a.png,p1,v,1, Test ", "b.png,p1,v2,1,", "c.png,p2,v,1,TRAIN", "d.png,p3,v,1,val"]
    rows += [f"h{i}.png,h{i},v,1," for i in range(40)]
    plan = plan_build(_csv(tmp_path, "frame_path,patient_id,video_name,frame_id,split\n"
                           + "\n".join(rows) + "\n"), 0.0, 0.5, 0)
    got = _splits(plan)
    # p1's empty cell (its second video) follows its other row: one patient, one split
    assert (got["p1"], got["p2"], got["p3"]) == ("test", "train", "val")
    assert [v.split for v in plan.videos if v.patient_id == "p1"] == ["test", "test"]
    hashed = {p: s for p, s in got.items() if p.startswith("h")}
    assert hashed == {p: fmt.split_of(p, 0.0, 0.5, 0) for p in hashed}
    assert set(hashed.values()) == {"train", "test"}
    assert plan.extra_columns == [] and plan.rejects == []


def test_a_split_the_csv_names_gets_no_hashed_patients_by_default(tmp_path):
    from preprocessing import format as fmt
    rows = ["a.png,p1,v,1,test"] + [f"h{i}.png,h{i},v,1," for i in range(60)]
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id,split\n" + "\n".join(rows) + "\n")
    hashed = {p: s for p, s in _splits(plan_build(path, None, None, 0)).items() if p != "p1"}
    assert hashed == {p: fmt.split_of(p, 0.1, 0.0, 0) for p in hashed}   # val keeps its 0.1
    assert set(hashed.values()) == {"train", "val"}
    given = {p: s for p, s in _splits(plan_build(path, None, 0.2, 0)).items() if p != "p1"}
    assert "test" in given.values()                                       # unless it is asked for
    plain = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id\n"
                 + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n", name="plain.csv")
    assert set(_splits(plan_build(plain, None, None, 0)).values()) == {"train", "val", "test"}


def test_a_patient_given_two_splits_stops_the_build_naming_the_lines(tmp_path):
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id,split\n"
                "a.png,p1,v,1,test\nb.png,p2,v,1,train\nc.png,p1,v2,1,train\n")
    with pytest.raises(CsvError, match=r"frames.csv: 1 patient\(s\) are given more than one split "
                                       r"\(patient 'p1': test \(line 2\), train \(line 4\)\).*"
                                       r"give every row of the patient the same 'split'"):
        plan_build(path, 0.1, 0.1, 0)


def test_a_value_that_is_not_a_split_stops_the_build(tmp_path):
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id,split\n"
                "a.png,p1,v,1,test\nb.png,p2,v,1,validation\n")
    with pytest.raises(CsvError, match=r"frames.csv: column 'split' holds 1 value\(s\) that are "
                                       r"not a split \(line 3: 'validation'\); write train, val, "
                                       r"test or leave the cell empty"):
        plan_build(path, 0.1, 0.1, 0)


def test_rejected_rows_do_not_vote_on_their_patients_split(tmp_path):
    # line 3 repeats line 2's frame (rejected as a duplicate): its split is not a second split
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id,split\n"
                "a.png,p1,v,1,test\na.png,p1,v,1,train\n")
    plan = plan_build(path, 0.0, 0.0, 0)
    assert _splits(plan) == {"p1": "test"} and [r["csv_line"] for r in plan.rejects] == [3]


def test_equal_frame_ids_are_one_frame_whatever_the_row_order(tmp_path):
    header = "frame_path,patient_id,video_name,frame_id\n"
    rows = ["a.png,1,v,1", "b.png,1,v,01", "c.png,1,v, 1", "d.png,1,v,2", "e.png,1,v,1.0",
            "f.png,1,w, x", "g.png,1,w,x", "h.png,1,w,y"]
    plan = plan_build(_csv(tmp_path, header + "\n".join(rows) + "\n"), 0.0, 0.0, 0)
    frames = {v.video_name: [(f.frame_path, f.frame_id) for f in v.frames] for v in plan.videos}
    assert frames == {"v": [("a.png", "1"), ("d.png", "2")],
                      "w": [("f.png", "x"), ("h.png", "y")]}  # stored id: stripped text
    reasons = {r["frame_path"]: r["reason"] for r in plan.rejects}
    assert reasons == {
        "b.png": "duplicate frame: same patient_id, video_name and frame_id as line 2 "
                 "('1' and '01' are the same frame id)",
        "c.png": "duplicate frame: same patient_id, video_name and frame_id as line 2 "
                 "('1' and ' 1' are the same frame id)",
        "e.png": "duplicate frame: same patient_id, video_name and frame_id as line 2 "
                 "('1' and '1.0' are the same frame id)",
        "g.png": "duplicate frame: same patient_id, video_name and frame_id as line 7 "
                 "(' x' and 'x' are the same frame id)"}
    # Distinct ids: the order never depends on the CSV's row order.
    ids = ["010", "9", "1e1x", "frame_2", "frame_10", " 3"]
    orders = []
    for name, order in (("fwd.csv", ids), ("rev.csv", ids[::-1])):
        text = header + "".join(f"{i}.png,1,v,{fid}\n" for i, fid in enumerate(order))
        (video,) = plan_build(_csv(tmp_path, text, name), 0.0, 0.0, 0).videos
        orders.append([f.frame_id for f in video.frames])
    assert orders[0] == orders[1] == ["1e1x", "3", "9", "010", "frame_2", "frame_10"]


@pytest.mark.parametrize("text", ["1_0", "nan", "inf", "-inf", "0x10", "1e999", "1,5", "٣"])
def test_numbers_are_parsed_strictly(text):
    with pytest.raises(ValueError, match=r"pixel_size_mm '.*' is (not a number|out of range)"):
        parse_labels({"pixel_size_mm": text})
    with pytest.raises(ValueError, match="ellipse_angle"):
        parse_labels({c: "1" for c in ("ellipse_cx", "ellipse_cy", "ellipse_a", "ellipse_b")}
                     | {"ellipse_angle": text})


def test_plain_numbers_and_empty_cells_still_parse():
    labels = parse_labels({"pixel_size_mm": " 0.5 ", "hc_mm": "", "ellipse_cx": "1e1",
                           "ellipse_cy": "-.5", "ellipse_a": "+3", "ellipse_b": "2.",
                           "ellipse_angle": "0"})
    assert labels["pixel_size_mm"] == 0.5 and labels["hc_mm"] is None
    assert [labels[c] for c in ("ellipse_cx", "ellipse_cy", "ellipse_a", "ellipse_b")] == \
        [10.0, -0.5, 3.0, 2.0]


def test_misspelled_optional_columns_are_warned_and_still_carried(tmp_path):
    path = _csv(tmp_path, "frame_path,patient_id,video_name,frame_id,pixel_size,mask,Plane,note\n"
                "a.png,1,v,1,0.2,m.png,head,x\n")
    plan = plan_build(path, 0.0, 0.0, 0)
    assert plan.extra_columns == ["pixel_size", "mask", "Plane", "note"]
    assert [w.split(": ", 1)[1] for w in plan.warnings] == [
        f"column {bad!r} is not a known column; did you mean {good!r}? It is carried as text, "
        f"so the dataset has no {good}; rename the column if that was meant"
        for bad, good in (("pixel_size", "pixel_size_mm"), ("mask", "mask_path"),
                          ("Plane", "plane"))]
    assert all(w.startswith(path) for w in plan.warnings)
    assert plan.videos[0].frames[0].labels["pixel_size_mm"] is None
