"""Tests for `transferlab.data.folder` (scanning) and `transferlab.data.split` (splits)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from transferlab.data.folder import FolderScan, Sample, scan_folder
from transferlab.data.split import load_split, save_split, stratified_split
from transferlab.errors import TransferlabError


def _image(path: Path, colour=(120, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Two classes, names with spaces and parentheses, and the debris real folders hold."""
    root = tmp_path / "my data (v2)"
    _image(root / "dome(inner)" / "apse (1).jpg")
    _image(root / "dome(inner)" / "apse (2).PNG")
    _image(root / "dome(inner)" / "nested dir" / "deep (3).jpeg")  # images anywhere below a class
    _image(root / "nave" / "n1.png")
    _image(root / "nave" / "n2.jpg")
    # hidden debris
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "nave" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "nave" / "._n1.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    _image(root / "nave" / ".ipynb_checkpoints" / "n1-checkpoint.png")
    _image(root / ".ipynb_checkpoints" / "stray.png")
    # not images
    (root / "nave" / "notes.txt").write_text("some notes")
    (root / "nave" / "README").write_text("no suffix")
    (root / "labels.csv").write_text("a,b\n")  # top-level stray file
    return root


def _names(paths) -> set[str]:
    return {Path(p).name for p in paths}


# --- scan_folder --------------------------------------------------------------------------


def test_scan_finds_classes_and_images(messy_folder):
    scan = scan_folder(messy_folder)
    assert isinstance(scan, FolderScan)
    assert scan.root == messy_folder
    assert scan.classes == ["dome(inner)", "nave"]  # sorted by name
    by_name = {s.path.name: scan.classes[s.label] for s in scan.samples}
    assert by_name == {
        "apse (1).jpg": "dome(inner)",
        "apse (2).PNG": "dome(inner)",
        "deep (3).jpeg": "dome(inner)",
        "n1.png": "nave",
        "n2.jpg": "nave",
    }
    assert scan.counts() == {"dome(inner)": 3, "nave": 2}
    assert all(s.path.is_file() for s in scan.samples)


def test_scan_lists_hidden_files_and_never_as_samples(messy_folder):
    scan = scan_folder(messy_folder)
    hidden = {p.relative_to(messy_folder).as_posix() for p in scan.hidden}
    assert ".DS_Store" in hidden
    assert ".ipynb_checkpoints" in hidden
    assert "nave/.DS_Store" in hidden
    assert "nave/._n1.png" in hidden
    assert "nave/.ipynb_checkpoints" in hidden
    sample_names = _names(s.path for s in scan.samples)
    assert "._n1.png" not in sample_names
    assert "n1-checkpoint.png" not in sample_names
    assert "stray.png" not in sample_names
    # Hidden things are not "skipped" either: they are expected debris.
    skipped_names = _names(s.path for s in scan.skipped)
    assert not skipped_names & {".DS_Store", "._n1.png", "n1-checkpoint.png", ".ipynb_checkpoints"}


def test_scan_skips_non_images_with_reason(messy_folder):
    scan = scan_folder(messy_folder)
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert "not an image" in reasons["notes.txt"] and ".txt" in reasons["notes.txt"]
    assert "not an image" in reasons["README"] and "(none)" in reasons["README"]
    assert "top level" in reasons["labels.csv"]
    assert set(reasons) == {"notes.txt", "README", "labels.csv"}


def test_scan_with_forced_classes(messy_folder):
    _image(messy_folder / "extra" / "e1.jpg")
    scan = scan_folder(messy_folder, classes=["nave", "dome(inner)", "absent"])
    assert scan.classes == ["nave", "dome(inner)", "absent"]
    labels = {s.path.name: s.label for s in scan.samples}
    assert labels["n1.png"] == 0
    assert labels["apse (1).jpg"] == 1
    assert "e1.jpg" not in labels
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert "not a training class" in reasons["e1.jpg"] and "extra" in reasons["e1.jpg"]
    assert scan.counts() == {"nave": 2, "dome(inner)": 3, "absent": 0}


def test_scan_without_forced_classes_includes_every_folder(messy_folder):
    _image(messy_folder / "extra" / "e1.jpg")
    scan = scan_folder(str(messy_folder))
    assert scan.classes == ["dome(inner)", "extra", "nave"]


