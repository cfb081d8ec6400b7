"""The offline tiny task: "name the colour of each thing", in English and Chinese, with a gold reward.

Why this task: it runs on a CPU in minutes, it is small enough for a 1M-parameter model to learn, and
it has the two properties RLHF needs to show itself:

* **A hidden gold reward** ``gold_reward(prompt, response) -> [0, 1]`` that depends on the prompt (the
  things asked about), so no single constant answer scores well.
* **Demonstrations of mixed quality with systematic flaws**, as human demonstrators produce. For a
  few "tricky" things most demonstrators name a popular wrong colour (a misconception), and most
  demonstrators append a chatty filler sentence that the gold reward penalises. Imitation (SFT)
  copies the majority, flaws included; preference labels (gold reward plus 10% label noise, as from
  human raters) carry the signal that steps 2 and 3 (or DPO & co.) use to fix them.

A prompt asks about 1-3 things; the ideal answer is one sentence per thing, in order:
``"apple is red. sky is blue."`` / ``"苹果是红色。天空是蓝色。"``. Held-out prompts are chosen by a hash
of the set of things asked, so no eval prompt appears in training.

Everything is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

# thing -> (correct colour, popular wrong colour or None)
EN_THINGS: dict[str, tuple[str, str | None]] = {
    "apple": ("red", None),
    "banana": ("yellow", None),
    "grass": ("green", None),
    "sky": ("blue", None),
    "snow": ("white", None),
    "coal": ("black", None),
    "orange": ("orange", None),
    "grape": ("purple", None),
    "cocoa": ("brown", None),
    "rose": ("red", None),
    "lemon": ("yellow", None),
    "cloud": ("white", None),
    "flamingo": ("pink", "red"),
    "carrot": ("orange", "red"),
    "lime": ("green", "yellow"),
    "ocean": ("blue", "green"),
}
ZH_THINGS: dict[str, tuple[str, str | None]] = {
    "苹果": ("红色", None),
    "香蕉": ("黄色", None),
    "草地": ("绿色", None),
    "天空": ("蓝色", None),
    "雪花": ("白色", None),
    "煤炭": ("黑色", None),
    "橙子": ("橙色", None),
    "葡萄": ("紫色", None),
    "可可": ("棕色", None),
    "玫瑰": ("红色", None),
    "柠檬": ("黄色", None),
    "云朵": ("白色", None),
    "火烈鸟": ("粉色", "红色"),
    "胡萝卜": ("橙色", "红色"),
    "青柠": ("绿色", "黄色"),
    "海洋": ("蓝色", "绿色"),
}
EN_COLOURS = sorted({c for c, _ in EN_THINGS.values()})
ZH_COLOURS = sorted({c for c, _ in ZH_THINGS.values()})

EN_FILLER = "Hope this helps!"
ZH_FILLER = "希望对你有帮助！"

EN_PROMPT = "What color is each of these: {things}?"
ZH_PROMPT = "说出这些东西的颜色：{things}。"

# How demonstrators answer (the "human" data distribution).
P_CORRECT_TRICKY = 0.2  # tricky things: correct 20%, the popular wrong colour 70%, other 10%
P_POPULAR_TRICKY = 0.7
P_CORRECT_EASY = 0.9  # easy things: correct 90%, some other colour 10%
P_OMIT = 0.05  # a thing is left out of the answer
P_FILLER = 0.75  # the answer ends with a chatty filler sentence
LABEL_NOISE = 0.1  # preference labels flipped, as human raters disagree
FILLER_PENALTY = 0.15
EXTRA_PENALTY = 0.25
JUNK_PENALTY = 0.2

_EN_STMT = re.compile(r"([a-z]+) is ([a-z]+)\.")
_ZH_STMT = re.compile(r"([\u4e00-\u9fff]+?)是([\u4e00-\u9fff]+?色)。")
_EN_ASK = re.compile(r"What color is each of these: (.+?)\?")
_ZH_ASK = re.compile(r"说出这些东西的颜色：(.+?)。")


def _things(lang: str) -> dict[str, tuple[str, str | None]]:
    return EN_THINGS if lang == "en" else ZH_THINGS


def make_prompt(things: Sequence[str], lang: str) -> str:
    """The user's question for a list of things."""
    if lang == "en":
        return EN_PROMPT.format(things=", ".join(things))
    return ZH_PROMPT.format(things="、".join(things))


