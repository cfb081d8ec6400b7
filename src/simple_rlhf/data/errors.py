"""Errors raised while reading and normalising data.

Every problem with the data is reported as a :class:`DataError` whose message names *where* it is:
the source (a file path, or a dataset name with its split), the record number (0-based index
within that source) and the field, e.g.::

    data/train.jsonl, record 17, field 'chosen': expected a string or a list of messages, got int

Functions that look at ONE record do not know where it came from; they raise :class:`RecordError`
(field + problem), and the loop that walks a source turns it into a :class:`DataError` with
:meth:`RecordError.at`.
"""

from __future__ import annotations


def _where(source: str, index: int | None, field: str | None) -> str:
    parts = [str(source)]
    if index is not None:
        parts.append(f"record {index}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


class DataError(ValueError):
    """A problem with the data, with a message that says where it is.

    Attributes ``source``, ``index`` and ``field`` keep the location (``None`` when the problem
    concerns the whole source, e.g. a missing file), ``problem`` the bare description.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source = source
        self.index = index
        self.field = field
        self.problem = problem
        message = problem if source is None else f"{_where(source, index, field)}: {problem}"
        super().__init__(message)

    @classmethod
    def at(cls, source: str, index: int | None, field: str | None, problem: str) -> DataError:
        """``DataError.at("a.jsonl", 17, "chosen", "empty")`` -> ``a.jsonl, record 17, field 'chosen': empty``."""
        return cls(problem, source=source, index=index, field=field)


class MissingSplitError(DataError):
    """The source exists but has no split of the requested name (the message lists the splits)."""


class RecordError(ValueError):
    """A problem with one record, raised by per-record functions (which do not know the source).

    ``field`` is the offending field (``None`` if the record as a whole is wrong).
    """

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(problem if field is None else f"field {field!r}: {problem}")

    def at(self, source: str, index: int | None) -> DataError:
        """The same problem located in ``source`` at record ``index``."""
        return DataError.at(source, index, self.field, self.problem)