def test_scan_missing_folder(tmp_path):
    missing = tmp_path / "no such (folder)"
    with pytest.raises(TransferlabError) as info:
        scan_folder(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_scan_file_instead_of_folder(tmp_path):
    path = _image(tmp_path / "single.jpg")
    with pytest.raises(TransferlabError) as info:
        scan_folder(path)
    assert str(path) in str(info.value)


def test_scan_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TransferlabError) as info:
        scan_folder(empty)
    assert str(empty) in str(info.value)
    assert "no class subfolders" in str(info.value)


def test_scan_folder_with_only_hidden_and_loose_files(tmp_path):
    root = tmp_path / "loose"
    _image(root / "a.jpg")
    (root / ".DS_Store").write_bytes(b"x")
    with pytest.raises(TransferlabError) as info:
        scan_folder(root)
    assert str(root) in str(info.value)


def test_scan_class_dirs_without_images(tmp_path):
    root = tmp_path / "no images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("x")
    _image(root / "b" / ".ipynb_checkpoints" / "hidden.png")
    with pytest.raises(TransferlabError) as info:
        scan_folder(root)
    assert str(root) in str(info.value)
    assert "no image files" in str(info.value)


# --- stratified_split ---------------------------------------------------------------------


def _fake_scan(counts: dict[str, int], root: Path = Path("/data")) -> FolderScan:
    """A scan without files: splitting only looks at paths and labels."""
    classes = list(counts)
    samples = [
        Sample(root / name / f"img ({i}).jpg", label)
        for label, (name, n) in enumerate(counts.items())
        for i in range(n)
    ]
    return FolderScan(root=root, classes=classes, samples=samples)


def _val_paths(split) -> list[str]:
    return [str(s.path) for s in split.val]


def test_split_keeps_class_proportions():
    counts = {"a": 10, "b (2)": 23, "c": 7, "d": 40}
    scan = _fake_scan(counts)
    split = stratified_split(scan, val_fraction=0.2, seed=0)
    val_counts = Counter(split.classes[s.label] for s in split.val)
    train_counts = Counter(split.classes[s.label] for s in split.train)
    for name, n in counts.items():
        assert val_counts[name] == round(n * 0.2), name
        assert train_counts[name] == n - round(n * 0.2), name
    assert split.warnings == []
    assert split.classes == list(counts)
    # A partition: every sample exactly once.
    all_paths = [str(s.path) for s in split.train + split.val]
    assert sorted(all_paths) == sorted(str(s.path) for s in scan.samples)
    assert len(set(all_paths)) == len(all_paths)


def test_split_other_fraction():
    scan = _fake_scan({"a": 20, "b": 30})
    split = stratified_split(scan, val_fraction=0.5, seed=3)
    val_counts = Counter(s.label for s in split.val)
    assert val_counts == {0: 10, 1: 15}
    assert split.val_fraction == 0.5 and split.seed == 3


def test_small_class_keeps_at_least_one_for_each_side():
    scan = _fake_scan({"a": 2, "b": 3, "c": 20})
    split = stratified_split(scan, val_fraction=0.2, seed=0)
    val_counts = Counter(s.label for s in split.val)
    train_counts = Counter(s.label for s in split.train)
    assert val_counts[0] == 1 and train_counts[0] == 1
    assert val_counts[1] == 1 and train_counts[1] == 2


def test_split_is_deterministic_for_a_seed():
    scan = _fake_scan({"a": 30, "b": 30, "c": 30})
    first = stratified_split(scan, seed=7)
    second = stratified_split(scan, seed=7)
    assert _val_paths(first) == _val_paths(second)
    assert [str(s.path) for s in first.train] == [str(s.path) for s in second.train]


def test_split_does_not_depend_on_sample_order():
    scan = _fake_scan({"a": 30, "b": 30})
    reversed_scan = FolderScan(root=scan.root, classes=scan.classes, samples=list(reversed(scan.samples)))
    assert set(_val_paths(stratified_split(scan, seed=1))) == set(_val_paths(stratified_split(reversed_scan, seed=1)))


def test_split_differs_for_another_seed():
    scan = _fake_scan({"a": 30, "b": 30, "c": 30})
    assert set(_val_paths(stratified_split(scan, seed=0))) != set(_val_paths(stratified_split(scan, seed=1)))


