"""User-facing errors: one line that says what went wrong and where."""


class TransferlabError(Exception):
    """An error caused by the user's input (a path, a name, a value).

    The CLI prints its message on one line and exits non-zero, without a traceback.
    """


def one_line(exc: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """An exception as one bounded, printable line: its type (unless it is ours, or `with_type`
    is off and there is text to show) and its first line.

    What a status file, an HTTP error or a refusal message quotes from an exception raised on
    hostile input: never a multi-line dump, never control characters, never unbounded.
    """
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if not text.isprintable():
        text = ascii(text)[1:-1]
    if not isinstance(exc, TransferlabError) and (with_type or not text):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

