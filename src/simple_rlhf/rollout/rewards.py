"""The one reward-source interface: ``(prompts, responses, **fields) -> list[float]``.

A *reward source* is any callable taking the prompts (strings or chat messages), the decoded
response texts and, as keyword arguments, extra per-prompt columns from the data (``answer=[...]``,
one entry per prompt), and returning one float per response. Behind it sit:

* :class:`RewardModelSource` — a trained reward model (``models/reward.py::RewardScorer``): raw
  score at the last real token (the EOS the scorer appends), normalised with the mean/std stored
  with the RM (``reward_stats.json``) and optionally clipped to ``[-clip, clip]``;
* Python functions, loaded by :func:`load_reward_function` from ``"module:function"``,
  ``"path/to/file.py:function"`` or a built-in name of :data:`REWARD_FUNCTIONS`;
* :class:`CombinedReward` — a weighted sum of named sources, which also reports each source's mean
  for logging and names the function that misbehaves (raises, wrong length, non-numbers, NaN).

Trainers build their reward with :func:`build_reward` and never care which kind they got.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

RewardFn = Callable[..., Sequence[float]]

# Built-in reward functions by name: a callable or a lazy "module:function" spec. Later stages add
# entries here (one table; keep it a dict).
REWARD_FUNCTIONS: dict[str, RewardFn | str] = {
    "tiny_gold": "simple_rlhf.data.tiny_task:gold_reward_batch",
}


class RewardFunctionError(RuntimeError):
    """A reward function could not be loaded, raised, or returned something unusable."""


def _import_attr(module: Any, attr: str, spec: str) -> RewardFn:
    try:
        fn = getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        hint = f" (it defines: {', '.join(public[:10])})" if public else ""
        raise RewardFunctionError(
            f"reward function {spec!r}: no attribute {attr!r}{hint}"
        ) from None
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r}: {attr!r} is not callable")
    check_signature(spec, fn)
    return fn


def check_signature(name: str, fn: RewardFn) -> None:
    """A reward function must take ``(prompts, completions, **fields)``: two positional arguments,
    and keyword arguments for the data's extra columns. Checked when it is loaded, so a wrong
    signature is reported before any model is loaded."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    try:
        sig.bind(["prompt"], ["completion"])
    except TypeError as e:
        raise RewardFunctionError(
            f"reward function {name!r} must accept (prompts, completions, **kwargs): two lists "
            f"(one entry per sample) and the data's extra columns as keyword lists; its "
            f"signature is {name.rsplit(':', 1)[-1]}{sig} ({e})"
        ) from None


