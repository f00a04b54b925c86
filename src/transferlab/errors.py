"""User-facing errors: one line that says what went wrong and where."""


class TransferlabError(Exception):
    """An error caused by the user's input (a path, a name, a value).

    The CLI prints its message on one line and exits non-zero, without a traceback.
    """
