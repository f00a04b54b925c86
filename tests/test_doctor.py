"""Tests for `transferlab.data.doctor`: every finding on small folders generated with PIL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data import doctor
from transferlab.data.doctor import DoctorReport, run_doctor
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
