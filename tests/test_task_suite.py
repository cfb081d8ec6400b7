"""The task suite generator ``benchmarks/tasks/make_tasks.py``: files, held-out split, rewards,
preference labels, and that the framework's data reader accepts the files."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "benchmarks" / "tasks"
SIZES = {"sft": 300, "pairs": 300, "kto": 200, "heldout": 200, "prompts": 200}
FILES = ("sft.jsonl", "pairs.jsonl", "kto.jsonl", "heldout.jsonl", "prompts.jsonl")


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen = _load(TASK_DIR / "make_tasks.py", "_test_make_tasks")
CASES = [(task, variant) for task in gen.TASKS for variant in gen.VARIANTS]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    for task, variant in CASES:
        lang, fmt = variant.split("-")
        gen.make_task(task, lang, fmt, out, seed=0, sizes=SIZES)
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _response(value: Any) -> str:
    return value if isinstance(value, str) else value[0]["content"]


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "prompt"}


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in _fields(rows[0])}


def _training_prompts(folder: Path) -> set[str]:
    sft = _rows(folder / "sft.jsonl")
    texts = {_text(r["messages"][:-1]) if "messages" in r else _text(r["prompt"]) for r in sft}
    for name in ("pairs.jsonl", "kto.jsonl", "prompts.jsonl"):
        texts |= {_text(r["prompt"]) for r in _rows(folder / name)}
    return texts


def test_suite_has_tasks_of_different_kinds() -> None:
    assert len(gen.TASKS) >= 3 and {"sort_words", "add", "format"} <= set(gen.TASKS)
    assert set(gen.VARIANTS) == {"en-plain", "en-chat", "zh-plain", "zh-chat"}


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_files_and_shapes(suite: Path, task: str, variant: str) -> None:
    folder = suite / f"{task}-{variant}"
    plain = variant.endswith("plain")
    for name in (*FILES, "reward.py", "README.md"):
        assert (folder / name).is_file(), name
    sizes = dict(zip(FILES, ("sft", "pairs", "kto", "heldout", "prompts"), strict=True))
    for name in FILES:
        rows = _rows(folder / name)  # every line parses
        assert len(rows) == SIZES[sizes[name]], name
    for row in _rows(folder / "sft.jsonl"):
        if plain:
            assert set(row) == {"prompt", "response"} and row["prompt"].endswith("\n")
            assert row["response"] == row["response"].strip()
        else:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    for row in _rows(folder / "pairs.jsonl"):
        assert isinstance(row["prompt"], str) == plain
        assert _response(row["chosen"]) != _response(row["rejected"])
    for row in _rows(folder / "kto.jsonl"):
        assert isinstance(row["label"], bool)
    for row in _rows(folder / "heldout.jsonl") + _rows(folder / "prompts.jsonl"):
        assert isinstance(row["prompt"], str) == plain and _fields(row)
    first = _rows(folder / "sft.jsonl")[0]
    text = first["prompt"] if plain else first["messages"][0]["content"]
    assert any("\u4e00" <= c <= "\u9fff" for c in text) == variant.startswith("zh")


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_heldout_disjoint(suite: Path, task: str, variant: str) -> None:
    folder = suite / f"{task}-{variant}"
    heldout = [_text(r["prompt"]) for r in _rows(folder / "heldout.jsonl")]
    assert len(set(heldout)) == len(heldout)
    training = set()
    for fmt in ("plain", "chat"):  # the plain and chat forms hold the same problems
        training |= _training_prompts(suite / f"{task}-{variant.split('-')[0]}-{fmt}")
    assert not set(heldout) & training


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_reward(suite: Path, task: str, variant: str) -> None:
    folder = suite / f"{task}-{variant}"
    lang = variant.split("-")[0]
    reward = _load(folder / "reward.py", f"_test_reward_{task}_{variant}").reward
    sft = _rows(folder / "sft.jsonl")
    if variant.endswith("plain"):
        prompts, responses = [r["prompt"] for r in sft], [r["response"] for r in sft]
    else:
        prompts = [r["messages"][:-1] for r in sft]
        responses = [r["messages"][-1]["content"] for r in sft]
    scores = reward(prompts, responses)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) >= 3 and min(scores) < 1.0 <= max(scores)  # never constant
    assert 0.4 < sum(scores) / len(scores) < 0.9

    for name in ("heldout.jsonl", "prompts.jsonl"):
        rows = _rows(folder / name)
        prompts = [r["prompt"] for r in rows]
        perfect = [gen.perfect_answer(task, lang, _fields(r), seed=i) for i, r in enumerate(rows)]
        flawed = [gen.flawed_answer(task, lang, _fields(r), seed=i) for i, r in enumerate(rows)]
        assert reward(prompts, perfect, **_columns(rows)) == [1.0] * len(rows)
        # with a leading/trailing space, and without the columns (recomputed from the prompt)
        assert reward(prompts, [f" {p}\n" for p in perfect]) == [1.0] * len(rows)
        bad = reward(prompts, flawed, **_columns(rows))
        assert all(0.0 <= s < 1.0 for s in bad)
        for completions in (flawed, responses[: len(rows)]):
            assert reward(prompts, completions) == reward(prompts, completions, **_columns(rows))


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_preference_labels(suite: Path, task: str, variant: str) -> None:
    folder = suite / f"{task}-{variant}"
    reward = gen.reward_function(task)
    pairs = _rows(folder / "pairs.jsonl")
    prompts = [p["prompt"] for p in pairs]
    chosen = reward(prompts, [_response(p["chosen"]) for p in pairs])
    rejected = reward(prompts, [_response(p["rejected"]) for p in pairs])
    assert all(c != r for c, r in zip(chosen, rejected, strict=True))  # no ties
    agreement = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    assert 0.8 <= agreement <= 0.97
    kto = _rows(folder / "kto.jsonl")
    scores = reward([r["prompt"] for r in kto], [_response(r["completion"]) for r in kto])
    agree = sum((s >= gen.KTO_THRESHOLD) == r["label"] for s, r in zip(scores, kto, strict=True))
    assert 0.8 <= agree / len(kto) <= 0.97
    assert 0.2 < sum(r["label"] for r in kto) / len(kto) < 0.8


def test_deterministic_and_cli(tmp_path: Path) -> None:
    small = {"sft": 20, "pairs": 20, "kto": 20, "heldout": 20, "prompts": 20}
    a = gen.make_task("add", "zh", "chat", tmp_path / "a", seed=3, sizes=small)
    b = gen.make_task("add", "zh", "chat", tmp_path / "b", seed=3, sizes=small)
    c = gen.make_task("add", "zh", "chat", tmp_path / "c", seed=4, sizes=small)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "sft.jsonl").read_bytes() != (c / "sft.jsonl").read_bytes()
    argv = [str(tmp_path / "cli"), "--tasks", "sort_words,format", "--variants", "en-plain"]
    argv += ["--n-sft", "10", "--n-pairs", "10", "--n-kto", "10", "--n-heldout", "10"]
    assert gen.main([*argv, "--n-prompts", "10"]) == 0
    assert (tmp_path / "cli" / "README.md").is_file()
    assert len(_rows(tmp_path / "cli" / "format-en-plain" / "sft.jsonl")) == 10
    assert not (tmp_path / "cli" / "add-en-plain").exists()


def test_standard_library_only() -> None:
    local = {p.stem for p in TASK_DIR.glob("*.py")}
    for path in [*TASK_DIR.glob("*.py"), *TASK_DIR.glob("rewards/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = sys.stdlib_module_names | (set() if "rewards" in path.parts else local)
                assert top in allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("variant", ["en-plain", "zh-chat"])
def test_framework_reads_the_files(suite: Path, variant: str) -> None:
    from simple_rlhf.data.sources import DataSpec, load_records

    folder = suite / f"sort_words-{variant}"
    kinds = {"sft": "sft", "pairs": "pair", "kto": "unpaired", "prompts": "prompt"}
    for name, kind in kinds.items():
        records, _ = load_records(DataSpec(paths=(str(folder / f"{name}.jsonl"),)), kind)
        assert records, name
    prompts, _ = load_records(DataSpec(paths=(str(folder / "prompts.jsonl"),)), "prompt")
    assert set(prompts[0].fields) == {"answer"}
