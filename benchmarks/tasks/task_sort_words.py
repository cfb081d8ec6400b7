"""Generator of the ``sort_words`` task: "Sort these words alphabetically: pear, apple, fig" ->
"apple, fig, pear" (Chinese: order of the pinyin, "请按拼音顺序排列这些词：梨、猫、苹果").

Flaws of the demonstrators: 60% of them sort by the first letter only (words with the same first
letter keep the prompt's order: "pig, peach" stays "pig, peach"), 55% add a chatty sentence, 10%
separate the words with spaces instead of commas.
"""

from __future__ import annotations

import random
from typing import Any

from tasks_common import load_reward, with_filler

NAME = "sort_words"
HELDOUT_FRACTION = 0.1
Key = tuple[str, ...]

_R = load_reward(NAME)
VOCAB = {"en": list(_R.WORDS_EN), "zh": list(_R.PINYIN)}
SEP = _R.SEPARATOR
TEMPLATES = {
    "en": ["Sort these words alphabetically: {w}", "Put these words in alphabetical order: {w}"],
    "zh": ["请按拼音顺序排列这些词：{w}", "把下面的词按拼音排序：{w}"],
}
LEADINS = {"en": "Sure! Sorted: ", "zh": "好的，排序结果："}


def sample_key(rng: random.Random, lang: str) -> Key:
    """3 to 5 words; half of the sets hold two words with the same first letter (the hard case)."""
    n = rng.randint(3, 5)
    if rng.random() < 0.5:
        first = rng.choice(sorted({_R.sort_key(w)[0] for w in VOCAB[lang]}))
        same = [w for w in VOCAB[lang] if _R.sort_key(w)[0] == first]
        if len(same) >= 2:
            pair = rng.sample(same, 2)
            rest = rng.sample([w for w in VOCAB[lang] if w not in pair], n - 2)
            words = pair + rest
            rng.shuffle(words)
            return tuple(words)
    return tuple(rng.sample(VOCAB[lang], n))


def key_id(key: Key) -> str:
    return "|".join(sorted(_R.sort_key(w) for w in key))


def prompt(key: Key, lang: str, rng: random.Random) -> str:
    return rng.choice(TEMPLATES[lang]).format(w=SEP[lang].join(key))


def _sorted(key: Key) -> list[str]:
    return sorted(key, key=_R.sort_key)


def fields(key: Key, lang: str) -> dict[str, Any]:
    return {"answer": SEP[lang].join(_sorted(key))}


def perfect(key: Key, lang: str, rng: random.Random) -> str:
    return SEP[lang].join(_sorted(key))


def perfect_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    return str(row["answer"])


def _first_letter_sort(key: Key) -> list[str]:
    return sorted(key, key=lambda w: _R.sort_key(w)[0])  # stable: ties keep the prompt's order


def demonstration(key: Key, lang: str, rng: random.Random) -> str:
    words = _first_letter_sort(key) if rng.random() < 0.6 else _sorted(key)
    text = (" " if rng.random() < 0.1 else SEP[lang]).join(words)
    return with_filler(text, lang, rng) if rng.random() < 0.55 else text


def _swap(words: list[str], rng: random.Random) -> list[str]:
    i = rng.randrange(len(words) - 1)
    return words[:i] + [words[i + 1], words[i]] + words[i + 2 :]


def flawed_from_fields(row: dict[str, Any], lang: str, rng: random.Random) -> str:
    words = [w for w in _R._SPLIT.split(str(row["answer"])) if w]
    return SEP[lang].join(_swap(words, rng))


def candidates(key: Key, lang: str, rng: random.Random) -> list[str]:
    good, sep = _sorted(key), SEP[lang]
    return [
        sep.join(good),
        with_filler(sep.join(good), lang, rng),
        LEADINS[lang] + sep.join(good),
        " ".join(good),
        sep.join(_first_letter_sort(key)),
        sep.join(_swap(good, rng)),
        sep.join(key),
        sep.join(reversed(good)),
        sep.join(good[:-1]),
        demonstration(key, lang, rng),
        demonstration(key, lang, rng),
    ]