def ideal_response(things: Sequence[str], lang: str) -> str:
    """The answer that scores 1.0."""
    table = _things(lang)
    return _join([(t, table[t][0]) for t in things], lang, filler=False)


def _join(stmts: Sequence[tuple[str, str]], lang: str, filler: bool) -> str:
    if lang == "en":
        text = " ".join(f"{t} is {c}." for t, c in stmts)
        return f"{text} {EN_FILLER}".strip() if filler else text
    text = "".join(f"{t}是{c}。" for t, c in stmts)
    return text + ZH_FILLER if filler else text


def prompt_text(prompt: Any) -> str:
    """The user text of a prompt given as a string or as chat messages (last user message)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def parse_prompt(prompt: Any) -> tuple[list[str], str] | None:
    """The things asked about and the language, or ``None`` if the prompt is not of this task."""
    text = prompt_text(prompt)
    m = _EN_ASK.search(text)
    if m:
        return [t.strip() for t in m.group(1).split(",")], "en"
    m = _ZH_ASK.search(text)
    if m:
        return [t.strip() for t in m.group(1).split("、")], "zh"
    return None


def gold_reward(prompt: Any, response: str) -> float:
    """The hidden gold reward in [0, 1].

    ``correct / k`` where ``k`` things were asked and ``correct`` of them are named with their right
    colour (the first statement about each thing counts), minus ``0.25 / k`` per statement about a
    thing not asked or stated twice, minus 0.15 for the filler sentence, minus 0.2 if anything else
    (unparseable text) is left; clipped to [0, 1]. Prompts that are not of this task score 0.
    """
    parsed = parse_prompt(prompt)
    if parsed is None:
        return 0.0
    things, lang = parsed
    table = _things(lang)
    pattern = _EN_STMT if lang == "en" else _ZH_STMT
    filler = EN_FILLER if lang == "en" else ZH_FILLER
    text = response.strip()
    has_filler = filler in text
    text = text.replace(filler, " ")
    stated: dict[str, str] = {}
    extra = 0
    for thing, colour in pattern.findall(text):
        if thing in stated or thing not in things:
            extra += 1
            continue
        stated[thing] = colour
    leftover = pattern.sub(" ", text)
    junk = len(re.sub(r"\s+", "", leftover)) > 2
    k = len(things)
    correct = sum(1 for t in things if t in table and stated.get(t) == table[t][0])
    score = correct / k - EXTRA_PENALTY * extra / k
    score -= FILLER_PENALTY * has_filler + JUNK_PENALTY * junk
    return float(min(1.0, max(0.0, score)))


def gold_reward_batch(prompts: list[Any], responses: list[str], **_: Any) -> list[float]:
    """Reward-function form ``(prompts, responses, **fields) -> scores`` of :func:`gold_reward`."""
    return [gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]


def sample_demonstration(things: Sequence[str], lang: str, rng: random.Random) -> str:
    """One answer from the (flawed) demonstrator distribution."""
    table = _things(lang)
    colours = EN_COLOURS if lang == "en" else ZH_COLOURS
    stmts = []
    for i, t in enumerate(things):
        if rng.random() < P_OMIT and (stmts or i < len(things) - 1):
            continue  # leave a thing out (never all of them)
        correct, popular = table[t]
        u = rng.random()
        if popular is not None:
            if u < P_CORRECT_TRICKY:
                colour = correct
            elif u < P_CORRECT_TRICKY + P_POPULAR_TRICKY:
                colour = popular
            else:
                colour = rng.choice([c for c in colours if c not in (correct, popular)])
        elif u < P_CORRECT_EASY:
            colour = correct
        else:
            colour = rng.choice([c for c in colours if c != correct])
        stmts.append((t, colour))
    return _join(stmts, lang, filler=rng.random() < P_FILLER)


def _is_eval_prompt(things: Sequence[str]) -> bool:
    """Held-out prompts: ~10% of thing-sets, by a stable hash of the (unordered) set."""
    key = "|".join(sorted(things)).encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % 10 == 0


def sample_prompt(rng: random.Random, split: str) -> tuple[list[str], str]:
    """A prompt (things, language) from the requested split ("train" or "eval")."""
    want_eval = split != "train"
    while True:
        lang = "en" if rng.random() < 0.5 else "zh"
        k = rng.choice((1, 2, 2, 3, 3))
        things = rng.sample(sorted(_things(lang)), k)
        if _is_eval_prompt(things) == want_eval:
            return things, lang


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


DEFAULT_SIZES = {"train": 10000, "eval": 200}


def raw_records(split: str = "train", kind: str = "pair", n: int | None = None, seed: int = 0):
    """Standard-format raw records of the tiny task (conversational).

    ``kind="pair"`` (default, also used for SFT, where ``chosen`` is the demonstration, and for
    prompts): ``{"prompt", "chosen", "rejected"}`` with two demonstrator answers ordered by the gold
    reward, labels flipped with probability 0.1, gold ties re-drawn. ``kind="unpaired"`` (KTO):
    ``{"prompt", "completion", "label"}`` with label = gold >= 0.9 (only flawless answers), flipped with probability 0.1.
    """
    split = "train" if split == "train" else "eval"
    n = DEFAULT_SIZES[split] if n is None else n
    rng = random.Random(f"{seed}-{split}-{kind}")
    out: list[dict[str, Any]] = []
    while len(out) < n:
        things, lang = sample_prompt(rng, split)
        prompt = make_prompt(things, lang)
        if kind == "unpaired":
            resp = sample_demonstration(things, lang, rng)
            label = gold_reward(prompt, resp) >= 0.9
            if rng.random() < LABEL_NOISE:
                label = not label
            out.append(
                {"prompt": _user(prompt), "completion": _assistant(resp), "label": bool(label)}
            )
            continue
        a = sample_demonstration(things, lang, rng)
        for _ in range(5):
            b = sample_demonstration(things, lang, rng)
            if gold_reward(prompt, a) != gold_reward(prompt, b):
                break
        else:
            continue
        chosen, rejected = (a, b) if gold_reward(prompt, a) > gold_reward(prompt, b) else (b, a)
        if rng.random() < LABEL_NOISE:
            chosen, rejected = rejected, chosen
        out.append(
            {
                "prompt": _user(prompt),
                "chosen": _assistant(chosen),
                "rejected": _assistant(rejected),
            }
        )
    return out


def eval_prompts(n: int = 64, seed: int = 0) -> list[list[dict[str, str]]]:
    """Held-out conversational prompts (half English, half Chinese in expectation)."""
    rng = random.Random(f"{seed}-eval-prompts")
    return [_user(make_prompt(*sample_prompt(rng, "eval"))) for _ in range(n)]


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tiny tokenizer is trained on: every thing, colour and template, both languages."""
    rng = random.Random(f"{seed}-corpus")
    texts = []
    for lang in ("en", "zh"):
        table = _things(lang)
        for thing in table:
            texts.append(make_prompt([thing], lang))
            texts.append(ideal_response([thing], lang))
        for _ in range(400):
            things = rng.sample(sorted(table), rng.choice((1, 2, 3)))
            texts.append(make_prompt(things, lang))
            texts.append(sample_demonstration(things, lang, rng))
    texts += ["Hello! How are you?", "你好！你是谁？", "Tell me a story.", "今天天气怎么样？"]
    return texts