def reward_name(spec: str | RewardFn) -> str:
    """How a reward source is called in logs and metrics: a callable's ``__name__``, a spec's
    function name."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    return spec.rsplit(":", 1)[-1] if ":" in spec else spec


def reward_function_names(funcs: Sequence[Any]) -> list[Any]:
    """Configured reward functions (specs or Python callables) without the placeholder ``none``
    (an empty flag is [])."""
    return [f for f in funcs if not (isinstance(f, str) and f.lower() == "none")]


def named_functions(
    specs: Sequence[str | RewardFn], taken: Sequence[str] = ()
) -> list[tuple[str, RewardFn]]:
    """Each spec loaded (:func:`load_reward_function`) under a distinct name (``f``, ``f_2``,
    ...; also distinct from ``taken``), ``none`` placeholders dropped."""
    out: list[tuple[str, RewardFn]] = []
    used = list(taken)
    for spec in reward_function_names(specs):
        name = base = reward_name(spec)
        k = 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.append(name)
        out.append((name, load_reward_function(spec)))
    return out


def load_reward_function(spec: str | RewardFn) -> RewardFn:
    """A reward function from a built-in name, ``"pkg.module:function"`` or ``"file.py:function"``.

    A callable is returned as it is. Errors name the spec and say what was wrong; the signature
    is checked (:func:`check_signature`).
    """
    if callable(spec):
        check_signature(reward_name(spec), spec)
        return spec
    if not isinstance(spec, str):
        raise RewardFunctionError(
            f"reward function {spec!r}: expected a name, 'module:function', 'file.py:function' "
            "or a Python callable"
        )
    spec = spec.strip()
    if spec in REWARD_FUNCTIONS:
        entry = REWARD_FUNCTIONS[spec]
        fn = entry if callable(entry) else load_reward_function(entry)
        check_signature(spec, fn)
        return fn
    if ":" not in spec:
        names = ", ".join(sorted(REWARD_FUNCTIONS))
        raise RewardFunctionError(
            f"unknown reward function {spec!r}: use a built-in name ({names}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    where, attr = spec.rsplit(":", 1)
    if where.endswith(".py") or "/" in where or Path(where).is_file():
        path = Path(where).expanduser()
        if not path.is_file():
            raise RewardFunctionError(f"reward function {spec!r}: file not found: {path}")
        mod_name = f"simple_rlhf_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise RewardFunctionError(f"reward function {spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - reported with the file name
            raise RewardFunctionError(
                f"reward function {spec!r}: importing {path} failed: {type(e).__name__}: {e}"
            ) from e
        return _import_attr(module, attr, spec)
    try:
        module = importlib.import_module(where)
    except ImportError as e:
        raise RewardFunctionError(f"reward function {spec!r}: cannot import {where!r}: {e}") from e
    return _import_attr(module, attr, spec)


def _accepted(fn: RewardFn, fields: dict[str, Any]) -> dict[str, Any]:
    """The data columns ``fn`` can take: all of them when it has ``**kwargs``, else only those
    named in its signature (a ``def reward(prompts, completions, answer)`` is not handed the
    data's other columns)."""
    import inspect

    if not fields:
        return fields
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fields
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return fields
    names = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    return {k: v for k, v in fields.items() if k in names}


def call_reward(
    name: str, fn: RewardFn, prompts: Sequence[Any], responses: Sequence[str], **fields: Any
) -> list[float]:
    """Call one reward source and check its answer: a finite number per response.

    Raises :class:`RewardFunctionError` naming ``name`` if it raises or returns the wrong length or
    type (a bool counts as 0/1).
    """
    fields = _accepted(fn, fields)
    try:
        out = fn(list(prompts), list(responses), **fields)
    except RewardFunctionError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the function's name
        raise RewardFunctionError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
    if hasattr(out, "tolist"):
        out = out.tolist()
    if not isinstance(out, Sequence) or isinstance(out, str | bytes):
        raise RewardFunctionError(
            f"reward function {name!r} must return a list of floats, got {type(out).__name__}"
        )
    if len(out) != len(responses):
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(out)} scores for {len(responses)} responses"
        )
    scores = []
    for i, s in enumerate(out):
        if not isinstance(s, int | float) and not hasattr(s, "__float__"):
            raise RewardFunctionError(
                f"reward function {name!r}: score {i} is {type(s).__name__}, not a number"
            )
        v = float(s)
        if not math.isfinite(v):
            raise RewardFunctionError(f"reward function {name!r}: score {i} is {v}")
        scores.append(v)
    return scores


def fields_to_columns(rows: Sequence[Mapping[str, Any] | None]) -> dict[str, list[Any]]:
    """Per-prompt field dicts -> keyword columns (``{"answer": [a0, a1, ...]}``; missing = None)."""
    keys: list[str] = []
    for r in rows:
        for k in r or {}:
            if k not in keys:
                keys.append(k)
    return {k: [(r or {}).get(k) for r in rows] for k in keys}


class RewardModelSource:
    """A reward model as a reward source: normalised (stored mean/std) and clipped scores.

    ``path`` is an RM folder written by ``simple-rlhf reward``. Dropout is off (loaded with
    ``dropout=0.0``, eval mode). The scorer re-tokenizes (prompt, response) with the RM's own
    tokenizer and appends EOS, so the score is read at the EOS token as in RM training, whatever the
    policy's tokenizer (responses that never emitted EOS are scored as if they ended there; use
    ``missing_eos_penalty`` in the trainer to override them).
    """

    def __init__(
        self,
        path: str,
        *,
        normalize: bool = True,
        clip: float | None = None,
        batch_size: int = 32,
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        from simple_rlhf.models.loading import disable_dropout
        from simple_rlhf.models.reward import RewardScorer

        self.path = path
        self.scorer = RewardScorer.load(
            path,
            trust_remote_code=trust_remote_code,
            normalize=normalize,
            clip=clip,
            dtype=dtype,
            batch_size=batch_size,
        )
        disable_dropout(self.scorer.model)
        for p in self.scorer.model.parameters():
            p.requires_grad_(False)

    @property
    def model(self) -> Any:
        return self.scorer.model

    @property
    def normalized(self) -> bool:
        return self.scorer.normalize

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **_: Any) -> list[float]:
        return self.scorer.score(list(prompts), list(responses))


