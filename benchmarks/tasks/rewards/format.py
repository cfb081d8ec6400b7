"""Reward of the ``format`` task (standard library only).

English: "Name 3 animals other than cat, comma separated." -> "dog, fox, horse"
         ("..., one per line." -> "dog\\nfox\\nhorse").
Chinese: "请列出3个动物（不要猫），用顿号分隔。" -> "狗、马、牛" ("每行写一个。" -> one per line).

Four parts, summed (1.0 only when all hold):

* count (0.3): exactly the requested number of items (0.15 when off by one);
* items (0.3): share of the items that are distinct words of the category, not excluded;
* format (0.2): the requested separator (", " / "、", or one per line), no bullets or numbers;
* no chatter (0.2): nothing but the items (no "Sure! Here are ...:", no "Hope this helps!").

The request comes from the ``category``, ``count``, ``style`` and ``exclude`` columns when given,
else from the prompt text (a string, or a list of chat messages: the last user message).
"""

from __future__ import annotations

import re
from typing import Any

# fmt: off
CATEGORIES = {
    "animals": {
        "en": ["cat", "dog", "fox", "horse", "cow", "pig", "sheep", "goat", "lion", "tiger"],
        "zh": ["猫", "狗", "狐狸", "马", "牛", "猪", "羊", "山羊", "狮子", "老虎"],
        "name": {"en": "animals", "zh": "动物"},
    },
    "fruits": {
        "en": ["apple", "banana", "pear", "peach", "plum", "grape", "mango", "lemon", "cherry",
               "melon"],
        "zh": ["苹果", "香蕉", "梨", "桃子", "李子", "葡萄", "芒果", "柠檬", "樱桃", "西瓜"],
        "name": {"en": "fruits", "zh": "水果"},
    },
    "colors": {
        "en": ["red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange",
               "brown"],
        "zh": ["红色", "蓝色", "绿色", "黄色", "黑色", "白色", "粉色", "紫色", "橙色", "棕色"],
        "name": {"en": "colors", "zh": "颜色"},
    },
    "cities": {
        "en": ["paris", "london", "tokyo", "rome", "berlin", "madrid", "cairo", "delhi", "lima",
               "oslo"],
        "zh": ["巴黎", "伦敦", "东京", "罗马", "柏林", "马德里", "开罗", "德里", "利马", "奥斯陆"],
        "name": {"en": "cities", "zh": "城市"},
    },
}
# fmt: on
SEPARATOR = {"en": ", ", "zh": "、"}
_CJK = re.compile(r"[\u4e00-\u9fff]")
_BULLET = re.compile(r"^\s*(?:\d+[.)、]|[-*•])\s*")
_COMMA = re.compile(r"[,，、]")


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: the string itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def parse_request(prompt: Any) -> dict[str, Any]:
    """``{"category", "count", "style", "exclude"}`` read from the prompt text."""
    text = prompt_text(prompt)
    lang = "zh" if _CJK.search(text) else "en"
    count = re.search(r"\d+", text)
    category = next(
        (c for c, v in CATEGORIES.items() if v["name"][lang] in text), next(iter(CATEGORIES))
    )
    style = "lines" if ("line" in text or "每行" in text) else "comma"
    if lang == "en":
        found = re.search(r"other than ([a-z ,]+?)(?:,? (?:comma|one per line))", text)
        words = re.split(r",\s*|\s+and\s+", found.group(1)) if found else []
    else:
        found = re.search(r"不要([^）)]+)", text)
        words = re.split(r"[和、]", found.group(1)) if found else []
    exclude = [w.strip() for w in words if w.strip()]
    n = int(count.group()) if count else 0
    return {"category": category, "count": n, "style": style, "exclude": exclude}


def split_items(text: str) -> tuple[list[str], bool, bool]:
    """(items, chatter, bullets) of a completion: lines, then commas; a lead-in up to a colon and
    lines that hold no item word are chatter."""
    chatter = bullets = False
    items: list[str] = []
    for line in text.strip().splitlines():
        if re.search(r"[:：]", line):
            chatter = True
            line = re.split(r"[:：]", line)[-1]
        if _BULLET.match(line):
            bullets = True
            line = _BULLET.sub("", line)
        for part in _COMMA.split(line):
            part = part.strip().rstrip(".。!！")
            if part:
                items.append(part)
    return items, chatter, bullets


def score(completion: str, request: dict[str, Any], lang: str) -> float:
    words = CATEGORIES.get(request.get("category"), {}).get(lang, [])
    allowed = set(words) - set(request.get("exclude") or [])
    all_words = {w for v in CATEGORIES.values() for w in v[lang]}
    text = completion.strip().lower() if lang == "en" else completion.strip()
    raw_items, chatter, bullets = split_items(text)
    items = [w for w in raw_items if w in all_words]
    chatter = chatter or len(items) < len(raw_items)
    want = int(request.get("count") or 0)
    total = 0.3 if len(items) == want else 0.15 if abs(len(items) - want) == 1 else 0.0
    good = {w for w in items if w in allowed}
    total += 0.3 * len(good) / max(len(items), want, 1)
    sep = "\n" if request.get("style") == "lines" else SEPARATOR[lang]
    if items and not bullets and sep.join(items) in text:
        total += 0.2
    if not chatter:
        total += 0.2
    return round(total, 6)


def reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """One score in [0, 1] per completion (kwargs: optional ``category``, ``count``, ``style``,
    ``exclude`` columns)."""
    keys = ("category", "count", "style", "exclude")
    out = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        lang = "zh" if _CJK.search(prompt_text(prompt)) else "en"
        columns = {k: kwargs[k][i] for k in keys if kwargs.get(k) is not None}
        if len(columns) == len(keys) and all(v is not None for v in columns.values()):
            request = columns
        else:
            request = parse_request(prompt)
        out.append(score(completion, request, lang))
    return out
