"""Configuration errors: every problem of a file, found in one pass, raised once.

The loader collects a ``ConfigIssue`` per problem and raises a single ``ConfigError``
carrying all of them; nothing is repaired silently.  ``str(error)`` renders one line per
issue::

    FILE: KEY.PATH: reason            (a problem with a value or key)
    FILE:LINE:COLUMN: reason          (a TOML syntax error; line and column from tomllib)
    FILE: reason                      (the file itself: missing, not a regular file, too large, not UTF-8)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigIssue", "ConfigError"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem.  ``path``: key path such as ``sites[0].links[1].cdts[3].address``
    (``""`` for the whole file).  ``line``/``column``: 1-based, only for syntax errors."""

    file: str
    path: str
    reason: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            where = f"{self.file}:{self.line}:{self.column or 1}"
        else:
            where = self.file
        if self.path:
            return f"{where}: {self.path}: {self.reason}"
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """A configuration file was rejected.  ``errors``: every issue found (at least one),
    in the order found (file order, mostly)."""

    def __init__(self, errors: tuple[ConfigIssue, ...] | list[ConfigIssue]) -> None:
        self.errors: tuple[ConfigIssue, ...] = tuple(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)
