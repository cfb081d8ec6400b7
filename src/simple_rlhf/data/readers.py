"""Read raw records (dicts) from a file, a folder or a Hugging Face dataset name.

``read_raw(path_or_name, split)`` returns a :class:`RawSource`: the records, a label for error
messages and a content hash (sha256 of the bytes of every file read; for a Hub dataset, of its
name, config, split and ``datasets`` fingerprint), used in cache keys.

What ``path_or_name`` may be:

* a **file**: ``.jsonl`` (one object per line; blank lines skipped), ``.json`` (a list of objects,
  as DeepSpeed-Chat's ``local/jsonfile``; JSON lines in a ``.json`` file are accepted too),
  ``.parquet``, ``.csv``, and ``.jsonl.gz`` / ``.json.gz`` / ``.csv.gz``. A single file is the
  ``train`` split and has no other split.
* a **``datasets.save_to_disk`` folder** (``dataset_dict.json``, or ``state.json`` +
  ``dataset_info.json``): loaded with ``load_from_disk``; a lone ``Dataset`` is the ``train``
  split, a ``DatasetDict`` has its own splits.
* any other **folder**: its data files are found recursively (hidden entries skipped). A file
  belongs to split ``S`` if its name is ``S.<ext>`` or starts with ``S-``, ``S_`` or ``S.``
  (``train-00000-of-00001.parquet``), or else if one of its folders (below the given one) is
  named that way; ``S`` is one of ``train, test, eval, validation, valid, dev``. If no file
  belongs to any split, ALL data files form the ``train`` split; if some do, files of no split are
  ignored. Files are read in sorted path order and concatenated. With a config ``name``, a
  sub-folder of that name is used if present, else the files whose name is ``<name>.<ext>`` (as in
  a clone of ``Hello-SimpleAI/HC3-Chinese``). A DeepSpeed-Chat folder (``train.json`` +
  ``eval.json``) follows from these rules.
* otherwise, a **Hugging Face dataset name**, loaded with
  ``datasets.load_dataset(name, name=config, split=split)``; failures (offline, unknown name)
  become one :class:`DataError` suggesting a local path.

Split aliases: asking for ``test`` also finds ``eval`` then ``validation`` (``eval``: ``test``,
``validation``; ``validation``: ``eval``, ``test``), so ``test`` reads ``eval.json`` of a
DeepSpeed-Chat folder. A string that looks like a path (starts with ``/``, ``.`` or ``~``, holds
``\\`` or two or more ``/``, or ends with a data extension) but does not exist is "file not
found" rather than a Hub name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

from simple_rlhf.data.errors import DataError, MissingSplitError

DATA_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")
SPLIT_NAMES = ("train", "test", "eval", "validation", "valid", "dev")
SPLIT_ALIASES = {
    "test": ("test", "eval", "validation"),
    "eval": ("eval", "test", "validation"),
    "validation": ("validation", "eval", "test"),
}


@dataclass(frozen=True)
class RawSource:
    """Raw records of one split of one source.

    ``parts`` lists ``(label, n_records)`` per file read, in order, so :meth:`where` can turn a
    record number of the whole source into (file label, record number within that file).
    """

    source: str
    records: list[dict[str, Any]]
    content_hash: str
    split: str
    parts: tuple[tuple[str, int], ...] = ()

    def where(self, index: int) -> tuple[str, int]:
        """``(label, index within that file)`` for record ``index`` of the source."""
        offset = 0
        for label, count in self.parts:
            if index < offset + count:
                return label, index - offset
            offset += count
        return self.source, index


def looks_like_path(text: str) -> bool:
    """True if ``text`` is meant as a local path rather than a Hub dataset name ``owner/name``."""
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") >= 2
        or _extension(text) is not None
    )


def _extension(path: str) -> str | None:
    lower = path.lower()
    for ext in sorted(DATA_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    return None


# ----------------------------------------------------------------------------- files
def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"not UTF-8 text: line {line}, column {column} (byte {exc.start}) holds byte "
            f"0x{data[exc.start]:02x}; save the file as UTF-8",
            source=label,
        ) from None


_TOO_DEEP = "{} nests lists or objects too deeply to be a record (JSON nesting beyond ~1000 levels)"


def _parse_jsonl(text: str, label: str) -> list[Any]:
    records: list[Any] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError.at(
                label, len(records), None, f"invalid JSON on line {lineno}: {exc.msg} "
                f"(column {exc.colno})"
            ) from None  # fmt: skip
        except RecursionError:
            raise DataError.at(
                label, len(records), None, _TOO_DEEP.format(f"line {lineno}")
            ) from None
    return records


def _parse_json(text: str, label: str) -> list[Any]:
    head = text.lstrip()[:1]
    if head == "{":
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return _parse_jsonl(text, label)  # JSON lines in a .json file
        raise DataError("expected a JSON list of records, got a single object", source=label)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise DataError(_TOO_DEEP.format("the file"), source=label) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON on line {exc.lineno}, column {exc.colno}: {exc.msg}", source=label
        ) from None
    if not isinstance(obj, list):
        raise DataError(f"expected a JSON list of records, got {type(obj).__name__}", source=label)
    return obj


def _parse_table(data: bytes, ext: str, label: str) -> list[dict[str, Any]]:
    try:
        if ext.startswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises many types; report them all the same way
        raise DataError(f"could not read {ext} file: {exc}", source=label) from None
    return table.to_pylist()


def _read_file(path: str, label: str) -> tuple[list[Any], bytes]:
    ext = _extension(path)
    if ext is None:
        raise DataError(
            f"unsupported file type; expected one of {', '.join(DATA_EXTENSIONS)}", source=label
        )
    with open(path, "rb") as fh:
        data = fh.read()
    payload = data
    if ext.endswith(".gz"):
        try:
            payload = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"not a valid gzip file ({exc})", source=label) from None
    if ext.startswith(".jsonl"):
        records = _parse_jsonl(_decode(payload, label), label)
    elif ext.startswith(".json"):
        records = _parse_json(_decode(payload, label), label)
    else:
        records = _parse_table(payload, ext, label)
    return records, data


def _check_objects(records: list[Any], label: str) -> None:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError.at(
                label, i, None, f"expected a JSON object (a record), got {type(rec).__name__}"
            )


def _read_files(paths: list[str], source: str, split: str) -> RawSource:
    digest = hashlib.sha256()
    records: list[dict[str, Any]] = []
    parts = []
    for path in paths:
        recs, data = _read_file(path, path)
        _check_objects(recs, path)
        digest.update(len(data).to_bytes(8, "little") + data)
        records.extend(recs)
        parts.append((path, len(recs)))
    return RawSource(source, records, digest.hexdigest(), split, tuple(parts))


# ----------------------------------------------------------------------------- folders
def _split_of(relpath: str) -> str | None:
    pieces = relpath.replace("\\", "/").split("/")
    for piece in [pieces[-1], *reversed(pieces[:-1])]:
        for name in SPLIT_NAMES:
            if piece.lower() == name or piece.lower().startswith(
                (f"{name}-", f"{name}_", f"{name}.")
            ):
                return name
    return None


def _data_files(folder: str, config: str | None) -> dict[str, list[str]]:
    """Map split name -> sorted data files of a plain folder (rules in the module docstring)."""
    if config and os.path.isdir(os.path.join(folder, config)):
        folder = os.path.join(folder, config)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in names if not n.startswith(".") and _extension(n)]
    files.sort()
    if config:
        named = [f for f in files if os.path.basename(f)[: -len(_extension(f) or "")] == config]
        if named:
            return {"train": named}
    by_split: dict[str, list[str]] = {}
    for f in files:
        split = _split_of(os.path.relpath(f, folder))
        if split is not None:
            by_split.setdefault(split, []).append(f)
    if not by_split and files:
        by_split["train"] = files
    if not by_split:
        raise DataError(
            f"no data files ({', '.join(DATA_EXTENSIONS)}) in this folder", source=folder
        )
    return by_split


def _saved_kind(folder: str) -> str | None:
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        return "dict"
    if all(os.path.isfile(os.path.join(folder, f)) for f in ("state.json", "dataset_info.json")):
        return "dataset"
    return None


def _pick_split(split: str, available: list[str], source: str) -> str:
    for candidate in SPLIT_ALIASES.get(split, (split,)):
        if candidate in available:
            return candidate
    raise MissingSplitError(
        f"no split {split!r}; available splits: {', '.join(sorted(available)) or 'none'}",
        source=source,
    )


def _hash_tree(folder: str) -> str:
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for n in sorted(names):
            with open(os.path.join(root, n), "rb") as fh:
                data = fh.read()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _read_saved(folder: str, split: str, kind: str) -> RawSource:
    import datasets

    ds = datasets.load_from_disk(folder)
    if kind == "dict":
        chosen = _pick_split(split, list(ds.keys()), folder)
        ds, subdir = ds[chosen], os.path.join(folder, chosen)
    else:
        chosen = _pick_split(split, ["train"], folder)
        subdir = folder
    label = f"{folder} (split {chosen!r})"
    records = ds.to_list()
    return RawSource(label, records, _hash_tree(subdir), chosen, ((label, len(records)),))


# ----------------------------------------------------------------------------- Hub
def _hub_error(name: str, config: str | None, split: str | None, exc: Exception) -> DataError:
    where = f"dataset {name!r}" + (f" (config {config!r})" if config else "")
    where += f", split {split!r}" if split else ""
    return DataError(
        f"could not load {where} from the Hugging Face Hub: {type(exc).__name__}: {exc}. "
        "No local file or folder of this name exists; if you have a local copy, pass its path "
        "(or NAME@PATH to apply a named dataset's adapter to it)."
    )


def _read_hub(name: str, split: str, config: str | None) -> RawSource:
    import datasets

    label = f"{name} (split {split!r})"
    try:
        ds = datasets.load_dataset(name, name=config, split=split)
    except ValueError as exc:
        if "Unknown split" in str(exc):
            raise MissingSplitError(str(exc), source=name) from None
        raise _hub_error(name, config, split, exc) from None
    except Exception as exc:  # offline, unknown repo, bad config: all are "could not load"
        raise _hub_error(name, config, split, exc) from None
    key = f"{name}\0{config}\0{split}\0{getattr(ds, '_fingerprint', '')}"
    records = ds.to_list()
    digest = hashlib.sha256(key.encode()).hexdigest()
    return RawSource(label, records, digest, split, ((label, len(records)),))


# ----------------------------------------------------------------------------- entry points
def _local(path_or_name: str) -> str | None:
    path = os.path.expanduser(path_or_name)
    if os.path.exists(path):
        return path
    if looks_like_path(path_or_name):
        raise DataError("file not found", source=path_or_name)
    return None


def read_raw(path_or_name: str, split: str = "train", *, name: str | None = None) -> RawSource:
    """Read one split of a file, folder or Hub dataset (``name`` = its config) as raw dicts.

    Raises :class:`MissingSplitError` if the source exists but lacks the split, and
    :class:`DataError` for every other problem (message names file, record and field).
    """
    path = _local(path_or_name)
    if path is None:
        return _read_hub(path_or_name, split, name)
    if os.path.isfile(path):
        _pick_split(split, ["train"], path)
        return _read_files([path], path, "train")
    kind = _saved_kind(path)
    if kind is not None:
        return _read_saved(path, split, kind)
    by_split = _data_files(path, name)
    chosen = _pick_split(split, list(by_split), path)
    return _read_files(by_split[chosen], f"{path} (split {chosen!r})", chosen)


def available_splits(path_or_name: str, *, name: str | None = None) -> list[str]:
    """Split names a source has (without reading the records of a local source)."""
    path = _local(path_or_name)
    if path is None:
        import datasets

        try:
            return list(datasets.get_dataset_split_names(path_or_name, config_name=name))
        except Exception as exc:  # same reasons as in _read_hub
            raise _hub_error(path_or_name, name, None, exc) from None
    if os.path.isfile(path):
        return ["train"]
    kind = _saved_kind(path)
    if kind == "dict":
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as fh:
            return list(json.load(fh).get("splits", []))
    if kind == "dataset":
        return ["train"]
    return sorted(_data_files(path, name))
