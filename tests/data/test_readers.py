"""Reading raw records: every file format, folder layouts, Hub names offline, and the errors."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from simple_rlhf.data.errors import DataError, MissingSplitError
from simple_rlhf.data.readers import available_splits, looks_like_path, read_raw

ROWS = [
    {"prompt": "q0", "chosen": "c0", "rejected": "r0"},
    {"prompt": "q1", "chosen": "c1", "rejected": "r1"},
]


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """No Hub: env vars for fresh imports, and the already-imported constants patched too."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def write_jsonl(path: Path, rows, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- files
def test_json_list_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    src = read_raw(str(path))
    assert src.records == ROWS and src.split == "train" and src.source == str(path)
    assert len(src.content_hash) == 64


def test_jsonl_file_skips_blank_lines_and_json_lines_in_a_json_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    assert read_raw(str(path)).records == ROWS
    as_json = tmp_path / "hub_style.json"
    as_json.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert read_raw(str(as_json)).records == ROWS


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    assert read_raw(str(path)).records == ROWS


def test_parquet_and_csv_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": "q", "completion": "c", "label": True},
        {"prompt": "p", "completion": "d", "label": False},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert read_raw(str(tmp_path / "d.parquet")).records == rows
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,completion,label\nq,c,true\np,d,false\n", encoding="utf-8")
    got = read_raw(str(csv)).records
    assert got == rows and type(got[0]["label"]) is bool


def test_invalid_jsonl_line_names_file_record_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, extra='\n{"prompt": "q2", oops}\n')
    with pytest.raises(DataError) as info:
        read_raw(str(path))
    msg = str(info.value)
    # two good records, a blank line (line 3), the bad one on line 4 is record 2
    assert msg.startswith(f"{path}, record 2: invalid JSON on line 4")
    assert info.value.index == 2


