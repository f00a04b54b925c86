"""File names that are not valid UTF-8: print them, and store them so they come back intact.

On Linux a file name is bytes. Python decodes it with `os.fsdecode`, turning each byte that
is not valid UTF-8 into a lone surrogate (b'caf\\xe9.jpg' -> 'caf\\udce9.jpg'). Such a string
opens the right file, but cannot be written to a strict UTF-8 stream: printing it or saving it
in a UTF-8 JSON file raises UnicodeEncodeError. These helpers are the two ways round that.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transferlab.atomic import write_bytes


def printable(text: str) -> str:
    """`text` with each undecodable byte shown as a visible `\\xNN` escape (for people, not for reopening).

    Text without lone surrogates comes back unchanged, so ordinary names print as they are.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        # Back to the original bytes, then decode again showing each bad byte as \xNN.
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate outside U+DC80..U+DCFF did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented JSON in valid UTF-8 that `json.loads` turns back into the same strings.

    Readable names stay readable (no ASCII escaping); a lone surrogate becomes the JSON escape
    `\\udcNN`, which json.loads decodes back to that surrogate, so the file name round-trips.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    # JSON already escapes every backslash inside strings, so an inserted \\udcNN cannot merge with one.
    return text.encode("utf-8", "backslashreplace")


def write_json_names(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as JSON that may hold file names with undecodable bytes."""
    write_bytes(path, json_bytes(obj))
