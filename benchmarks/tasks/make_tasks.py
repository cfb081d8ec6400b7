"""Generate a suite of small user tasks for checking that an RLHF framework learns on tasks it was
never tuned for: plain JSONL files plus a Python reward function, as a new user would bring them.

    python benchmarks/tasks/make_tasks.py OUT_DIR [--seed 0] [--tasks sort_words,add,format]
        [--variants en-plain,en-chat,zh-plain,zh-chat] [--n-sft 1500] [--n-pairs 1000]
        [--n-kto 1000] [--n-heldout 200] [--n-prompts 1000] [--stats]

writes ``OUT_DIR/<task>-<lang>-<format>/`` with ``sft.jsonl``, ``pairs.jsonl``, ``kto.jsonl``,
``prompts.jsonl`` (RL prompts + the reward's columns), ``heldout.jsonl``, ``reward.py`` (standard
library only) and ``README.md``, and ``OUT_DIR/README.md``. Each task is in ``task_<name>.py``
(its generator, with the demonstrators' systematic flaws) and ``rewards/<name>.py`` (its reward,
copied as ``reward.py``). Standard library only; does not import simple_rlhf.

Plain prompts end with ``"\\n"`` (the response follows directly); chat prompts are one user
message. The data of ``<task>-<lang>-plain`` and ``<task>-<lang>-chat`` are the same problems.
Held-out problems are chosen by a hash of their language-independent content (operand pair, word
set, request), so no training file of any variant holds one.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import tasks_common as common  # noqa: E402

TASKS: tuple[str, ...] = ("sort_words", "add", "format")
LANGS: tuple[str, ...] = ("en", "zh")
FORMATS: tuple[str, ...] = ("plain", "chat")
VARIANTS: tuple[str, ...] = tuple(f"{lang}-{fmt}" for lang in LANGS for fmt in FORMATS)
DEFAULT_SIZES: dict[str, int] = {
    "sft": 1500,
    "pairs": 1000,
    "kto": 1000,
    "heldout": 200,
    "prompts": 1000,
}
LABEL_NOISE = 0.1
KTO_THRESHOLD = 0.999  # desirable = reward 1.0
PLAIN_SEPARATOR = "\n"
STAT_KEYS = ("sft_reward", "sft_perfect", "best_candidate", "pair_agreement", "kto_desirable")


def task_module(task: str) -> ModuleType:
    """The generator module of ``task`` (``task_<task>.py``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return common.load_file(HERE / f"task_{task}.py", f"_task_suite_{task}")


def reward_function(task: str) -> Any:
    """The task's ``reward(prompts, completions, **kwargs)``."""
    return common.load_reward(task).reward


def _prompt(text: str, fmt: str) -> str | list[dict[str, str]]:
    return text + PLAIN_SEPARATOR if fmt == "plain" else [{"role": "user", "content": text}]


def _answer(text: str, fmt: str) -> str | list[dict[str, str]]:
    return text if fmt == "plain" else [{"role": "assistant", "content": text}]


def _score(task: str, prompt: Any, completions: list[str], row: dict[str, Any]) -> list[float]:
    columns = {k: [v] * len(completions) for k, v in row.items()}
    return reward_function(task)([prompt] * len(completions), completions, **columns)


def perfect_answer(task: str, lang: str, row: dict[str, Any], seed: int = 0) -> str:
    """A perfect answer (reward 1.0) to a ``heldout.jsonl`` / ``prompts.jsonl`` row."""
    return task_module(task).perfect_from_fields(row, lang, random.Random(seed))


def flawed_answer(task: str, lang: str, row: dict[str, Any], seed: int = 0) -> str:
    """An answer with one of the task's flaws (reward < 1) to a held-out / prompt row."""
    return task_module(task).flawed_from_fields(row, lang, random.Random(seed))


class _Problems:
    """Draws problems of a task: held-out ones (distinct) or training ones (never held out)."""

    def __init__(self, task: str, lang: str, rng: random.Random) -> None:
        self.mod, self.task, self.lang, self.rng = task_module(task), task, lang, rng

    def _held(self, key: Any) -> bool:
        return common.is_heldout(self.task, self.mod.key_id(key), self.mod.HELDOUT_FRACTION)

    def train(self) -> Any:
        while True:
            key = self.mod.sample_key(self.rng, self.lang)
            if not self._held(key):
                return key

    def heldout(self, n: int) -> list[Any]:
        keys: dict[str, Any] = {}
        for _ in range(200_000):
            if len(keys) == n:
                return list(keys.values())
            key = self.mod.sample_key(self.rng, self.lang)
            if self._held(key):
                keys.setdefault(self.mod.key_id(key), key)
        raise RuntimeError(f"{self.task}: found only {len(keys)} held-out problems, need {n}")


def build_rows(
    task: str, lang: str, fmt: str, seed: int = 0, sizes: dict[str, int] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """The rows of every file of one variant, and its statistics (measured with the reward)."""
    n = {**DEFAULT_SIZES, **(sizes or {})}
    mod = task_module(task)
    rng = random.Random(f"{seed}|{task}|{lang}")  # the same problems in the plain and chat forms
    problems = _Problems(task, lang, rng)

    def problem(key: Any) -> tuple[str, dict[str, Any]]:
        return mod.prompt(key, lang, rng), mod.fields(key, lang)

    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in n}
    for key in problems.heldout(n["heldout"]):
        text, extra = problem(key)
        rows["heldout"].append({"prompt": _prompt(text, fmt), **extra})
    for _ in range(n["prompts"]):
        text, extra = problem(problems.train())
        rows["prompts"].append({"prompt": _prompt(text, fmt), **extra})

    sft_scores = []
    for _ in range(n["sft"]):
        key = problems.train()
        text, extra = problem(key)
        response = mod.demonstration(key, lang, rng)
        sft_scores += _score(task, _prompt(text, fmt), [response], extra)
        if fmt == "plain":
            rows["sft"].append({"prompt": _prompt(text, fmt), "response": response})
        else:
            rows["sft"].append({"messages": [*_prompt(text, fmt), *_answer(response, fmt)]})

    best, agree = [], 0
    flips = common.noisy_indices(n["pairs"], LABEL_NOISE, rng)
    for i in range(n["pairs"]):
        key = problems.train()
        text, extra = problem(key)
        cands = mod.candidates(key, lang, rng)
        scores = _score(task, _prompt(text, fmt), cands, extra)
        best.append(max(scores))
        a = rng.randrange(len(cands))
        others = [j for j in range(len(cands)) if scores[j] != scores[a]]
        b = rng.choice(others)
        hi, lo = (a, b) if scores[a] > scores[b] else (b, a)
        if i in flips:
            hi, lo = lo, hi
        agree += scores[hi] > scores[lo]
        chosen, rejected = _answer(cands[hi], fmt), _answer(cands[lo], fmt)
        rows["pairs"].append({"prompt": _prompt(text, fmt), "chosen": chosen, "rejected": rejected})

    flips = common.noisy_indices(n["kto"], LABEL_NOISE, rng)
    desirable = 0
    for i in range(n["kto"]):
        key = problems.train()
        text, extra = problem(key)
        draw = rng.random()  # a demonstration, a perfect answer or any candidate: 40/30/30
        if draw < 0.4:
            completion = mod.demonstration(key, lang, rng)
        elif draw < 0.7:
            completion = mod.perfect(key, lang, rng)
        else:
            completion = rng.choice(mod.candidates(key, lang, rng))
        label = _score(task, _prompt(text, fmt), [completion], extra)[0] >= KTO_THRESHOLD
        label = label != (i in flips)
        desirable += label
        rows["kto"].append(
            {"prompt": _prompt(text, fmt), "completion": _answer(completion, fmt), "label": label}
        )

    stats = {
        "sft_reward": sum(sft_scores) / max(len(sft_scores), 1),
        "sft_perfect": sum(s >= KTO_THRESHOLD for s in sft_scores) / max(len(sft_scores), 1),
        "best_candidate": sum(best) / max(len(best), 1),
        "pair_agreement": agree / max(n["pairs"], 1),
        "kto_desirable": desirable / max(n["kto"], 1),
    }
    return rows, stats


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _variant_readme(task: str, lang: str, fmt: str, n: dict[str, int]) -> str:
    mod, reward_doc = task_module(task), common.load_reward(task).__doc__ or ""
    shape = (
        'plain strings; prompts end with "\\n" and the response follows directly'
        if fmt == "plain"
        else "chat message lists (render with the tokenizer's chat template)"
    )
    return (
        f"# {task}-{lang}-{fmt}\n\n{(mod.__doc__ or '').strip()}\n\n"
        f"Language `{lang}`, {shape}.\n\n## Files\n\n"
        f"- `sft.jsonl`: {n['sft']} demonstrations (with the flaws above)\n"
        f"- `pairs.jsonl`: {n['pairs']} preference pairs, ordered by the reward, "
        f"{LABEL_NOISE:.0%} of the labels flipped\n"
        f"- `kto.jsonl`: {n['kto']} unpaired completions, label true = reward 1.0, "
        f"{LABEL_NOISE:.0%} of the labels flipped\n"
        f"- `prompts.jsonl`: {n['prompts']} RL prompts with the reward's columns\n"
        f"- `heldout.jsonl`: {n['heldout']} held-out prompts (problems in no training file)\n"
        f"- `reward.py`: `reward(prompts, completions, **columns) -> list[float]` in [0, 1]\n\n"
        f"## Reward\n\n{reward_doc.strip()}\n"
    )


def make_task(
    task: str,
    lang: str,
    fmt: str,
    out_dir: str | Path,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Write ``out_dir/<task>-<lang>-<fmt>/`` and return that folder."""
    if lang not in LANGS or fmt not in FORMATS:
        raise ValueError(f"unknown variant {lang}-{fmt}; expected one of {VARIANTS}")
    folder = Path(out_dir) / f"{task}-{lang}-{fmt}"
    folder.mkdir(parents=True, exist_ok=True)
    rows, stats = build_rows(task, lang, fmt, seed, sizes)
    for name, file_rows in rows.items():
        _write_jsonl(folder / f"{name}.jsonl", file_rows)
    shutil.copyfile(HERE / "rewards" / f"{task}.py", folder / "reward.py")
    n = {k: len(v) for k, v in rows.items()}
    (folder / "README.md").write_text(_variant_readme(task, lang, fmt, n), encoding="utf-8")
    (folder / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return folder


def _suite_readme(folders: list[Path], seed: int) -> str:
    lines = [
        "# Task suite",
        "",
        f"Generated by `benchmarks/tasks/make_tasks.py` (seed {seed}). Each folder is one task in",
        "one language (`en`/`zh`) and one data shape (`plain` strings / `chat` messages), with",
        "`sft.jsonl`, `pairs.jsonl`, `kto.jsonl`, `prompts.jsonl`, `heldout.jsonl`, `reward.py` and",
        "a README. The demonstrations have systematic flaws that the reward penalises; the",
        "preference data carries the signal to fix them. `stats.json`: the mean reward of the SFT",
        "responses, of the best candidate, and the pairs' agreement with the reward.",
        "",
        "## Tasks",
        "",
    ]
    for task in TASKS:
        doc = (task_module(task).__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines.append(f"- **{task}**: {doc}")
    lines += ["", "## Folders", ""] + [f"- `{f.name}`" for f in folders]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    for name, value in DEFAULT_SIZES.items():
        p.add_argument(f"--n-{name}", type=int, default=value, dest=f"n_{name}")
    p.add_argument("--stats", action="store_true", help="print the reward statistics")
    args = p.parse_args(argv)
    sizes = {name: getattr(args, f"n_{name}") for name in DEFAULT_SIZES}
    folders = []
    if args.stats:
        print(f"{'variant':<24}{'sft':>7}{'sft=1':>7}{'best':>7}{'pairs':>7}{'kto+':>7}")
        print("  (sft: mean reward of the demonstrations; sft=1: share of them with reward 1;")
        print("   best: mean best candidate reward; pairs: share of pairs whose chosen scores")
        print("   higher; kto+: share of KTO labels true)")
    for task in args.tasks.split(","):
        for variant in args.variants.split(","):
            lang, fmt = variant.split("-")
            folder = make_task(task, lang, fmt, args.out_dir, args.seed, sizes)
            folders.append(folder)
            if args.stats:
                stats = json.loads((folder / "stats.json").read_text())
                print(f"{folder.name:<24}" + "".join(f"{stats[k]:>7.3f}" for k in STAT_KEYS))
    (args.out_dir / "README.md").write_text(_suite_readme(folders, args.seed), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
