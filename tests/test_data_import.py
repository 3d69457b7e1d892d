"""`meddet data import`: VOC (the real BCCD set), YOLO, COCO and masks into the project layout."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddet.cli import main
from meddet.data import CocoDetection, import_dataset
from meddet.data.importers import mask_components
from meddet.data.importers.checks import split_counts
from meddet.errors import MedDetError

# Real data lives beside the repository (``../shared/data``); MEDDET_SHARED_DATA points
# elsewhere, e.g. from a checkout in another folder.
SHARED = Path(os.environ.get("MEDDET_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
BCCD = SHARED / "bccd" / "BCCD"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def _png(path: Path, w: int, h: int, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def _boxes(out: Path, split: str) -> dict[str, list[tuple[str, list[float]]]]:
    """``{file_name: [(class, [x, y, w, h]), ...]}`` of a written split."""
    coco = json.loads((out / "annotations" / f"{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    found: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        found[files[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"]))
    return found


def _no_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- BCCD (real VOC)
@pytest.fixture(scope="module")
def bccd(tmp_path_factory):
    if not BCCD.is_dir():
        pytest.skip(f"the real BCCD files are not at {BCCD}")
    out = tmp_path_factory.mktemp("bccd") / "ds"
    return out, import_dataset(BCCD, out, format="voc")


def test_bccd_counts_splits_and_degenerate_boxes(bccd):
    out, summary = bccd
    assert summary.boxes_read == 4888
    assert summary.boxes_read_per_class == {"Platelets": 361, "RBC": 4155, "WBC": 372}
    assert {s: v["images"] for s, v in summary.splits.items()} == \
        {"train": 205, "val": 87, "test": 72}
    assert summary.images == 364 and summary.copied == 364 and summary.converted == 0
    dropped = summary.dropped()
    assert list(dropped) == ["degenerate"] and dropped["degenerate"]["count"] == 2
    bad = sorted(p.file.split()[0] for p in summary.problems)
    assert bad == ["Annotations/BloodImage_00338.xml", "Annotations/BloodImage_00343.xml"]
    assert summary.boxes == 4886
    per_class = {c: sum(s["per_class"][c] for s in summary.splits.values())
                 for c in summary.classes}
    assert per_class == {"Platelets": 361, "RBC": 4153, "WBC": 372}
    on_disk = json.loads((out / "import_summary.json").read_text())
    assert on_disk["boxes"] == 4886 and on_disk["dropped"]["degenerate"]["count"] == 2


def test_bccd_loads_and_matches_the_xml(bccd):
    out, _ = bccd
    for split, n in (("train", 205), ("val", 87), ("test", 72)):
        ds = CocoDetection(out, split, img_size=128)
        assert len(ds) == n and ds.class_names == ["Platelets", "RBC", "WBC"]
    image, target = ds[0]
    assert image.shape == (3, 128, 128) and len(target["boxes"]) > 0
    # Independent reading of one annotation: VOC corners are 1-based.
    ids = (BCCD / "ImageSets" / "Main" / "test.txt").read_text().split()
    xml = ET.parse(BCCD / "Annotations" / f"{ids[0]}.xml").getroot()
    want = sorted((o.findtext("name"), [float(o.findtext(f"bndbox/{k}")) for k in
                                        ("xmin", "ymin", "xmax", "ymax")])
                  for o in xml.iter("object"))
    want = sorted((n, [x0 - 1, y0 - 1, x1 - x0, y1 - y0]) for n, (x0, y0, x1, y1) in want)
    assert sorted(_boxes(out, "test")[f"{ids[0]}.jpg"]) == want
    # JPEGs are copied byte for byte (the loader reads RGB JPEG itself).
    assert (out / "images" / "test" / f"{ids[0]}.jpg").read_bytes() == \
        (BCCD / "JPEGImages" / f"{ids[0]}.jpg").read_bytes()


def test_bccd_strict_exits_2_naming_the_file_and_writes_nothing(bccd, tmp_path, capsys):
    out = tmp_path / "strict"
    assert main(["data", "import", str(BCCD), str(out), "--format", "voc", "--strict"]) == 2
    err = _one_error_line(capsys)
    assert "BloodImage_00338.xml" in err and "--strict" in err
    assert not out.exists() and _no_leftovers(tmp_path) == []


# --------------------------------------------------------------------------- hand-made VOC
def test_voc_one_based_corners_and_given_splits(tmp_path):
    src = tmp_path / "voc"
    _png(src / "JPEGImages" / "a.png", 30, 20)
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>30</width><height>20</height>"
        "</size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax>"
        "<ymax>11</ymax></bndbox></object></annotation>")
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    summary = import_dataset(src, tmp_path / "out")
    assert summary.format == "voc" and list(summary.splits) == ["val"]
    assert _boxes(tmp_path / "out", "val") == {"a.png": [("cat", [0.0, 1.0, 29.0, 9.0])]}


# --------------------------------------------------------------------------- YOLO
def _yolo(root: Path) -> Path:
    _png(root / "images" / "train" / "a.png", 40, 20)
    _png(root / "images" / "train" / "neg.png", 40, 20)
    _png(root / "images" / "val" / "b.png", 10, 10)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.5 0.5\n\n1 0.1 0.1 0.3 0.1 0.3 0.4\n")
    (root / "labels" / "val" / "b.txt").write_text("1 0.5 0.5 1.0 1.0\n")
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    return root


def test_yolo_boxes_in_pixels(tmp_path):
    src, out = _yolo(tmp_path / "yolo"), tmp_path / "out"
    summary = import_dataset(src, out)
    assert summary.format == "yolo" and summary.classes == ["cat", "dog"]
    assert summary.problems == []
    # 40x20 image: cx 20 cy 10 w 20 h 10 -> [10, 5, 20, 10]; the polygon spans x 4..12, y 2..8.
    assert _boxes(out, "train") == {
        "a.png": [("cat", [10.0, 5.0, 20.0, 10.0]), ("dog", [0.0, 0.0, 20.0, 10.0]),
                  ("dog", [4.0, 2.0, 8.0, 6.0])],
        "neg.png": []}
    assert _boxes(out, "val") == {"b.png": [("dog", [0.0, 0.0, 10.0, 10.0])]}
    ds = CocoDetection(out, "train", img_size=64)
    assert len(ds) == 2 and ds.class_names == ["cat", "dog"]


def test_yolo_class_map_merges_and_classes_select(tmp_path):
    src, out = _yolo(tmp_path / "yolo"), tmp_path / "out"
    summary = import_dataset(src, out, class_map={"cat": "pet", "dog": "pet"})
    assert summary.classes == ["pet"] and summary.boxes == 4
    summary = import_dataset(src, out, classes=["dog"], overwrite=True)
    assert summary.classes == ["dog"] and summary.boxes == 3
    assert summary.dropped()["excluded"]["count"] == 1
    assert not summary.dropped()["excluded"]["defect"]
    with pytest.raises(MedDetError, match="'cow'"):
        import_dataset(src, tmp_path / "o2", classes=["cow"])
    with pytest.raises(MedDetError, match="--class-map names 'cow'"):
        import_dataset(src, tmp_path / "o2", class_map={"cow": "x"})


def _bad_yolo(root: Path) -> Path:
    _png(root / "images" / "train" / "a.png", 40, 20)
    (root / "images" / "train" / "broken.png").write_bytes(b"not a png at all")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.5 0.5\n"       # good: [10, 5, 20, 10]
        "0 0.95 0.5 0.2 0.2\n"      # x 34..42 on a 40 px image: clipped to [34, 8, 6, 4]
        "0 1.5 0.5 0.2 0.2\n"       # x 56..64: entirely outside
        "0 0.5 0.5 0 0.1\n"         # zero width
        "5 0.5 0.5 0.1 0.1\n"       # class 5 of 2
        "0 0.5 0.5\n")              # malformed
    (root / "labels" / "train" / "broken.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "train" / "ghost.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def test_bad_inputs_are_counted_and_left_out(tmp_path):
    src, out = _bad_yolo(tmp_path / "yolo"), tmp_path / "out"
    summary = import_dataset(src, out)
    dropped = summary.dropped()
    assert {r: (d["count"], d["boxes"]) for r, d in dropped.items()} == {
        "missing_image": (1, 1), "unreadable": (2, 2), "unknown_class": (1, 1),
        "degenerate": (1, 1), "outside": (1, 1), "clipped": (1, 0)}
    assert "ghost.txt" in dropped["missing_image"]["first"]
    assert {p.file for p in summary.problems if p.reason == "unreadable"} == \
        {"labels/train/a.txt", "images/train/broken.png"}
    assert _boxes(out, "train") == {"a.png": [("cat", [10.0, 5.0, 20.0, 10.0]),
                                              ("cat", [34.0, 8.0, 6.0, 4.0])]}
    assert summary.boxes_read == 8
    CocoDetection(out, "train", img_size=64)  # what was written is valid


def test_strict_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    src, out = _bad_yolo(tmp_path / "yolo"), tmp_path / "out"
    assert main(["data", "import", str(src), str(out), "--format", "yolo", "--strict"]) == 2
    assert "labels/train/a.txt" in _one_error_line(capsys)
    assert not out.exists() and _no_leftovers(tmp_path) == []
    assert main(["data", "import", str(src), str(out), "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dropped"]["outside"]["count"] == 1
    assert "dropped or changed" in captured.err and "entirely outside" in captured.err


@pytest.mark.parametrize("flags, needle", [
    (["--split", "0.5,0.5"], "--split"),
    (["--split", "0.7,0.2,0.2"], "--split"),
    (["--format", "pascal"], "--format"),
    (["--class-map", "cat"], "--class-map"),
    (["--connectivity", "6"], "--connectivity"),
    (["--images", "nowhere"], "--images"),
])
def test_bad_flags_exit_2(tmp_path, capsys, flags, needle):
    src = _yolo(tmp_path / "yolo")
    assert main(["data", "import", str(src), str(tmp_path / "out"), *flags]) == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_overwrite_rules_and_atomic_failure(tmp_path, capsys, monkeypatch):
    src, out = _yolo(tmp_path / "yolo"), tmp_path / "out"
    assert main(["data", "import", str(src), str(out)]) == 0
    assert main(["data", "import", str(src), str(out)]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert main(["data", "import", str(src), str(src / "inside")]) == 2
    assert "overlap" in _one_error_line(capsys)
    before = _boxes(out, "train")
    # A failure while writing leaves the previous dataset as it was, and no partial folder.
    import meddet.data.importers.core as core

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.shutil, "copyfile", boom)
    assert main(["data", "import", str(src), str(out), "--overwrite"]) == 2
    assert "No space left" in _one_error_line(capsys)
    assert _boxes(out, "train") == before and _no_leftovers(tmp_path) == []


def test_random_split_is_seeded_and_exact():
    assert split_counts(10, (0.7, 0.15, 0.15)) == [7, 2, 1]
    assert split_counts(364, (0.7, 0.15, 0.15)) == [255, 55, 54]
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]


def test_random_split_of_a_source_without_splits(tmp_path):
    src = tmp_path / "flat"
    for i in range(10):
        _png(src / "images" / f"im{i}.png", 8, 8)
        (src / "labels").mkdir(exist_ok=True)
        (src / "labels" / f"im{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (src / "classes.txt").write_text("x\n")
    with pytest.raises(MedDetError, match="--split"):
        import_dataset(src, tmp_path / "a")
    a = import_dataset(src, tmp_path / "a", split=(0.7, 0.15, 0.15), seed=3)
    b = import_dataset(src, tmp_path / "b", split=(0.7, 0.15, 0.15), seed=3)
    c = import_dataset(src, tmp_path / "c", split=(0.7, 0.15, 0.15), seed=4)
    assert [a.splits[s]["images"] for s in ("train", "val", "test")] == [7, 2, 1]
    assert _boxes(tmp_path / "a", "val") == _boxes(tmp_path / "b", "val")
    assert sorted(_boxes(tmp_path / "a", "train")) != sorted(_boxes(tmp_path / "c", "train"))
    assert a.split_rule == "ratio 0.7,0.15,0.15 seed 3" and b.boxes == c.boxes == 10


# --------------------------------------------------------------------------- COCO
def test_coco_other_layout_with_images_root(tmp_path):
    src = tmp_path / "export"
    _png(tmp_path / "pics" / "sub" / "p.png", 20, 10)
    _png(tmp_path / "pics" / "q.png", 20, 10)
    (src / "anns").mkdir(parents=True)
    coco = {"images": [{"id": 7, "file_name": "sub/p.png", "width": 20, "height": 10},
                       {"id": 8, "file_name": "q.png", "width": 30, "height": 10},
                       {"id": 9, "file_name": "gone.png"}],
            "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2, 3, 4]},
                {"id": 2, "image_id": 7, "category_id": 2, "bbox": [18, 0, 4, 4]},
                {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1]},
                {"id": 4, "image_id": 8, "category_id": 2, "bbox": [0, 0, 1, 1]},
                {"id": 5, "image_id": 9, "category_id": 2, "bbox": [0, 0, 1, 1]}]}
    (src / "anns" / "train.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    summary = import_dataset(src, out, images=tmp_path / "pics")
    # Category ids are renumbered 1..K in the source's id order: a (2) before b (5).
    assert summary.classes == ["a", "b"]
    assert _boxes(out, "train") == {"p.png": [("b", [1.0, 2.0, 3.0, 4.0]),
                                              ("a", [18.0, 0.0, 2.0, 4.0])]}
    assert {r: d["count"] for r, d in summary.dropped().items()} == {
        "missing_image": 1, "size_mismatch": 1, "unknown_class": 1, "clipped": 1}
    assert CocoDetection(out, "train", img_size=64).class_names == ["a", "b"]


# --------------------------------------------------------------------------- masks
def test_mask_components_exact_boxes_and_connectivity():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 1:4] = 1          # label 1, component A: rows 1-2, cols 1-3
    m[6:9, 8:10] = 1         # label 1, component B: rows 6-8, cols 8-9
    m[4, 4] = 2              # label 2: a diagonal pair, one component only with 8-connectivity
    m[5, 5] = 2
    assert mask_components(m, 8) == [(1, (1, 1, 4, 3), 6), (1, (8, 6, 10, 9), 6),
                                     (2, (4, 4, 6, 6), 2)]
    assert mask_components(m, 4) == [(1, (1, 1, 4, 3), 6), (1, (8, 6, 10, 9), 6),
                                     (2, (4, 4, 5, 5), 1), (2, (5, 5, 6, 6), 1)]
    assert mask_components(np.zeros((3, 3), np.uint8)) == []


@pytest.mark.parametrize("connectivity", [4, 8])
def test_mask_components_match_scipy(connectivity):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(connectivity)
    structure = np.ones((3, 3)) if connectivity == 8 else None
    for _ in range(20):
        m = rng.integers(0, 3, (23, 17)) * (rng.random((23, 17)) < 0.5)
        want = []
        for value in (1, 2):
            lab, n = ndimage.label(m == value, structure=structure)
            for k, sl in enumerate(ndimage.find_objects(lab), 1):
                box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
                want.append((value, box, int((lab == k).sum())))
        want.sort(key=lambda c: (c[0], c[1][1], c[1][0]))
        got = mask_components(m, connectivity)
        assert sorted(got) == sorted(want)


def test_masks_import_exact_boxes_min_area_and_class_map(tmp_path):
    src = tmp_path / "seg"
    _png(src / "images" / "train" / "a.png", 12, 10)
    _png(src / "images" / "train" / "nomask.png", 12, 10)
    _png(src / "images" / "val" / "b.jpg", 12, 10)
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 1:4] = 1
    m[6:9, 8:10] = 1
    m[4:8, 0:3] = 2
    m[0, 11] = 2              # a 1-pixel speck, dropped by min-area 2
    (src / "masks" / "train").mkdir(parents=True)
    (src / "masks" / "val").mkdir(parents=True)
    np.save(src / "masks" / "train" / "a.npy", m)
    Image.fromarray(m).save(src / "masks" / "val" / "b_mask.png")
    np.save(src / "masks" / "train" / "orphan.npy", m)
    out = tmp_path / "out"
    summary = import_dataset(src, out, min_area=2, class_map={"1": "disc", "2": "body"})
    assert summary.format == "masks" and summary.classes == ["disc", "body"]
    want = [("disc", [1.0, 1.0, 3.0, 2.0]), ("disc", [8.0, 6.0, 2.0, 3.0]),
            ("body", [0.0, 4.0, 3.0, 4.0])]
    assert _boxes(out, "train") == {"a.png": want}
    assert _boxes(out, "val") == {"b.jpg": want}
    assert {r: d["count"] for r, d in summary.dropped().items()} == {
        "missing_image": 1, "missing_annotation": 1, "small": 2}
    assert CocoDetection(out, "val", img_size=64).class_names == ["disc", "body"]


def test_masks_in_one_folder_for_split_image_folders(tmp_path):
    src = tmp_path / "seg"
    _png(src / "images" / "train" / "a.png", 6, 4)
    _png(src / "images" / "test" / "b.png", 6, 4)
    m = np.zeros((4, 6), np.uint8)
    m[1:3, 2:5] = 3
    (src / "masks").mkdir()
    Image.fromarray(m).save(src / "masks" / "a.png")
    Image.fromarray(m).save(src / "masks" / "b.png")
    summary = import_dataset(src, tmp_path / "out", format="masks", connectivity=4)
    assert summary.problems == [] and summary.classes == ["3"]
    assert _boxes(tmp_path / "out", "test") == {"b.png": [("3", [2.0, 1.0, 3.0, 2.0])]}
    assert summary.splits["train"]["images"] == 1


def test_yolo_split_layouts(tmp_path):
    # data.yaml naming the image folders (Ultralytics), relative to its `path` entry.
    a = tmp_path / "a"
    _png(a / "ds" / "images" / "tr" / "x.png", 10, 10)
    _png(a / "ds" / "images" / "va" / "y.png", 10, 10)
    (a / "ds" / "labels" / "tr").mkdir(parents=True)
    (a / "ds" / "labels" / "tr" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (a / "data.yaml").write_text("path: ds\ntrain: images/tr\nval: images/va\nnames: {0: c}\n")
    summary = import_dataset(a, tmp_path / "out_a")
    assert {s: v["images"] for s, v in summary.splits.items()} == {"train": 1, "val": 1}
    assert _boxes(tmp_path / "out_a", "train") == {"x.png": [("c", [4.0, 4.0, 2.0, 2.0])]}
    # Roboflow's export: {train,valid}/images + labels.
    b = tmp_path / "b"
    _png(b / "valid" / "images" / "z.jpg", 10, 10)
    (b / "valid" / "labels").mkdir(parents=True)
    (b / "valid" / "labels" / "z.txt").write_text("0 0.5 0.5 1 1\n")
    (b / "data.yaml").write_text("names: [c]\n")
    summary = import_dataset(b, tmp_path / "out_b")
    assert _boxes(tmp_path / "out_b", "val") == {"z.jpg": [("c", [0.0, 0.0, 10.0, 10.0])]}


def test_coco_ms_coco_layout_finds_split_files_and_image_folders(tmp_path):
    src = tmp_path / "coco"
    _png(src / "val2017" / "v.png", 8, 6)
    (src / "annotations").mkdir(parents=True)
    for name in ("instances_val2017.json", "person_keypoints_val2017.json"):
        (src / "annotations" / name).write_text(json.dumps({
            "images": [{"id": 1, "file_name": "v.png", "width": 8, "height": 6}],
            "categories": [{"id": 1, "name": "n"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]}))
    summary = import_dataset(src, tmp_path / "out")
    assert summary.format == "coco" and list(summary.splits) == ["val"]
    assert summary.boxes == 1 and summary.problems == []
