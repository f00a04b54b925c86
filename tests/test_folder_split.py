"""Tests for `transferlab.data.folder` (scanning) and `transferlab.data.split` (splits)."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from transferlab.data import exclude as exclude_module
from transferlab.data import split as split_module
from transferlab.data.exclude import load_exclude
from transferlab.data.folder import FolderScan, Sample, scan_folder
from transferlab.data.layout import prepare_data
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


def test_load_split_round_trips_readable_non_ascii_names(tmp_path):
    root = tmp_path / "données"
    _image(root / "café" / "été (1).jpg")
    _image(root / "café" / "été (2).jpg", (10, 200, 30))
    _image(root / "thé" / "a.png", (200, 200, 30))
    _image(root / "thé" / "b.png", (20, 20, 230))
    split = stratified_split(scan_folder(root), val_fraction=0.5, seed=0)
    path = tmp_path / "split.json"
    save_split(split, path, root)
    assert "été (1).jpg" in path.read_text(encoding="utf-8")  # readable names are not \u-escaped
    loaded = load_split(path)
    assert {(root / name).is_file() for name, _ in loaded["train"] + loaded["val"]} == {True}


# --- non-UTF-8 file names -------------------------------------------------------------------


def _non_utf8_file(folder: Path, raw_name: bytes, source: Path) -> Path:
    """A file whose name is not valid UTF-8 (possible on Linux), with `source`'s bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(os.fsencode(folder) + b"/" + raw_name, os.O_WRONLY | os.O_CREAT, 0o644)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    return folder / os.fsdecode(raw_name)


def test_non_utf8_file_name_survives_split_json(tmp_path):
    root = tmp_path / "data"
    first = _image(root / "cat" / "a.jpg")
    _image(root / "dog" / "b.jpg", (0, 90, 0))
    _image(root / "dog" / "c.jpg", (0, 0, 90))
    odd = _non_utf8_file(root / "cat", b"caf\xe9.jpg", first)
    scan = scan_folder(root)
    assert odd in {s.path for s in scan.samples}
    split = stratified_split(scan, val_fraction=0.5, seed=0)
    path = tmp_path / "run" / "split.json"
    save_split(split, path, root)
    path.read_bytes().decode("utf-8")  # the file itself is strict UTF-8 (raises otherwise)
    loaded = load_split(path)
    names = [name for name, _ in loaded["train"] + loaded["val"]]
    raw_names = {os.fsencode(name) for name in names}
    assert b"cat/caf\xe9.jpg" in raw_names  # the same bytes come back
    assert all((root / name).is_file() for name in names)


# --- load_split on hostile files ----------------------------------------------------------

_GOOD_SPLIT = {"root": "/data", "seed": 0, "val_fraction": 0.2, "per_class_limit": None, "classes": ["a", "b"],
               "train": [["a/1.jpg", "a"]], "val": [["b/1.jpg", "b"]]}


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"{not json", "not a valid split file"),
        (b'{"root": "caf\xe9"}', "not a valid split file"),  # not UTF-8
        (b"[1, 2]", "JSON object"),
        (b"[" * 100_000, "not a valid split file"),  # nesting deep enough to exhaust the parser's recursion
        (json.dumps({**_GOOD_SPLIT, "seed": "0"}).encode(), "'seed'"),
        (json.dumps({**_GOOD_SPLIT, "seed": True}).encode(), "'seed'"),
        (json.dumps({**_GOOD_SPLIT, "root": None}).encode(), "'root'"),
        (json.dumps({**_GOOD_SPLIT, "val_fraction": "x"}).encode(), "'val_fraction'"),
        (json.dumps({**_GOOD_SPLIT, "per_class_limit": 2.5}).encode(), "'per_class_limit'"),
        (json.dumps({**_GOOD_SPLIT, "classes": []}).encode(), "'classes'"),
        (json.dumps({**_GOOD_SPLIT, "classes": [1, 2]}).encode(), "'classes'"),
        (json.dumps({**_GOOD_SPLIT, "train": {"a": 1}}).encode(), "'train' must be a list"),
        (json.dumps({**_GOOD_SPLIT, "val": [["b/1.jpg"]]}).encode(), "[path, class]"),
        (json.dumps({**_GOOD_SPLIT, "val": [["b/1.jpg", "zebra"]]}).encode(), "'zebra'"),
        (json.dumps({**_GOOD_SPLIT, "train": [["a/\u0000.jpg", "a"]]}).encode(), "NUL"),
        (json.dumps({**_GOOD_SPLIT, "train": [["", "a"]]}).encode(), "empty path"),
    ],
)
def test_load_split_rejects_malformed_files(tmp_path, content, expected):
    path = tmp_path / "split.json"
    path.write_bytes(content)
    with pytest.raises(TransferlabError) as info:
        load_split(path)
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "\n" not in message


