"""Tests for `transferlab.data.doctor`: every finding on small folders generated with PIL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data import doctor, duplicates
from transferlab.data.doctor import DoctorReport, run_doctor
from transferlab.data.exclude import format_exclude, load_exclude
from transferlab.data.names import printable
from transferlab.errors import TransferlabError

_seed = iter(range(1_000_000))


def make_image(path: Path, size: tuple[int, int] = (40, 40), fmt: str | None = None) -> Path:
    """Write a noise image; each call gets a new seed so no two files are byte-identical by accident."""
    rng = np.random.default_rng(next(_seed))
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_class(root: Path, name: str, count: int) -> list[Path]:
    return [make_image(root / name / f"img{i}.jpg") for i in range(count)]


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def unreadable_paths(report: DoctorReport) -> dict[Path, str]:
    return dict(report.unreadable)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "train"


def test_counts_per_class(root: Path) -> None:
    make_class(root, "cat", 3)
    make_class(root, "dog", 2)
    report = run_doctor(root)
    assert report.classes == ["cat", "dog"]
    assert report.counts == {"cat": 3, "dog": 2}
    assert report.test_counts is None
    assert report.imbalance_ratio == pytest.approx(1.5)
    assert report.unreadable == [] and report.duplicate_groups == [] and report.tiny == []
    assert report.warnings == []
    lines = report.summary_lines()
    assert "  cat: 3" in lines and "  dog: 2" in lines


def test_non_image_file_listed_with_reason(root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    notes = root / "cat" / "notes.txt"
    notes.write_text("collected in 2019")
    report = run_doctor(root)
    assert "not an image" in unreadable_paths(report)[notes]
    assert report.counts["cat"] == 2


def test_file_outside_class_folders_listed(root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    stray = make_image(root / "stray.jpg")
    report = run_doctor(root)
    assert "not inside a class folder" in unreadable_paths(report)[stray]
    assert sum(report.counts.values()) == 4


def test_truncated_jpeg_is_unreadable(root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    broken = make_image(root / "dog" / "broken.jpg", size=(64, 64))
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    report = run_doctor(root)
    reasons = unreadable_paths(report)
    assert broken in reasons
    assert "truncated" in reasons[broken]
    assert report.counts == {"cat": 2, "dog": 2}
    assert "1 unreadable or non-image file" in report.summary_lines()


def test_zero_byte_file_is_unreadable(root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    empty = root / "cat" / "empty.png"
    empty.write_bytes(b"")
    report = run_doctor(root)
    assert unreadable_paths(report)[empty] == "empty file (0 bytes)"
    assert report.counts["cat"] == 2
    # An empty file next to another empty file is not a "duplicate" worth reporting.
    copy(empty, root / "dog" / "empty.png")
    assert run_doctor(root).duplicate_groups == []


def test_unexpected_decoder_exception_does_not_crash(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    bad = root / "dog" / "img1.jpg"
    real_load = doctor.load_rgb

    def flaky_load(path, *args, **kwargs):
        if Path(path) == bad:
            raise IndexError("tile index out of range")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(doctor, "load_rgb", flaky_load)
    report = run_doctor(root)
    assert "IndexError" in unreadable_paths(report)[bad]
    assert report.counts == {"cat": 2, "dog": 1}


def test_class_with_only_unreadable_files_counts_zero(root: Path) -> None:
    make_class(root, "cat", 2)
    (root / "dog").mkdir()
    (root / "dog" / "a.jpg").write_bytes(b"not a jpeg")
    report = run_doctor(root)
    assert report.counts == {"cat": 2, "dog": 0}
    assert "class 'dog' has no readable images" in report.warnings
    assert report.imbalance_ratio == pytest.approx(1.0)


def test_duplicates_within_a_class(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    twin = copy(cats[0], root / "cat" / "copy of img0.jpg")
    report = run_doctor(root)
    assert report.duplicate_groups == [sorted([cats[0], twin])]
    assert report.label_conflicts == []
    lines = report.summary_lines()
    assert "1 pair of byte-identical files" in lines
    assert "0 label conflicts (same file in different classes)" in lines


def test_duplicate_across_classes_is_a_label_conflict(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    dogs = make_class(root, "dog", 2)
    twin = copy(cats[1], root / "dog" / "maybe a dog.jpg")
    same_class_twin = copy(dogs[0], root / "dog" / "again.jpg")
    report = run_doctor(root)
    assert len(report.duplicate_groups) == 2
    assert report.label_conflicts == [sorted([cats[1], twin])]
    assert sorted([dogs[0], same_class_twin]) in report.duplicate_groups
    lines = report.summary_lines()
    assert "2 pairs of byte-identical files" in lines
    assert "1 label conflict (same file in different classes)" in lines


def test_group_of_three_copies(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    copy(cats[0], root / "cat" / "b.jpg")
    copy(cats[0], root / "dog" / "c.jpg")
    report = run_doctor(root)
    assert len(report.duplicate_groups) == 1 and len(report.duplicate_groups[0]) == 3
    assert len(report.label_conflicts) == 1
    assert "1 group of byte-identical files (3 files)" in report.summary_lines()


def test_same_size_different_content_is_not_a_duplicate(root: Path) -> None:
    # Uncompressed BMPs of one size have equal byte counts: the size pre-filter must not decide alone.
    a = make_image(root / "cat" / "a.bmp", fmt="BMP")
    b = make_image(root / "dog" / "b.bmp", fmt="BMP")
    assert a.stat().st_size == b.stat().st_size
    report = run_doctor(root)
    assert report.duplicate_groups == []
    assert report.counts == {"cat": 1, "dog": 1}


def test_train_test_leak(tmp_path: Path, root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    test_root = tmp_path / "test"
    make_class(test_root, "cat", 1)
    make_class(test_root, "dog", 1)
    leaked = copy(cats[0], test_root / "dog" / "leaked.jpg")
    report = run_doctor(root, test_root)
    assert report.test_leaks == [(cats[0], leaked)]
    assert report.test_counts == {"cat": 1, "dog": 2}
    assert report.duplicate_groups == []  # a train/test copy is a leak, not a train duplicate
    assert "1 train/test leak (same file in both)" in report.summary_lines()
    assert "  cat/img0.jpg == test:dog/leaked.jpg" in report.summary_lines()


def test_test_folder_class_mismatch_and_bad_files(tmp_path: Path, root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    test_root = tmp_path / "test"
    make_class(test_root, "cat", 1)
    make_class(test_root, "bird", 1)
    bad = test_root / "cat" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    report = run_doctor(root, test_root)
    assert report.test_counts == {"bird": 1, "cat": 1}
    assert "class 'bird' is in test but not in train" in report.warnings
    assert "class 'dog' has no test images" in report.warnings
    assert bad in unreadable_paths(report)
    assert report.test_leaks == []


def test_hidden_files_listed_and_not_counted(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    ds_store = root / ".DS_Store"
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1")
    inner_ds_store = root / "cat" / ".DS_Store"
    inner_ds_store.write_bytes(b"\x00\x00\x00\x01Bud1")
    apple_double = root / "dog" / "._foo.jpg"
    apple_double.write_bytes(b"\x00\x05\x16\x07")
    checkpoints = root / "cat" / ".ipynb_checkpoints"
    copy(cats[0], checkpoints / "img0-checkpoint.jpg")
    report = run_doctor(root)
    assert set(report.hidden) == {ds_store, inner_ds_store, apple_double, checkpoints}
    assert report.counts == {"cat": 2, "dog": 2}
    assert report.unreadable == []
    assert report.duplicate_groups == []  # the checkpoint copy is not data
    assert "4 hidden files or folders (ignored)" in report.summary_lines()


def test_tiny_image(root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    small = make_image(root / "dog" / "small.png", size=(8, 8))
    narrow = make_image(root / "dog" / "narrow.png", size=(100, 20))
    report = run_doctor(root)
    assert sorted(report.tiny) == sorted([(small, 8, 8), (narrow, 100, 20)])
    assert report.counts["dog"] == 4  # tiny images are still images
    assert run_doctor(root, min_side=8).tiny == []


def test_imbalance_warning(root: Path) -> None:
    make_class(root, "big", 7)
    make_class(root, "small", 2)
    report = run_doctor(root)
    assert report.imbalance_ratio == pytest.approx(3.5)
    assert any("imbalanced" in w and "'big' has 7" in w and "'small' has 2" in w for w in report.warnings)
    relaxed = run_doctor(root, imbalance_threshold=4.0)
    assert not any("imbalanced" in w for w in relaxed.warnings)


def test_class_with_one_image_warning(root: Path) -> None:
    make_class(root, "cat", 1)
    make_class(root, "dog", 1)
    report = run_doctor(root)
    assert "class 'cat' has 1 image" in report.warnings
    assert "class 'dog' has 1 image" in report.warnings


def test_one_class_is_a_warning_not_an_error(root: Path) -> None:
    make_class(root, "cat", 3)
    report = run_doctor(root)
    assert report.counts == {"cat": 3}
    assert any("only one class" in w for w in report.warnings)


def test_paths_with_spaces_and_parentheses(root: Path) -> None:
    apse = make_image(root / "dome(inner)" / "apse (1).jpg")
    twin = copy(apse, root / "dome(outer)" / "apse (2).jpg")
    make_image(root / "dome(outer)" / "tower 3.jpg")
    report = run_doctor(root)
    assert report.classes == ["dome(inner)", "dome(outer)"]
    assert report.counts == {"dome(inner)": 1, "dome(outer)": 2}
    assert report.label_conflicts == [[apse, twin]]
    data = report.to_dict()
    assert data["label_conflicts"] == [["dome(inner)/apse (1).jpg", "dome(outer)/apse (2).jpg"]]
    assert "  dome(inner)/apse (1).jpg == dome(outer)/apse (2).jpg" in report.summary_lines()


def test_empty_folder_raises(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TransferlabError, match="no class subfolders"):
        run_doctor(empty)
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("x")
    with pytest.raises(TransferlabError, match="no image files"):
        run_doctor(empty)
    with pytest.raises(TransferlabError, match="not found"):
        run_doctor(tmp_path / "missing")


def test_to_dict_round_trips_through_json(tmp_path: Path, root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 1)
    (root / "cat" / "notes.txt").write_text("x")
    (root / ".DS_Store").write_bytes(b"x")
    make_image(root / "dog" / "tiny.png", size=(4, 4))
    copy(cats[0], root / "dog" / "dup.jpg")
    test_root = tmp_path / "test"
    leaked = copy(cats[1], test_root / "cat" / "leak.jpg")
    data = run_doctor(root, test_root).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["counts"] == {"cat": 2, "dog": 3}
    assert data["test_counts"] == {"cat": 1}
    assert data["unreadable"] == [{"path": "cat/notes.txt", "reason": "not an image file (suffix '.txt')"}]
    assert data["hidden"] == [".DS_Store"]
    assert data["duplicate_groups"] == [["cat/img0.jpg", "dog/dup.jpg"]]
    assert data["label_conflicts"] == data["duplicate_groups"]
    # Test files are not under the train root, so they stay absolute.
    assert data["test_leaks"] == [{"train": "cat/img1.jpg", "test": str(leaked)}]
    assert data["tiny"] == [{"path": "dog/tiny.png", "width": 4, "height": 4}]
    assert data["root"] == str(root)


def test_progress_bar_goes_to_stderr(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    report = run_doctor(root, progress=True)
    assert report.counts == {"cat": 2, "dog": 2}
    assert "decoding" in capsys.readouterr().err


# --- near-duplicates ----------------------------------------------------------------------


def make_photo(path: Path, seed: int, size: int = 96) -> Path:
    """A smooth, photo-like image (noise is the worst case for perceptual hashes, photos are not).

    Seeded explicitly, so a test's images (and their hash distances) do not depend on test order.
    """
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    small.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def make_photos(root: Path, name: str, count: int, seed: int) -> list[Path]:
    return [make_photo(root / name / f"img{i}.jpg", seed + i) for i in range(count)]


def resized_copy(src: Path, dst: Path, factor: float = 2.0, fmt: str | None = None, quality: int = 90) -> Path:
    """A copy that is not byte-identical: resized (and re-encoded when `dst` is a JPEG)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        size = (round(image.width * factor), round(image.height * factor))
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(dst, format=fmt, quality=quality)
    return dst


