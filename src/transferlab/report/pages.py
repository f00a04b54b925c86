"""HTML pages from the Jinja2 templates shipped in report/templates (package data).

Autoescaping is on for every value; a value that already is HTML (a section body built
by the pipeline, a formatted cell) must arrive as `markupsafe.Markup` to be kept as is.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from transferlab import __version__
from transferlab.atomic import write_text


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("transferlab.report", "templates"),
        autoescape=True,
        # A misspelt template variable fails the render instead of leaving a silent gap.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_page(template: str, **context: object) -> str:
    return environment().get_template(template).render(version=__version__, **context)


def write_page(path: str | os.PathLike, template: str, **context: object) -> Path:
    target = Path(path)
    write_text(target, render_page(template, **context))
    return target