def test_load_split_missing_and_oversized(tmp_path, monkeypatch):
    with pytest.raises(TransferlabError, match="not found"):
        load_split(tmp_path / "absent.json")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_GOOD_SPLIT))
    assert load_split(path) == _GOOD_SPLIT
    monkeypatch.setattr(split_module, "MAX_SPLIT_BYTES", 10)
    with pytest.raises(TransferlabError, match="larger than"):
        load_split(path)


# --- duplicates kept on one side of the split ---------------------------------------------


def _legacy_split(scan, val_fraction, seed, per_class_limit):
    """The split before duplicate grouping existed, verbatim: results made with it must reproduce."""
    rng = random.Random(seed)
    train, val = [], []
    by_class = {}
    for sample in scan.samples:
        by_class.setdefault(sample.label, []).append(sample)
    for _, group in sorted(by_class.items()):
        group = sorted(group, key=lambda s: str(s.path))
        rng.shuffle(group)
        if per_class_limit is not None:
            group = group[:per_class_limit]
        if len(group) < 2:
            train.extend(group)
            continue
        n_val = min(max(1, round(len(group) * val_fraction)), len(group) - 1)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


@pytest.mark.parametrize("seed, fraction, limit", [(0, 0.2, None), (7, 0.35, None), (3, 0.25, 6), (11, 0.5, 2)])
def test_split_without_duplicates_is_the_legacy_split(seed, fraction, limit):
    scan = _fake_scan({"a": 13, "b (2)": 1, "c": 9, "d": 30})
    legacy_train, legacy_val = _legacy_split(scan, fraction, seed, limit)
    for group_of in (None, {}):
        split = stratified_split(scan, fraction, seed, limit, group_of=group_of)
        assert split.train == legacy_train and split.val == legacy_val


def _sides(split) -> dict[Path, str]:
    return {s.path: "train" for s in split.train} | {s.path: "val" for s in split.val}


def test_duplicate_groups_stay_on_one_side_across_seeds():
    scan = _fake_scan({"a": 12, "b": 12})
    paths = [s.path for s in scan.samples]
    groups = {"g1": paths[0:3], "g2": paths[5:7], "cross": [paths[8], paths[14], paths[15]]}  # cross spans a and b
    group_of = {path: key for key, members in groups.items() for path in members}
    for seed in range(25):
        split = stratified_split(scan, 0.3, seed, group_of=group_of)
        sides = _sides(split)
        assert sorted(sides) == sorted(paths)  # still a partition
        for members in groups.values():
            assert len({sides[p] for p in members}) == 1, (seed, members)
        assert {s.label for s in split.val} == {0, 1} and {s.label for s in split.train} == {0, 1}
    again = stratified_split(scan, 0.3, 4, group_of=group_of)
    assert _sides(again) == _sides(stratified_split(scan, 0.3, 4, group_of=group_of))


def test_class_of_copies_only_gets_no_validation_and_a_warning():
    scan = _fake_scan({"copies": 3, "b": 10})
    group_of = {s.path: "same" for s in scan.samples if s.label == 0}
    split = stratified_split(scan, 0.3, 0, group_of=group_of)
    assert not [s for s in split.val if s.label == 0]
    assert any("copies" in w and "none for validation" in w for w in split.warnings)


def test_per_class_limit_takes_whole_groups():
    scan = _fake_scan({"a": 10, "b": 10})
    paths = [s.path for s in scan.samples]
    group_of = {p: "g" for p in paths[:4]}
    for seed in range(10):
        split = stratified_split(scan, 0.25, seed, per_class_limit=5, group_of=group_of)
        kept = {s.path for s in split.train + split.val}
        assert len([s for s in split.train + split.val if s.label == 0]) <= 5
        assert len(kept & set(paths[:4])) in (0, 4)  # a group is kept whole or left out whole


# --- prepare_data: layouts ----------------------------------------------------------------


_colours = iter(range(1, 250**3))