class CombinedReward:
    """Weighted sum of named reward sources: ``score_i = sum_k w_k * source_k(prompt_i, resp_i)``.

    ``__call__`` is itself a reward source; :meth:`evaluate` also returns each source's scores so a
    trainer can log ``reward/<name>_mean``.
    """

    def __init__(
        self,
        sources: Mapping[str, RewardFn] | Sequence[tuple[str, RewardFn]],
        weights: Sequence[float] | None = None,
    ) -> None:
        items = list(sources.items()) if isinstance(sources, Mapping) else list(sources)
        if not items:
            raise RewardFunctionError("no reward source given: set a reward model or functions")
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise RewardFunctionError(f"reward sources must have distinct names, got {names}")
        weights = [1.0] * len(items) if weights is None or len(weights) == 0 else list(weights)
        if len(weights) != len(items):
            raise RewardFunctionError(
                f"{len(weights)} reward weights for {len(items)} reward sources ({names})"
            )
        self.names = names
        self.sources = [fn for _, fn in items]
        self.weights = [float(w) for w in weights]

    def evaluate(
        self, prompts: Sequence[Any], responses: Sequence[str], **fields: Any
    ) -> tuple[list[float], dict[str, list[float]]]:
        """``(weighted scores, {source name: its scores})``."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        per_source = {
            name: call_reward(name, fn, prompts, responses, **fields)
            for name, fn in zip(self.names, self.sources, strict=True)
        }
        total = [0.0] * len(responses)
        for name, w in zip(self.names, self.weights, strict=True):
            total = [t + w * s for t, s in zip(total, per_source[name], strict=True)]
        return total, per_source

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str], **fields: Any):
        return self.evaluate(prompts, responses, **fields)[0]

    @staticmethod
    def metrics(per_source: Mapping[str, Sequence[float]]) -> dict[str, float]:
        """``reward/<name>_mean`` for each source."""
        return {f"reward/{k}_mean": sum(v) / max(len(v), 1) for k, v in per_source.items()}


def build_reward(
    reward_model: str | None = None,
    reward_funcs: Sequence[str | RewardFn] = (),
    weights: Sequence[float] | None = None,
    *,
    normalize: bool = True,
    clip: float | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> CombinedReward:
    """The reward of a run: the RM (named ``rm``, first) and/or functions, with weights in order."""
    sources: list[tuple[str, RewardFn]] = []
    if reward_model:
        rm = RewardModelSource(
            reward_model,
            normalize=normalize,
            clip=clip,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        sources.append(("rm", rm))
    sources += named_functions(reward_funcs, taken=[n for n, _ in sources])
    return CombinedReward(sources, weights)


# --- built-in example reward functions (registered in REWARD_FUNCTIONS) ---------------------------

ANSWER_FORMAT = r"\\boxed\{.+\}|####\s*\S+"
_REFERENCE_FIELDS = ("answer", "solution", "reference", "ground_truth")


def format_reward(
    prompts: Sequence[Any], responses: Sequence[str], *, pattern: str = ANSWER_FORMAT, **_: Any
) -> list[float]:
    """1.0 where the response contains a match of the regex ``pattern`` (default: a final answer
    marked ``\\boxed{...}`` or ``#### ...``), else 0.0."""
    import re

    rx = re.compile(pattern, re.DOTALL)
    return [1.0 if rx.search(r) else 0.0 for r in responses]


def length_penalty(prompts: Sequence[Any], responses: Sequence[str], **_: Any) -> list[float]:
    """``-n_words / 100`` per response (add with a small weight to discourage rambling)."""
    return [-len(r.split()) / 100.0 for r in responses]


def extract_answer(text: str) -> str | None:
    """The final answer of a math-style text: the content of the last ``\\boxed{...}`` (braces
    balanced), else what follows the last ``####``; None if neither is present."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        i, depth = start + len("\\boxed{"), 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.splitlines()[0].strip() if tail else None
    return None


def normalize_answer(ans: str) -> str:
    """Comparable form: no spaces, ``$``, thousands commas or trailing ``.``; numbers canonical
    (``"1,000.0"`` -> ``"1000"``)."""
    s = ans.replace("$", "").replace(" ", "").replace(",", "").rstrip(".")
    try:
        x = float(s)
    except ValueError:
        return s
    return str(int(x)) if x.is_integer() else repr(x)


def math_exact_match(
    prompts: Sequence[Any], responses: Sequence[str], **fields: Any
) -> list[float]:
    """1.0 where the response's final answer (``\\boxed{}`` or ``####``) equals the reference.

    The reference comes from the first of the record columns ``answer``, ``solution``,
    ``reference``, ``ground_truth`` present; a reference written as a solution (GSM8K
    ``"... #### 42"``) is reduced to its final answer first. Responses with no answer score 0.
    """
    key = next((k for k in _REFERENCE_FIELDS if fields.get(k) is not None), None)
    if key is None:
        raise ValueError(
            "math_exact_match needs a reference-answer column in the data: one of "
            + ", ".join(_REFERENCE_FIELDS)
        )
    out = []
    for response, ref in zip(responses, fields[key], strict=True):
        ref = str(ref) if ref is not None else ""
        want = extract_answer(ref) or ref
        got = extract_answer(response)
        out.append(float(got is not None and normalize_answer(got) == normalize_answer(want)))
    return out


REWARD_FUNCTIONS.update(
    {
        "format": format_reward,
        "length_penalty": length_penalty,
        "math_exact_match": math_exact_match,
    }
)