def test_per_class_limit_caps_each_class():
    scan = _fake_scan({"a": 30, "b": 4, "c": 12})
    split = stratified_split(scan, val_fraction=0.25, seed=0, per_class_limit=5)
    totals = Counter(s.label for s in split.train + split.val)
    assert totals == {0: 5, 1: 4, 2: 5}
    val_counts = Counter(s.label for s in split.val)
    assert val_counts == {0: round(5 * 0.25), 1: round(4 * 0.25), 2: round(5 * 0.25)}
    assert split.per_class_limit == 5
    originals = {str(s.path) for s in scan.samples}
    assert all(str(s.path) in originals for s in split.train + split.val)
    # The subset drawn depends on the seed.
    other = stratified_split(scan, val_fraction=0.25, seed=1, per_class_limit=5)
    assert {str(s.path) for s in split.train + split.val} != {str(s.path) for s in other.train + other.val}


@pytest.mark.parametrize("limit", [0, 1, -3])
def test_per_class_limit_below_two_raises(limit):
    with pytest.raises(TransferlabError, match="per-class limit"):
        stratified_split(_fake_scan({"a": 5, "b": 5}), per_class_limit=limit)


def test_class_with_one_image_goes_to_train_with_warning():
    scan = _fake_scan({"lonely (1)": 1, "b": 10, "c": 10})
    split = stratified_split(scan, seed=0)
    lonely = [s for s in split.train if s.label == 0]
    assert len(lonely) == 1
    assert not [s for s in split.val if s.label == 0]
    assert len(split.warnings) == 1
    assert "lonely (1)" in split.warnings[0]


def test_single_class_raises():
    scan = _fake_scan({"only": 10})
    with pytest.raises(TransferlabError) as info:
        stratified_split(scan)
    assert "only" in str(info.value)
    assert "2 classes" in str(info.value)


def test_forced_classes_with_one_present_raises():
    scan = _fake_scan({"a": 10, "b": 0})
    with pytest.raises(TransferlabError):
        stratified_split(scan)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_bad_val_fraction_raises(fraction):
    with pytest.raises(TransferlabError, match="val fraction"):
        stratified_split(_fake_scan({"a": 10, "b": 10}), val_fraction=fraction)


def test_split_of_real_scan(messy_folder):
    for i in range(3, 8):
        _image(messy_folder / "nave" / f"n{i}.jpg")
    scan = scan_folder(messy_folder)
    split = stratified_split(scan, val_fraction=0.34, seed=0)
    assert Counter(s.label for s in split.val) == {0: 1, 1: 2}


# --- save_split / load_split --------------------------------------------------------------


def test_save_and_load_split_round_trip(tmp_path, messy_folder):
    for i in range(3, 8):
        _image(messy_folder / "dome(inner)" / f"apse ({i}).jpg")
    scan = scan_folder(messy_folder)
    split = stratified_split(scan, val_fraction=0.3, seed=11, per_class_limit=6)
    path = tmp_path / "out" / "split.json"
    save_split(split, path, messy_folder)

    loaded = load_split(path)
    assert loaded["root"] == str(messy_folder)
    assert loaded["seed"] == 11
    assert loaded["val_fraction"] == 0.3
    assert loaded["per_class_limit"] == 6
    assert loaded["classes"] == split.classes
    assert loaded["train"] == [
        [s.path.relative_to(messy_folder).as_posix(), split.classes[s.label]] for s in split.train
    ]
    assert loaded["val"] == [[s.path.relative_to(messy_folder).as_posix(), split.classes[s.label]] for s in split.val]
    # Relative names resolve back to the same files, parentheses and spaces included.
    rebuilt = {(str(messy_folder / name), cls) for name, cls in loaded["train"] + loaded["val"]}
    original = {(str(s.path), split.classes[s.label]) for s in split.train + split.val}
    assert rebuilt == original
    assert all(Path(p).is_file() for p, _ in rebuilt)
    assert not [p for p in path.parent.iterdir() if p.name != "split.json"]  # no temp file left


def test_save_split_keeps_paths_outside_root_absolute(tmp_path):
    scan = _fake_scan({"a": 4, "b": 4}, root=tmp_path / "elsewhere")
    split = stratified_split(scan, seed=0)
    path = tmp_path / "split.json"
    save_split(split, path, tmp_path / "other root")
    loaded = load_split(path)
    assert all(Path(name).is_absolute() for name, _ in loaded["train"] + loaded["val"])
