"""Where a search's Optuna study lives (--storage): a database URL, a journal file, or the SQLite
file in the search folder; opened by every worker, a journal file checked to be Optuna's first.
Like search_space, this imports neither Optuna nor SQLAlchemy at load time."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import TransferlabError, one_line


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # "rdb" or "journal"
    target: str  # URL or file path
    shown: str  # for messages and search.json: no password

    @property
    def is_sqlite(self) -> bool:
        return self.target.startswith("sqlite")


def storage_spec(storage: str | None, out: str | Path) -> StorageSpec:
    """--storage as a database URL or a journal file; None is the SQLite file in the search folder."""
    import sqlalchemy

    if storage is None:
        url = sqlalchemy.engine.URL.create("sqlite", database=str((Path(out) / "search.db").resolve()))
        return StorageSpec("rdb", url.render_as_string(hide_password=False), "default")
    text = storage.strip()
    if text.startswith("journal:") and text.removeprefix("journal:"):
        path = Path(text.removeprefix("journal:")).expanduser().resolve()
        _check_journal(path)
        return StorageSpec("journal", str(path), f"journal:{path}")
    try:
        url = sqlalchemy.engine.make_url(text)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise TransferlabError("--storage: not a database URL; give sqlite:///FILE, "
                               "postgresql://USER:PASSWORD@HOST/DATABASE or journal:FILE") from None
    if url.drivername in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver we ship is psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    return StorageSpec("rdb", url.render_as_string(hide_password=False), url.render_as_string(hide_password=True))


def _check_journal(path: Path) -> None:
    """A journal file is new, empty, or Optuna's (JSON lines of operations): Optuna appends to any
    file it is given, and a user's notes must not get a line of JSON."""
    if path.is_dir():
        raise TransferlabError(f"--storage journal:{path}: is a folder; give a file name")
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        first = handle.readline(65536)
    try:
        value = json.loads(first)
    except ValueError:
        value = None
    ours = isinstance(value, dict) and "op_code" in value
    if not ours:
        raise TransferlabError(f"--storage journal:{path}: not an Optuna journal file; give a new file name or an "
                               "earlier search's journal")


def open_study(storage: StorageSpec, study_name: str, make_backend, sampler, pruner):
    """Create or load the study (maximising). Workers starting together on a fresh database race
    to create its tables and the study; the loser's error is retried, as the winner has done it."""
    import optuna
    import sqlalchemy

    # Lost races: a table or the study made meanwhile, SQLite's file locked. Anything else (no
    # server, bad credentials) will not change in a second: it is said at once.
    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) + \
        ((sqlalchemy.exc.OperationalError,) if storage.is_sqlite else ())
    for attempt in range(5):
        try:
            return optuna.create_study(storage=make_backend(), study_name=study_name, direction="maximize",
                                       sampler=sampler, pruner=pruner, load_if_exists=True)
        except ImportError as exc:
            raise TransferlabError(f"--storage {storage.shown}: no database driver ({one_line(exc)})") from None
        except ValueError as exc:  # a journal file of other lines (JSONDecodeError is a ValueError)
            if storage.kind != "journal":
                raise
            raise TransferlabError(f"--storage {storage.shown}: not an Optuna journal file ({one_line(exc)}); "
                                   "give a new file name or an earlier search's journal") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt == 4 or not isinstance(exc, races):
                raise TransferlabError(f"--storage {storage.shown}: cannot open the study "
                                       f"({one_line(getattr(exc, 'orig', None) or exc)})") from None
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")