def _class_images(root: Path, counts: dict[str, int]) -> list[Path]:
    """Distinct images (each call and file its own colour, so no two are byte-identical) under root/<class>/."""
    made = []
    for name, n in counts.items():
        for i in range(n):
            code = next(_colours)
            made.append(_image(root / name / f"{name} {i}.png", (code % 250, code // 250 % 250, code // 62500)))
    return made


def test_prepare_class_folders_matches_stratified_split(tmp_path):
    root = tmp_path / "data"
    _class_images(root, {"cat": 9, "dog": 7})
    prepared = prepare_data(root, val_fraction=0.3, seed=5)
    reference = stratified_split(scan_folder(root), 0.3, 5)
    assert prepared.layout == "class folders" and prepared.root == root
    assert prepared.split.train == reference.train and prepared.split.val == reference.val
    assert prepared.test_scan is None and prepared.notes == []


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_prepare_pre_split_layout(tmp_path, val_name):
    root = tmp_path / "data"
    train = _class_images(root / "train", {"cat": 4, "dog": 3})
    val = _class_images(root / val_name, {"cat": 2, "dog": 2})
    test = _class_images(root / "test", {"cat": 1, "dog": 1})
    prepared = prepare_data(root, seed=3)
    assert prepared.layout == "pre-split"
    assert prepared.split.classes == ["cat", "dog"]  # not "train" and "val"
    assert sorted(s.path for s in prepared.split.train) == sorted(train)
    assert sorted(s.path for s in prepared.split.val) == sorted(val)
    assert sorted(s.path for s in prepared.test_scan.samples) == sorted(test)
    assert {prepared.split.classes[s.label] for s in prepared.split.val} == {"cat", "dog"}
    assert f"pre-split layout: train/ -> train, {val_name}/ -> validation, test/ -> test" in prepared.notes
    assert prepared.scan.root == root and len(prepared.scan.samples) == 11
    path = tmp_path / "split.json"
    save_split(prepared.split, path, prepared.root)
    names = [name for name, _ in load_split(path)["val"]]
    assert all(name.startswith(f"{val_name}/") for name in names)


def test_prepare_pre_split_per_class_limits_train_only(tmp_path):
    root = tmp_path / "data"
    _class_images(root / "train", {"cat": 6, "dog": 6})
    val = _class_images(root / "val", {"cat": 3, "dog": 3})
    prepared = prepare_data(root, per_class=2, seed=0)
    assert Counter(s.label for s in prepared.split.train) == {0: 2, 1: 2}
    assert sorted(s.path for s in prepared.split.val) == sorted(val)
    other = prepare_data(root, per_class=2, seed=1)
    assert {s.path for s in other.split.train} != {s.path for s in prepared.split.train}


def test_prepare_pre_split_errors(tmp_path):
    root = tmp_path / "data"
    _class_images(root / "train", {"cat": 2, "dog": 2})
    _class_images(root / "val", {"cat": 1, "bird": 1})
    with pytest.raises(TransferlabError) as info:
        prepare_data(root)
    message = str(info.value)
    assert str(root / "val") in message and "'dog'" in message and "'bird'" in message and "\n" not in message

    (root / "val" / "bird" / "bird 0.png").unlink()
    (root / "val" / "bird").rmdir()
    _class_images(root / "val", {"dog": 1})
    _class_images(root / "test", {"cat": 1, "dog": 1})
    elsewhere = _class_images(tmp_path / "other test", {"cat": 1})[0].parent.parent
    with pytest.raises(TransferlabError, match="own test/ folder"):
        prepare_data(root, test=elsewhere)

    (root / "validation").mkdir()
    with pytest.raises(TransferlabError, match="both val/ and validation/"):
        prepare_data(root)
    (root / "validation").rmdir()
    (root / "extra").mkdir()
    with pytest.raises(TransferlabError, match="'extra/'"):
        prepare_data(root)


def test_prepare_pre_split_test_classes_must_match(tmp_path):
    root = tmp_path / "data"
    _class_images(root / "train", {"cat": 2, "dog": 2})
    _class_images(root / "val", {"cat": 1, "dog": 1})
    _class_images(root / "test", {"cat": 1})
    with pytest.raises(TransferlabError) as info:
        prepare_data(root)
    assert str(root / "test") in str(info.value) and "missing 'dog'" in str(info.value)


def test_prepare_pre_split_reports_validation_leak(tmp_path):
    root = tmp_path / "data"
    train = _class_images(root / "train", {"cat": 3, "dog": 3})
    _class_images(root / "val", {"cat": 1, "dog": 1})
    (root / "val" / "cat" / "copy.png").write_bytes(train[0].read_bytes())
    notes = prepare_data(root).notes
    assert any("1 file(s) in val/ are byte-identical to files in train/" in note for note in notes)


def test_empty_class_folder_is_kept_and_named(tmp_path):
    root = tmp_path / "data"
    _class_images(root, {"cat": 3, "dog": 3})
    (root / "empty (1)").mkdir()
    scan = scan_folder(root)
    assert scan.classes == ["cat", "dog", "empty (1)"]
    assert scan.counts()["empty (1)"] == 0
    assert scan.warnings == ["class 'empty (1)' has no images (its folder is empty)"]
    prepared = prepare_data(root)
    assert "class 'empty (1)' has no images (its folder is empty)" in prepared.notes
    (root / "empty (1)" / "notes.txt").write_text("x")
    assert scan_folder(root).warnings == ["class 'empty (1)' has no images (1 file(s) in its folder skipped)"]


def test_prepare_keeps_copies_together_and_says_so(tmp_path):
    root = tmp_path / "data"
    made = _class_images(root, {"cat": 8, "dog": 8})
    for i in range(3):
        (root / "cat" / f"copy {i}.png").write_bytes(made[0].read_bytes())
    (root / "dog" / "filed twice.png").write_bytes(made[1].read_bytes())  # a cat image in dog too
    copies = [made[0]] + [root / "cat" / f"copy {i}.png" for i in range(3)]
    cross = [made[1], root / "dog" / "filed twice.png"]
    for seed in range(12):
        prepared = prepare_data(root, val_fraction=0.3, seed=seed)
        sides = _sides(prepared.split)
        assert len({sides[p] for p in copies}) == 1 and len({sides[p] for p in cross}) == 1
    assert "2 group(s) of byte-identical files (6 files) kept on one side of the train/validation split" in prepared.notes
    assert any("1 of them span classes" in note for note in prepared.notes)
    assert _sides(prepare_data(root, val_fraction=0.3, seed=2).split) == _sides(
        prepare_data(root, val_fraction=0.3, seed=2).split)


def test_prepare_checks_settings_before_scanning(tmp_path):
    with pytest.raises(TransferlabError, match="val fraction"):
        prepare_data(tmp_path / "missing", val_fraction=1.5)
    with pytest.raises(TransferlabError, match="not found"):
        prepare_data(tmp_path / "missing")


# --- exclude lists ------------------------------------------------------------------------


def test_scan_with_exclude_list(tmp_path):
    root = tmp_path / "data"
    made = _class_images(root, {"cat": 4, "#hash": 2, "dog": 3})
    _image(root / "dog" / "batch 2" / "x.png")
    exclude = tmp_path / "exclude.txt"
    exclude.write_text(
        "# transferlab exclude list\n\n"
        "cat/cat 0.png\n"
        f"{made[1]}\n"  # absolute paths work too
        "./#hash/#hash 0.png\n"  # a name starting with '#' is written with ./
        "dog/batch 2\n"  # a folder excludes everything below it
        "dog/../cat/cat 2.png\r\n"  # normalised; Windows line ends
        "cat/not there.png\n"
    )
    scan = scan_folder(root, exclude=exclude)
    names = {s.path.relative_to(root).as_posix() for s in scan.samples}
    assert names == {"cat/cat 3.png", "#hash/#hash 1.png", "dog/dog 0.png", "dog/dog 1.png", "dog/dog 2.png"}
    excluded = {s.path.relative_to(root).as_posix(): s for s in scan.skipped if s.excluded}
    assert set(excluded) == {"cat/cat 0.png", "cat/cat 1.png", "#hash/#hash 0.png", "dog/batch 2/x.png", "cat/cat 2.png"}
    assert {s.reason for s in excluded.values()} == {f"excluded by {exclude}"}
    assert load_exclude(exclude, root) >= {root / "cat" / "cat 0.png", root / "dog" / "batch 2"}
    notes = prepare_data(root, exclude=exclude).notes
    assert any("1 listed path(s) match no file" in note and "not there.png" in note for note in notes)


def test_exclude_list_with_non_utf8_name(tmp_path):
    root = tmp_path / "data"
    made = _class_images(root, {"cat": 2, "dog": 2})
    odd = _non_utf8_file(root / "cat", b"caf\xe9.png", made[0])
    exclude = tmp_path / "exclude.txt"
    exclude.write_bytes(b"cat/caf\xe9.png\n")
    scan = scan_folder(root, exclude=exclude)
    assert odd not in {s.path for s in scan.samples}
    assert [s.path for s in scan.skipped if s.excluded] == [odd]


def test_exclude_everything_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    _class_images(root, {"cat": 1, "dog": 1})
    exclude = tmp_path / "all.txt"
    exclude.write_text("cat\ndog\n")
    with pytest.raises(TransferlabError, match="no image files left after excluding"):
        scan_folder(root, exclude=exclude)


def test_hostile_exclude_lists(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _class_images(root, {"cat": 2, "dog": 2})
    cases = {"missing": (tmp_path / "absent.txt", "not found"), "folder": (root, "not a file")}
    binary = tmp_path / "image.png"
    binary.write_bytes(b"ok line\n\x89PNG\x00\x00")
    cases["binary"] = (binary, "NUL byte on line 2")
    for name, (path, expected) in cases.items():
        with pytest.raises(TransferlabError) as info:
            load_exclude(path, root)
        assert expected in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value), name
        with pytest.raises(TransferlabError):
            prepare_data(root, exclude=path)  # the pipelines fail before any heavy work too
    big = tmp_path / "big.txt"
    big.write_text("cat/x.png\n" * 20)
    monkeypatch.setattr(exclude_module, "MAX_EXCLUDE_BYTES", 100)
    with pytest.raises(TransferlabError, match="larger than"):
        load_exclude(big, root)


def test_unreadable_exclude_list(tmp_path, monkeypatch):
    path = tmp_path / "locked.txt"
    path.write_text("cat/a.png\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    # chmod cannot lock root out, so the refusal is simulated where the file is read.
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(TransferlabError) as info:
        load_exclude(path, tmp_path)
    assert str(info.value) == f"{path}: cannot read exclude list: Permission denied"


# --- links ----------------------------------------------------------------------------------


def test_folder_links_are_listed_not_followed(tmp_path):
    root = tmp_path / "data"
    _class_images(root, {"cat": 2, "dog": 2})
    outside = _class_images(tmp_path / "elsewhere", {"bird": 2})[0].parent
    (root / "cat" / "loop").symlink_to(".", target_is_directory=True)  # would repeat cat/ forever
    (root / "again").symlink_to(".", target_is_directory=True)  # the data folder as a "class"
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)  # cat's images filed twice
    (root / "bird").symlink_to(outside, target_is_directory=True)  # a class kept elsewhere: still a class
    scan = scan_folder(root)
    assert scan.classes == ["bird", "cat", "dog"]
    assert scan.counts() == {"bird": 2, "cat": 2, "dog": 2}
    reasons = {s.path.relative_to(root).as_posix(): s.reason for s in scan.skipped}
    assert reasons == {"cat/loop": "link to a folder: not followed",
                       "again": "link back into the data folder: not a class",
                       "kitten": "link back into the data folder: not a class"}


def test_train_per_class_keeps_validation_and_nests(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=12, size=24)
    full = prepare_data(root, seed=3).split
    small, smaller = (prepare_data(root, seed=3, train_per_class=n).split for n in (6, 3))
    assert [s.path for s in small.val] == [s.path for s in full.val]  # the same validation images
    assert [s.path for s in smaller.val] == [s.path for s in full.val]
    assert set(Counter(s.label for s in small.train).values()) == {6}
    assert set(Counter(s.label for s in smaller.train).values()) == {3}
    assert {s.path for s in smaller.train} < {s.path for s in small.train} < {s.path for s in full.train}
    assert prepare_data(root, seed=3, per_class=6).split.val != full.val  # per_class shrinks validation too
    with pytest.raises(TransferlabError, match="training images per class must be a whole number of at least 1"):
        prepare_data(root, train_per_class=0)
    save_split(small, tmp_path / "split.json", root)
    assert load_split(tmp_path / "split.json")["train_limit"] == 6


def test_a_test_folder_that_repeats_the_training_images_is_reported(tmp_path):
    """`auto data --test data` reported test accuracy far above validation, with no warning."""
    import shutil

    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=6)
    prepared = prepare_data(data, data)
    assert any("18 of 18 test file(s) are also training or validation images" in n for n in prepared.notes)
    copy = tmp_path / "test"
    shutil.copytree(data, copy)  # byte-identical copies under other names
    (copy / "circle" / "img (0).jpg").rename(copy / "circle" / "renamed.jpg")
    assert any("18 of 18 test file(s)" in n for n in prepare_data(data, copy).notes)
    held_out = make_image_folder(tmp_path / "held-out", per_class=2, size=40)  # other pixels
    assert not any("test file(s)" in n for n in prepare_data(data, held_out).notes)
