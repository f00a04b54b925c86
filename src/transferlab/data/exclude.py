"""Exclude lists: a plain text file naming files (or folders) to leave out of a data folder.

One path per line, relative to the data folder (absolute paths are accepted too, e.g. for a
test folder elsewhere); lines starting with '#' are comments, blank lines are ignored. A path
that itself starts with '#' is written as './#...'. Names are read and written with
'surrogateescape', so a file name that is not valid UTF-8 round-trips byte for byte.
`transferlab doctor --write-exclude FILE` writes one; `--exclude FILE` applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.atomic import write_bytes
from transferlab.data.names import printable
from transferlab.errors import TransferlabError

HEADER = "# transferlab exclude list"
# Refuse to read more than this: an exclude list of a million paths is a few tens of MB.
MAX_EXCLUDE_BYTES = 256 * 1024 * 1024


def _normal(path: str | os.PathLike) -> Path:
    """Lexically normalised absolute form, so 'data/./a.jpg' and 'data/x/../a.jpg' compare equal."""
    return Path(os.path.normpath(os.path.abspath(os.path.expanduser(path))))


@dataclass
class ExcludeList:
    """Loaded exclude list: normalised absolute paths, and which of them matched something."""

    source: str  # the file as the user named it; skip reasons cite it
    paths: frozenset[Path]
    matched: set[Path] = field(default_factory=set)

    def excludes(self, path: Path) -> bool:
        """True if `path` or a folder above it is listed (a listed folder excludes all below it)."""
        candidate = _normal(path)
        for entry in (candidate, *candidate.parents):
            if entry in self.paths:
                self.matched.add(entry)
                return True
        return False

    def unmatched(self) -> list[Path]:
        return sorted(self.paths - self.matched)


def load_exclude(path: str | os.PathLike, root: str | os.PathLike) -> set[Path]:
    """The paths listed in exclude file `path`, made absolute against data folder `root`.

    Raises TransferlabError (one line, naming the file) if it is missing, unreadable, too
    large, or not text.
    """
    return set(read_exclude(path, root).paths)


def read_exclude(path: str | os.PathLike, root: str | os.PathLike) -> ExcludeList:
    """`load_exclude` as an ExcludeList, which records its source for skip reasons."""
    data = _read_bytes(Path(path))
    base = _normal(root)
    entries = set()
    for number, line in enumerate(data.split(b"\n"), start=1):
        if b"\x00" in line:
            raise TransferlabError(f"{path}: not a text exclude list (NUL byte on line {number})")
        text = line.rstrip(b"\r").decode("utf-8", "surrogateescape")
        if not text.strip() or text.startswith("#"):
            continue
        entries.add(_normal(base / text))  # an absolute line replaces the base
    return ExcludeList(source=str(path), paths=frozenset(entries))


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.exists():
            raise TransferlabError(f"{path}: exclude list not found")
        if not path.is_file():
            raise TransferlabError(f"{path}: exclude list is not a file")
        if path.stat().st_size > MAX_EXCLUDE_BYTES:
            raise TransferlabError(f"{path}: exclude list is larger than {MAX_EXCLUDE_BYTES >> 20} MiB")
        return path.read_bytes()
    except OSError as exc:
        raise TransferlabError(f"{path}: cannot read exclude list: {exc.strerror or exc}") from None


def format_exclude(sections: list[tuple[str, list[Path]]], root: Path) -> bytes:
    """The exclude file text: a header, then per section a '# comment' line and its paths.

    A path already written in an earlier section is not repeated.
    """
    lines = [HEADER, f"# paths are relative to {printable(str(root))}; '#' starts a comment"]
    seen: set[Path] = set()
    for comment, paths in sections:
        fresh = [p for p in paths if p not in seen]
        seen.update(fresh)
        if fresh:
            lines += ["", f"# {printable(comment)}"]
            lines += [_entry(path, root) for path in fresh]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _entry(path: Path, root: Path) -> str:
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = str(path)
    if "\n" in name or "\r" in name:
        # A line-based list cannot hold it; say so rather than write a broken line.
        return f"# cannot list (line break in the name): {printable(repr(name))}"
    return f"./{name}" if name.startswith("#") else name


def write_exclude_file(path: str | os.PathLike, sections: list[tuple[str, list[Path]]], root: Path) -> None:
    """Write an exclude list atomically; never overwrite a file that is not one (no user file is lost)."""
    target = Path(path)
    if target.is_symlink():  # the atomic write would replace the link itself with a file
        raise TransferlabError(f"{target}: is a link; give the real file as the exclude list")
    if target.exists():
        if not target.is_file():
            raise TransferlabError(f"{target}: exists and is not a file; choose another exclude list name")
        try:
            with target.open("rb") as handle:
                first = handle.read(len(HEADER))
        except OSError as exc:
            raise TransferlabError(f"{target}: cannot read: {exc.strerror or exc}") from None
        if first != HEADER.encode():
            raise TransferlabError(f"{target}: exists and is not a transferlab exclude list; not overwriting it")
    write_bytes(target, format_exclude(sections, root))