def test_resized_and_reencoded_copies_are_near_duplicates(root: Path) -> None:
    cats = make_photos(root, "cat", 3, seed=100)
    make_photos(root, "dog", 3, seed=200)
    bigger = resized_copy(cats[0], root / "cat" / "bigger.png")
    smaller = resized_copy(cats[1], root / "cat" / "smaller.jpg", factor=0.75, quality=60)
    report = run_doctor(root)
    pairs = {(a, b) for a, b, _ in report.near_duplicates}
    assert pairs == {tuple(sorted([cats[0], bigger])), tuple(sorted([cats[1], smaller]))}
    assert all(0 <= d <= report.near_distance for _, _, d in report.near_duplicates)
    assert report.duplicate_groups == [] and report.near_conflicts == [] and report.problems() == []
    assert "2 near-duplicate pairs (resized or re-encoded copies: hash distance <= 4 of 64 bits)" in report.summary_lines()
    assert run_doctor(root, near_distance=None).near_duplicates == []
    for bad in (-1, 65):
        with pytest.raises(TransferlabError, match="between 0 and 64"):
            run_doctor(root, near_distance=bad)


def test_byte_identical_copy_is_not_also_a_near_duplicate(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    copy(cats[0], root / "cat" / "twin.jpg")
    report = run_doctor(root)
    assert len(report.duplicate_groups) == 1 and report.near_duplicates == []


def test_near_duplicate_across_classes_is_a_conflict_and_a_problem(root: Path) -> None:
    cats = make_photos(root, "cat", 2, seed=300)
    make_photos(root, "dog", 2, seed=400)
    moved = resized_copy(cats[0], root / "dog" / "a dog?.png", factor=1.5)
    report = run_doctor(root)
    assert [(a, b) for a, b, _ in report.near_conflicts] == [(cats[0], moved)]
    assert report.problems() == []  # near findings are for review: --strict counts exact ones
    assert report.problems(near=True) == ["1 near-duplicate label conflict (similar image in different classes)"]
    assert any(line.endswith("[different classes]") for line in report.summary_lines())
    assert "check: 1 near-duplicate label conflict (similar image in different classes)" in report.summary_lines()


def test_near_duplicate_leak_into_test(tmp_path: Path, root: Path) -> None:
    cats = make_photos(root, "cat", 2, seed=500)
    make_photos(root, "dog", 2, seed=600)
    test_root = tmp_path / "test"
    make_photos(test_root, "cat", 1, seed=700)
    make_photos(test_root, "dog", 1, seed=800)
    leaked = resized_copy(cats[1], test_root / "cat" / "leaked.jpg", factor=0.8, quality=70)
    report = run_doctor(root, test_root)
    assert [(a, b) for a, b, _ in report.near_leaks] == [(cats[1], leaked)]
    assert report.test_leaks == []
    assert report.problems(near=True) == ["1 near-duplicate train/test leak (similar image in both)"]
    assert report.to_dict()["near_leaks"][0]["train"] == "cat/img1.jpg"


def test_problems_for_exact_conflicts_and_leaks(tmp_path: Path, root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    assert run_doctor(root).problems() == []
    copy(cats[0], root / "dog" / "x.jpg")
    test_root = tmp_path / "test"
    make_class(test_root, "dog", 1)
    copy(cats[1], test_root / "cat" / "y.jpg")
    report = run_doctor(root, test_root)
    assert report.problems() == [
        "1 label conflict (same file in different classes)",
        "1 train/test leak (same file in both)",
    ]
    assert report.to_dict()["problems"] == report.problems()


# --- exclude lists ------------------------------------------------------------------------


def test_write_exclude_lists_what_to_leave_out(tmp_path: Path, root: Path) -> None:
    cats = make_photos(root, "cat", 3, seed=900)
    dogs = make_photos(root, "dog", 3, seed=1000)
    twin = copy(cats[0], root / "cat" / "twin.jpg")
    third = copy(cats[0], root / "cat" / "third.jpg")
    near = resized_copy(dogs[0], root / "dog" / "bigger.png")
    conflict = copy(cats[1], root / "dog" / "conflict.jpg")
    broken = root / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    test_root = tmp_path / "test"
    make_photos(test_root, "cat", 1, seed=1100)
    copy(dogs[1], test_root / "dog" / "leak.jpg")
    report = run_doctor(root, test_root)
    path = tmp_path / "exclude.txt"
    report.write_exclude(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# transferlab exclude list"
    listed = [line for line in lines if line and not line.startswith("#")]
    assert len(listed) == len(set(listed))
    # One of each group stays (the first by path), every copy of a conflict goes, and the leak's train copy.
    kept_of_group = min(cats[0], twin, third)
    expected = {broken, *({cats[0], twin, third} - {kept_of_group}), max(dogs[0], near), cats[1], conflict, dogs[1]}
    assert {root / line for line in listed} == expected
    assert load_exclude(path, root) == expected

    # Applying it: the doctor (and the pipelines) leave those files out and list them.
    again = run_doctor(root, test_root, exclude=path)
    assert again.problems() == [] and again.duplicate_groups == [] and again.near_duplicates == []
    assert {p for p, _ in again.excluded} == expected
    assert all(reason == f"excluded by {path}" for _, reason in again.excluded)
    assert not set(again.excluded) & set(again.unreadable)
    assert again.counts == {"cat": 2, "dog": 2}  # cat: 5 files less 2 copies and 1 conflict
    # Rewriting the list the doctor ran with keeps what it already excluded.
    again.write_exclude(path)
    assert load_exclude(path, root) == expected
    assert f"# already excluded (by {path})" in path.read_text().splitlines()


def test_write_exclude_never_overwrites_a_user_file(tmp_path: Path, root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    report = run_doctor(root)
    for victim in (cats[0], tmp_path / "notes.txt"):
        if not victim.exists():
            victim.write_text("my notes")
        before = victim.read_bytes()
        with pytest.raises(TransferlabError, match="not a transferlab exclude list"):
            report.write_exclude(victim)
        assert victim.read_bytes() == before
    with pytest.raises(TransferlabError, match="not a file"):
        report.write_exclude(root)
    link = tmp_path / "exclude-link.txt"
    link.symlink_to(tmp_path / "nowhere.txt")  # a dangling link: the write would replace the link itself
    with pytest.raises(TransferlabError, match="is a link"):
        report.write_exclude(link)
    assert link.is_symlink()


def test_doctor_with_missing_exclude_list_fails_in_one_line(tmp_path: Path, root: Path) -> None:
    make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    with pytest.raises(TransferlabError) as info:
        run_doctor(root, exclude=tmp_path / "nope.txt")
    assert str(info.value) == f"{tmp_path / 'nope.txt'}: exclude list not found"


# --- pre-split folders --------------------------------------------------------------------


def test_pre_split_folder_is_checked_as_one_data_set(tmp_path: Path) -> None:
    data = tmp_path / "data"
    trains = make_class(data / "train", "cat", 2) + make_class(data / "train", "dog", 2)
    make_class(data / "val", "cat", 1)
    make_class(data / "val", "dog", 1)
    leak = copy(trains[0], data / "val" / "cat" / "again.jpg")
    make_class(data / "test", "cat", 1)
    make_class(data / "test", "dog", 1)
    report = run_doctor(data)
    assert report.layout == "pre-split" and report.classes == ["cat", "dog"]
    assert report.counts == {"cat": 4, "dog": 3} and report.test_counts == {"cat": 1, "dog": 1}
    assert "pre-split layout: train/ -> train, val/ -> validation, test/ -> test" in report.notes
    assert report.val_leaks == [(trains[0], leak, 0)]
    assert report.problems() == ["1 train/val leak (same or similar image in train/ and val/)"]
    assert report.to_dict()["val_leaks"] == [{"train": "train/cat/img0.jpg", "val": "val/cat/again.jpg",
                                               "distance": 0}]


def test_pre_split_class_mismatch_is_a_note_in_the_doctor(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_class(data / "train", "cat", 2)
    make_class(data / "train", "dog", 2)
    make_class(data / "val", "cat", 1)
    bird = make_class(data / "val", "bird", 1)[0]
    report = run_doctor(data)
    assert any(str(data / "val") in note and "missing 'dog'" in note for note in report.notes)
    assert "not a training class" in dict(report.unreadable)[bird]


# --- file names that are not UTF-8 ----------------------------------------------------------


def test_non_utf8_names_print_under_strict_utf8(root: Path) -> None:
    cats = make_class(root, "cat", 2)
    make_class(root, "dog", 2)
    try:
        fd = os.open(os.fsencode(root / "cat") + b"/caf\xe9.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with os.fdopen(fd, "wb") as handle:
        handle.write(cats[0].read_bytes())
    report = run_doctor(root)
    assert report.duplicate_groups and any("\udce9" in str(p) for p in report.duplicate_groups[0])
    text = "\n".join(report.summary_lines())
    text.encode("utf-8")  # a strict stdout accepts every line (raises otherwise)
    assert "  cat/caf\\xe9.jpg == cat/img0.jpg" in report.summary_lines()
    data = report.to_dict()
    json.dumps(data, ensure_ascii=False).encode("utf-8")
    assert data["duplicate_groups"] == [["cat/caf\\xe9.jpg", "cat/img0.jpg"]]


def test_printable() -> None:
    assert printable("plain café (1).jpg") == "plain café (1).jpg"
    assert printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert printable("odd \ud800 surrogate") == "odd \\ud800 surrogate"


# --- duplicates helpers -------------------------------------------------------------------


def test_near_pairs_match_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(60, 2), dtype=np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits off in pHash
    hashes[20] = hashes[3] ^ np.array([0, 0b11111], dtype=np.uint64)  # 5 bits off in dHash: too far
    others = np.concatenate([hashes[[3, 50]] ^ np.uint64(1), rng.integers(0, 2**63, size=(5, 2), dtype=np.uint64)])

    def distance(a, b) -> int:
        return max((int(a[0]) ^ int(b[0])).bit_count(), (int(a[1]) ^ int(b[1])).bit_count())

    expected_within = [(i, j, distance(hashes[i], hashes[j])) for i in range(60) for j in range(i + 1, 60)
                       if distance(hashes[i], hashes[j]) <= 4]
    expected_across = [(i, j, distance(hashes[i], others[j])) for i in range(60) for j in range(len(others))
                       if distance(hashes[i], others[j]) <= 4]
    assert duplicates.near_pairs(hashes) == expected_within
    assert (3, 7, 3) in expected_within and not any(p[:2] == (3, 20) for p in expected_within)
    assert sorted(duplicates.near_pairs(hashes, others)) == expected_across
    assert {(3, 0, 1), (50, 1, 1)} <= set(expected_across)  # the planted copies, 1 bit off
    # Small blocks (as with a very large data set) give the same pairs.
    original = duplicates._BLOCK_ELEMENTS
    try:
        duplicates._BLOCK_ELEMENTS = 7
        assert duplicates.near_pairs(hashes) == expected_within
    finally:
        duplicates._BLOCK_ELEMENTS = original


def test_connected_groups_join_chains() -> None:
    items = ["a", "b", "c", "d", "e"]
    assert sorted(duplicates.connected_groups(items, [(0, 2), (2, 4)])) == [["a", "c", "e"]]
    assert duplicates.connected_groups(items, []) == []


def test_exclude_file_entries_that_need_care(tmp_path: Path) -> None:
    root = tmp_path / "data"
    sections = [("odd names", [root / "#1" / "a.jpg", root / "cat" / "two\nlines.jpg", tmp_path / "elsewhere.jpg"])]
    text = format_exclude(sections, root).decode()
    assert "./#1/a.jpg" in text.splitlines()
    assert "# cannot list (line break in the name): 'cat/two\\nlines.jpg'" in text.splitlines()
    assert str(tmp_path / "elsewhere.jpg") in text.splitlines()
    path = tmp_path / "exclude.txt"
    path.write_text(text)
    assert load_exclude(path, root) == {root / "#1" / "a.jpg", tmp_path / "elsewhere.jpg"}


def test_write_exclude_without_near_sections(tmp_path: Path, root: Path) -> None:
    dogs = make_photos(root, "dog", 2, seed=1200)
    make_photos(root, "cat", 2, seed=1300)
    near = resized_copy(dogs[0], root / "dog" / "bigger.png")
    report = run_doctor(root)
    assert report.near_duplicates
    path = tmp_path / "exclude.txt"
    report.write_exclude(path, near=False)
    assert load_exclude(path, root) == set()
    report.write_exclude(path)
    assert load_exclude(path, root) == {max(dogs[0], near)}
