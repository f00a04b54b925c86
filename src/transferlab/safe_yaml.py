"""YAML from files a user or a run folder supplies (recipes, config.yaml): plain data only.

`yaml.safe_load` builds no objects, but it still honours anchors and aliases: a 334-byte
"billion laughs" file loads as shared references to one list, and the first `repr()` or
`str()` of it (an error message, a table cell) expands it to gigabytes. No file transferlab
writes uses them, so they are refused outright. A 5000-digit number (int() refuses it with
a ValueError) and nesting deep enough to exhaust the parser's recursion are refused too,
as is anything that is not a regular file of modest size: every failure is one line naming
the file.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path

import yaml

from transferlab.errors import TransferlabError

# Recipes and run configs are a few KiB; a file far beyond that is not one.
MAX_YAML_BYTES = 1 << 20

_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict, _short.maxstring, _short.maxother = 3, 6, 6, 60, 60


def short_repr(value: object) -> str:
    """repr() for an error message, bounded whatever the value holds (nesting, length, sharing)."""
    return _short.repr(value)


class PlainLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors (&a) and aliases (*a), the parts of YAML a bomb is made of."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not accepted",
                                              event.start_mark)
        return super().compose_node(parent, index)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{where}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def parse_yaml(text: str, where: str) -> object:
    """`text` as plain data, or a one-line TransferlabError that starts with `where`."""
    try:
        return yaml.load(text, Loader=PlainLoader)  # PlainLoader is a SafeLoader: plain data only
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # ValueError: int() refuses numbers of more than 4300 digits.
        raise TransferlabError(f"{where}: not valid YAML ({_reason(exc)})") from None


def read_yaml_file(path: str | os.PathLike, what: str = "YAML file") -> object:
    """A YAML file as plain data; a missing, special, oversized, non-UTF-8 or bad file is one line."""
    file = Path(path)
    try:
        info = os.stat(file)  # follows links: what matters is what would be read
    except OSError:
        raise TransferlabError(f"{file}: {what} not found") from None
    if not stat.S_ISREG(info.st_mode):
        # A FIFO blocks the read forever, /dev/zero never ends.
        raise TransferlabError(f"{file}: {what} is not a regular file")
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise TransferlabError(f"{file}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise TransferlabError(f"{file}: {what} is larger than {MAX_YAML_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TransferlabError(f"{file}: {what} is not UTF-8 text") from None
    return parse_yaml(text, str(file))


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper that writes a list or mapping met twice in full, never as an anchor and alias."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_yaml(data: object) -> str:
    """`data` as YAML that `parse_yaml` reads back: a shared object is written out again, not aliased."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True)