def test_non_object_record_names_its_number(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], ["a", "list"]])
    with pytest.raises(DataError, match=r"train\.jsonl, record 1: expected a JSON object"):
        read_raw(str(path))
    js = tmp_path / "list.json"
    js.write_text(json.dumps([ROWS[0], ROWS[1], "text"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"list\.json, record 2: .*got str"):
        read_raw(str(js))


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("obj.json", '{"data": [1]}', "got a single object"),
        ("num.json", "42", "expected a JSON list of records, got int"),
        ("broken.json", '[{"a": 1},\n {"b": }]', "invalid JSON on line 2"),
        ("latin.jsonl", None, "not UTF-8"),
        ("empty.csv", "", "could not read .csv"),
        ("notes.txt", "hello", "unsupported file type"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, text, words):
    path = tmp_path / name
    if text is None:
        path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_raw(str(path))
    assert str(info.value).startswith(str(path)) and words in str(info.value)


def test_missing_path_is_file_not_found(tmp_path):
    for missing in (str(tmp_path / "nope.jsonl"), "./data/x", "data/sub/dir", "train.parquet"):
        with pytest.raises(DataError, match="file not found") as info:
            read_raw(missing)
        assert str(info.value).startswith(missing)


def test_a_single_file_has_only_a_train_split(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ROWS)
    with pytest.raises(MissingSplitError, match="available splits: train"):
        read_raw(str(path), "test")
    assert available_splits(str(path)) == ["train"]


def test_content_hash_follows_the_bytes(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ROWS)
    first = read_raw(str(path)).content_hash
    assert read_raw(str(path)).content_hash == first
    path.write_text(path.read_text(encoding="utf-8").replace("c1", "c2"), encoding="utf-8")
    assert read_raw(str(path)).content_hash != first


# ----------------------------------------------------------------------------- folders
def test_deepspeed_chat_folder_train_and_eval_json(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(ROWS), encoding="utf-8")
    (tmp_path / "eval.json").write_text(json.dumps(ROWS[:1]), encoding="utf-8")
    assert read_raw(str(tmp_path), "train").records == ROWS
    for split in ("test", "eval"):
        src = read_raw(str(tmp_path), split)
        assert src.records == ROWS[:1] and src.split == "eval"
    assert available_splits(str(tmp_path)) == ["eval", "train"]
    with pytest.raises(MissingSplitError, match="available splits: eval, train"):
        read_raw(str(tmp_path), "dev")


def test_folder_with_hub_layout_and_shards(tmp_path):
    write_jsonl(tmp_path / "data" / "train-00000-of-00002.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "data" / "train-00001-of-00002.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "data" / "test-00000-of-00001.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "data" / "notes.jsonl", [{"x": 1}])  # no split name: ignored
    src = read_raw(str(tmp_path), "train")
    assert src.records == ROWS
    # record 1 of the folder is record 0 of the second shard
    assert src.where(1) == (str(tmp_path / "data" / "train-00001-of-00002.jsonl"), 0)
    assert read_raw(str(tmp_path), "test").records == ROWS[:1]


def test_folder_split_from_subfolder_names_and_unnamed_files(tmp_path):
    write_jsonl(tmp_path / "a" / "train.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "b" / "train.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "validation" / "part.jsonl", ROWS)
    assert read_raw(str(tmp_path)).records == ROWS
    assert read_raw(str(tmp_path), "test").split == "validation"
    plain = tmp_path / "plain"
    write_jsonl(plain / "one.jsonl", ROWS[:1])
    write_jsonl(plain / "two.jsonl", ROWS[1:])
    assert read_raw(str(plain)).records == ROWS  # no split names: all files are train
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing", encoding="utf-8")
    with pytest.raises(DataError, match="empty: no data files"):
        read_raw(str(tmp_path / "empty"))


def test_config_name_picks_a_file_or_subfolder(tmp_path):
    write_jsonl(tmp_path / "all.jsonl", ROWS)
    write_jsonl(tmp_path / "baike.jsonl", ROWS[:1])
    assert read_raw(str(tmp_path), name="all").records == ROWS
    assert read_raw(str(tmp_path), name="baike").records == ROWS[:1]
    assert len(read_raw(str(tmp_path)).records) == 3  # no config: every file
    write_jsonl(tmp_path / "sub" / "cfg" / "train.jsonl", ROWS[1:])
    assert read_raw(str(tmp_path / "sub"), name="cfg").records == ROWS[1:]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path, hf_offline):
    datasets = hf_offline
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "ds"))
    src = read_raw(str(tmp_path / "ds"))
    assert src.records == ROWS and src.split == "train"
    datasets.DatasetDict(train=ds, validation=ds.select([1])).save_to_disk(str(tmp_path / "dd"))
    assert read_raw(str(tmp_path / "dd"), "validation").records == ROWS[1:]
    assert read_raw(str(tmp_path / "dd"), "test").split == "validation"  # alias
    assert available_splits(str(tmp_path / "dd")) == ["train", "validation"]
    with pytest.raises(MissingSplitError, match="no split 'extra'; available splits: train, val"):
        read_raw(str(tmp_path / "dd"), "extra")


# ----------------------------------------------------------------------------- Hub names
def test_offline_hub_name_fails_fast_with_a_data_error(hf_offline):
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        read_raw("someone/not-a-local-dataset", "train")
    assert time.perf_counter() - start < 5.0
    msg = str(info.value)
    assert "could not load dataset 'someone/not-a-local-dataset'" in msg
    assert "split 'train'" in msg and "pass its path" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(DataError, match="could not load dataset 'imdb'"):
        available_splits("imdb")


def test_looks_like_path():
    assert not looks_like_path("Dahoas/rm-static") and not looks_like_path("imdb")
    for path in ("/abs/x", "./x", "../x", "~/x", "a/b/c", "x.jsonl", "x.parquet", "c:\\x"):
        assert looks_like_path(path), path


def test_non_utf8_error_names_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl.*not UTF-8 text: line 2, column 16"):
        read_raw(str(path))


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep\.json: the file nests .* too deeply"):
        read_raw(str(deep))
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"prompt": "a"}\n{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
    with pytest.raises(DataError, match=r"deep\.jsonl, record 1: line 2 nests"):
        read_raw(str(lines))
