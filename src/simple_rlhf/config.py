"""Typed configuration: nested, frozen dataclasses -> YAML recipe + command-line flags -> validated.

Each stage's config (``SFTConfig``, ``RewardConfig``, ...) is a dataclass composed of small sections
(``ModelArgs``, ``DataArgs``, ``OptimArgs``, ...). A field is declared once, with its help text in
``metadata["help"]``; that text is what ``--help`` prints. Field names are unique across the sections
of a stage, so every field is also a flat flag: ``--learning-rate`` (or ``--learning_rate``, as in
DeepSpeed-Chat's scripts).

Precedence: dataclass defaults < YAML recipe (``--config recipe.yaml``) < command-line flags. A YAML
recipe may be nested by section (``optim: {learning_rate: 1e-3}``) or flat (``learning_rate: 1e-3``).
After loading, configs are read-only (frozen); ``__post_init__`` validates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from simple_rlhf.config_ranges import ANY, Range, range_of

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


def fld(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults become default factories)."""
    meta = {"help": help}
    if isinstance(default, list | dict | tuple) and not isinstance(default, str):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata=meta, **kwargs
        )
    return dataclasses.field(default=default, metadata=meta, **kwargs)


def section(factory: Callable[[], T], help: str = "") -> T:
    """A nested config section field; ``factory`` is the section class or a function making the
    stage's default instance of it."""
    return dataclasses.field(default_factory=factory, metadata={"help": help, "section": True})


# --- introspection ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlatField:
    """One leaf field of a (possibly nested) config class."""

    path: tuple[str, ...]  # e.g. ("optim", "learning_rate")
    name: str
    type: Any
    default: Any
    help: str
    owner: str = ""  # the config class that declares it

    @property
    def range(self) -> Range | None:
        """Its valid range when numeric (``config_ranges.RANGES``)."""
        inner, _ = _unwrap_optional(self.type)
        return range_of(self.owner, self.name) if inner in (int, float) else None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(f: dataclasses.Field, tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _section_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def flat_fields(
    cls: type, prefix: tuple[str, ...] = (), instance: Any = None
) -> Iterator[FlatField]:
    """Every leaf field of ``cls``, depth first, with its path of section names.

    Defaults are read from ``instance`` when given, so a stage can ship its own section defaults
    (``section(lambda: OptimArgs(learning_rate=3e-3))``) and ``--help`` shows them.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(f, tp):
            sub = getattr(instance, f.name) if instance is not None else _section_default(f)
            yield from flat_fields(tp, prefix + (f.name,), sub)
            continue
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        help_text = f.metadata.get("help", "")
        yield FlatField(prefix + (f.name,), f.name, tp, default, help_text, cls.__name__)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


# Options whose items may be Python callables when a config is built from Python (reward functions).
CALLABLE_OPTIONS = frozenset({"reward_funcs", "eval_reward_funcs"})


def callable_name(fn: Any) -> str:
    """``module:qualname`` of a callable (how a config built from Python is saved)."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field type, or raise ConfigError naming the field."""
    inner, optional = _unwrap_optional(tp)
    if callable(value) and not isinstance(value, type | str):
        if inner is str and name in CALLABLE_OPTIONS:
            return value  # a reward function passed from Python: used as it is
        raise ConfigError(f"{name}: expected a value, got the Python callable {value!r}")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    origin = typing.get_origin(inner)
    try:
        if origin is Literal:
            choices = typing.get_args(inner)
            if value not in choices:
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
            return value
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(inner) or (str,)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list | tuple):
                value = [value]
            items = [coerce(v, item_tp, name) for v in value]
            return tuple(items) if origin is tuple else items
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ConfigError(f"{name}: expected a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):  # nan / inf: never a meaningful setting
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            return number
        if inner is str:
            return str(value)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{name}: cannot read {value!r} as {inner}: {e}") from None
    return value


# --- building ----------------------------------------------------------------------------------


def _flatten_yaml(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """YAML mapping (nested by section or flat) -> {field name: raw value}."""
    leaves = {f.name: f for f in flat_fields(cls)}
    sections = {p for f in leaves.values() for p in f.path[:-1]}
    out: dict[str, Any] = {}

    def visit(d: Mapping[str, Any], where: str) -> None:
        for key, value in d.items():
            key = str(key).replace("-", "_")
            if key in sections and isinstance(value, Mapping):
                visit(value, f"{where}{key}.")
            elif key in leaves:
                out[key] = value
            else:
                close = difflib.get_close_matches(key, list(leaves) + list(sections), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"{source}: unknown option '{where}{key}'{hint}")

    visit(data, "")
    return out


def build(cls: type[T], values: Mapping[str, Any] | None = None, source: str = "config") -> T:
    """Instantiate ``cls`` from flat ``{field name: value}`` overrides (coerced and validated)."""
    values = dict(values or {})
    leaves = {f.name: f for f in flat_fields(cls)}
    unknown = set(values) - set(leaves)
    if unknown:
        name = sorted(unknown)[0]
        close = difflib.get_close_matches(name, list(leaves), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{source}: unknown option '{name}'{hint}")

    def make(c: type, prefix: tuple[str, ...], base: Any = None) -> Any:
        hints = _hints(c)
        kwargs = {}
        for f in dataclasses.fields(c):
            tp = hints[f.name]
            if _is_section(f, tp):
                kwargs[f.name] = make(tp, prefix + (f.name,), _section_default(f))
            elif f.name in values:
                kwargs[f.name] = value = coerce(values[f.name], tp, f.name)
                inner, _ = _unwrap_optional(tp)
                limits = range_of(c.__name__, f.name) if inner in (int, float) else None
                if limits is not None and value is not None and not limits.contains(value):
                    raise ConfigError(f"{f.name}: must be {limits.describe()}, got {value!r}")
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return c(**kwargs)

    try:
        return make(cls, ())
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict, with a clear error for a missing or malformed file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of options")
    return data


def load_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    yaml_data: Mapping[str, Any] | None = None,
) -> T:
    """defaults < YAML (file or already-parsed mapping) < overrides -> frozen, validated config."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_flatten_yaml(cls, load_yaml(yaml_path), str(yaml_path)))
    if yaml_data:
        values.update(_flatten_yaml(cls, yaml_data, "recipe"))
    values.update(overrides or {})
    return build(cls, values, source=str(yaml_path) if yaml_path else "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form (for saving next to a model or printing); a Python callable (a
    reward function passed from Python) is written as ``module:qualname``."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(plain(x) for x in v)
        if callable(v) and not isinstance(v, type):
            return callable_name(v)
        return v

    return plain(dataclasses.asdict(cfg))


# --- argparse ----------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        return "{" + ",".join(map(str, typing.get_args(inner))) + "}"
    if origin in (list, tuple):
        return "LIST"
    return getattr(inner, "__name__", str(inner)).upper()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per leaf field of ``cls``, grouped by section, help from the field's doc.

    Values are kept as strings (or bools) and coerced later by :func:`build`, so YAML and flags go
    through the same validation. Unset flags are absent from the namespace (``SUPPRESS``).
    """
    parser.add_argument(
        "--config", default=None, help="YAML recipe; command-line flags override its values"
    )
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    for f in flat_fields(cls):
        group_key = f.path[:-1]
        if group_key not in groups:
            title = ".".join(group_key) if group_key else "options"
            groups[group_key] = parser.add_argument_group(title)
        g = groups[group_key]
        flags = ["--" + f.name.replace("_", "-")]
        if "_" in f.name:
            flags.append("--" + f.name)
        inner, _ = _unwrap_optional(f.type)
        limits = f.range
        valid = f"; {limits.describe()}" if limits is not None and limits != ANY else ""
        help_text = f"{f.help} (default: {f.default!r}{valid})".replace("%", "%%")
        if inner is bool:
            g.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif typing.get_origin(inner) in (list, tuple):
            # nargs "*": a list flag given with no values sets the empty list
            g.add_argument(
                *flags, dest=f.name, nargs="*", default=argparse.SUPPRESS, help=help_text
            )
        else:
            g.add_argument(
                *flags,
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=_type_name(f.type),
                help=help_text,
            )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from a namespace made by a parser with :func:`add_config_arguments`."""
    values = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func")}
    leaves = {f.name for f in flat_fields(cls)}
    values = {k: v for k, v in values.items() if k in leaves}
    path = getattr(args, "config", None)
    if path is not None and "recipe" in leaves:
        # a composite recipe (e.g. `train`): its top-level keys configure this class, the rest
        # (per-step sections) is read by the class itself from the `recipe` file
        data = load_yaml(path)
        own = {k: v for k, v in data.items() if str(k).replace("-", "_") in leaves}
        return load_config(cls, None, {"recipe": str(path), **values}, yaml_data=own)
    return load_config(cls, path, values)


# --- shared sections -----------------------------------------------------------------------------

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """Which model and tokenizer to load, and how."""

    model_name_or_path: str = fld(
        "tiny", "HF Hub name or local folder of a causal LM; 'tiny' = the built-in offline default"
    )
    tokenizer_name_or_path: str | None = fld(
        None, "tokenizer to load if different from the model (default: the model's)"
    )
    trust_remote_code: bool = fld(
        False, "allow custom modelling code shipped with a Hub model (off: safe by default)"
    )
    dtype: str = fld("float32", "weights and compute dtype: float32, bfloat16 or float16")
    dropout: float | None = fld(
        None, "set every dropout probability of the model to this value (None: keep the model's)"
    )
    gradient_checkpointing: bool = fld(False, "recompute activations in backward to save memory")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class DataArgs:
    """Where the data comes from and how it is cut into tokens."""

    data_path: list[str] = fld(
        ["tiny"],
        "data sources, blended: 'tiny', a local file/folder, a Hub dataset name, or NAME@PATH "
        "(a named dataset's adapter applied to a local copy)",
    )
    data_split: str = fld(
        "auto",
        "shares of each pair dataset for steps 1,2,3, e.g. 2,4,4 (DeepSpeed-Chat --data_split); "
        "'all': no split; 'auto': your own files are not split (a command uses every record) "
        "while 'tiny' and the named Hub datasets get 2,4,4 as in DeepSpeed-Chat; `train` "
        "passes 2,4,4",
    )
    data_seed: int = fld(1234, "seed of the data split and shuffling")
    eval_fraction: float = fld(0.05, "held-out fraction for datasets with no published eval split")
    max_eval_samples: int | None = fld(256, "cap on evaluation records (None: all)")
    max_seq_len: int = fld(256, "maximum tokens of prompt + response")
    max_prompt_len: int = fld(
        192, "maximum prompt tokens; longer prompts are handled by truncation"
    )
    truncation: str = fld(
        "drop",
        "what to do with too-long examples: 'drop' them (counted and reported) or 'truncate' "
        "(prompt cut from the left, response cut on the right)",
    )
    train_on_prompt: bool = fld(
        False, "also train on prompt tokens (default: response tokens only)"
    )
    data_cache_dir: str | None = fld(
        None, "where tokenized data is cached (default: $SIMPLE_RLHF_HOME/data-cache)"
    )

    def __post_init__(self) -> None:
        if self.truncation not in ("drop", "truncate"):
            raise ConfigError(f"truncation: {self.truncation!r} is not one of drop, truncate")
        if self.max_prompt_len >= self.max_seq_len:
            raise ConfigError(
                f"max_prompt_len ({self.max_prompt_len}) must be below max_seq_len "
                f"({self.max_seq_len})"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.data_split in ("auto", "all"):
            return
        try:
            shares = [float(x) for x in self.data_split.split(",")]
        except ValueError:
            raise ConfigError(
                f"data_split: {self.data_split!r} is not like '2,4,4', 'all' or 'auto'"
            ) from None
        if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
            raise ConfigError(
                f"data_split: need three non-negative shares, got {self.data_split!r}"
            )

    @property
    def split_shares(self) -> tuple[float, ...] | None:
        """The data layer's split: ``None`` (auto), ``()`` (all) or three weights."""
        if self.data_split == "auto":
            return None
        if self.data_split == "all":
            return ()
        a, b, c = (float(x) for x in self.data_split.split(","))
        return a, b, c


@dataclasses.dataclass(frozen=True)
class HeldoutArgs:
    """Held-out evaluation by generation: answer held-out prompts greedily and score the answers
    (before training, at every evaluation and at the end), on any data."""

    gold_eval_prompts: int = fld(
        64, "held-out prompts answered greedily and scored at each evaluation (0: off)"
    )
    eval_prompts: str = fld(
        "auto",
        "where the held-out prompts come from: a file (JSONL/JSON/CSV/parquet; its extra "
        "columns are passed to the reward functions), 'auto' (the eval share of --data-path; "
        "'tiny' publishes its own held-out prompts) or 'none'",
    )
    eval_reward_funcs: list[str] = fld(
        [],
        "reward functions scoring the held-out answers ('file.py:function', 'module:function' "
        "or a built-in name; the mean is eval/gold_greedy). Default: the run's own "
        "--reward-funcs, or tiny_gold on 'tiny'",
    )
    eval_reward_model: str | None = fld(
        None, "a reward-model folder that also scores the held-out answers (eval/rm_greedy)"
    )
    pass_threshold: float = fld(
        1.0, "a held-out answer passes (eval/pass_rate_greedy) when its reward is >= this"
    )
    eval_max_new_tokens: int | None = fld(
        None, "tokens generated per held-out answer (default: the run's max_new_tokens, or 64)"
    )
    save_best: bool = fld(
        False,
        "save the model of the evaluation with the best held-out reward (eval/gold_greedy), "
        "not the last one (summary.json says which)",
    )


@dataclasses.dataclass(frozen=True)
class OptimArgs:
    """Optimiser, schedule and batch sizes."""

    learning_rate: float = fld(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = fld(0.0, "AdamW weight decay (not applied to biases and norms)")
    adam_beta1: float = fld(0.9, "AdamW beta1")
    adam_beta2: float = fld(0.95, "AdamW beta2")
    adam_epsilon: float = fld(1e-8, "AdamW epsilon (added to the root of the second moment)")
    lr_scheduler_type: str = fld(
        "cosine", "learning-rate schedule: linear, cosine, constant or constant_with_warmup"
    )
    num_warmup_steps: int = fld(0, "warm-up optimiser steps (overrides warmup_ratio if > 0)")
    warmup_ratio: float = fld(0.03, "warm-up as a fraction of all optimiser steps")
    num_train_epochs: int = fld(1, "passes over the training data")
    min_train_steps: int = fld(
        0,
        "train at least this many optimiser steps: small data sets get more passes than "
        "num_train_epochs (0: off; max_steps, when set, wins)",
    )
    max_steps: int | None = fld(None, "stop after this many optimiser steps (None: run all epochs)")
    per_device_train_batch_size: int = fld(8, "examples per device per micro-batch")
    per_device_eval_batch_size: int = fld(16, "examples per device per evaluation batch")
    gradient_accumulation_steps: int = fld(1, "micro-batches accumulated per optimiser step")
    max_grad_norm: float = fld(1.0, "clip the global gradient norm to this (0: no clipping)")
    seed: int = fld(1234, "random seed (model init, dropout, sampling, shuffling)")
    optim: str = fld(
        "adamw_torch_fused",
        "optimiser: 'adamw_torch_fused' (torch AdamW's fused kernel where the parameters allow "
        "it: float32/bfloat16/float16 on CPU or CUDA; else the loop below) or 'adamw_torch' (the "
        "per-parameter loop)",
    )

    def __post_init__(self) -> None:
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"optim: {self.optim!r} is not one of {', '.join(OPTIMIZERS)}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError("gradient_accumulation_steps: must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate: must be > 0")
        schedules = ("linear", "cosine", "constant", "constant_with_warmup")
        if self.lr_scheduler_type not in schedules:
            raise ConfigError(
                f"lr_scheduler_type: {self.lr_scheduler_type!r} is not one of {', '.join(schedules)}"
            )


OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")


@dataclasses.dataclass(frozen=True)
class LoraArgs:
    """LoRA adapters (peft). Off when lora_dim is 0."""

    lora_dim: int = fld(0, "LoRA rank; 0 disables LoRA")
    lora_alpha: float = fld(16.0, "LoRA scaling alpha")
    lora_dropout: float = fld(0.0, "dropout on the LoRA branch")
    lora_module_name: str = fld(
        "all-linear", "modules to adapt: 'all-linear' or comma-separated names (e.g. q_proj,v_proj)"
    )
    only_optimize_lora: bool = fld(True, "train only the LoRA weights (and heads), freeze the rest")
    lora_learning_rate: float | None = fld(
        None, "learning rate of the LoRA weights (None: the main learning rate)"
    )
    merge_lora: bool = fld(True, "merge the adapter into the saved weights (else save the adapter)")
    load_in_4bit: bool = fld(
        False,
        "QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes); needs --lora-dim > 0, not with "
        "ZeRO-3 yet; saved merged into the dequantised base as a full-precision model",
    )


@dataclasses.dataclass(frozen=True)
class LogArgs:
    """Output, evaluation cadence, logging and checkpoints."""

    output_dir: str = fld("outputs/sft", "where the model, logs and checkpoints are written")
    eval_steps: int = fld(
        0, "also evaluate every N optimiser steps (0: before training and per epoch)"
    )
    logging_steps: int = fld(10, "log training metrics every N optimiser steps")
    report_to: list[str] = fld(
        ["jsonl", "tensorboard"], "metric sinks: jsonl, tensorboard, wandb (none for no files)"
    )
    save_steps: int = fld(
        0, "write a resumable checkpoint every N optimiser steps (0: only at end)"
    )
    resume: bool = fld(True, "resume from the latest checkpoint in output_dir if there is one")
    resume_with_changes: bool = fld(
        False,
        "resume even when options that change the training (learning rate, batch size, data, "
        "model, ...) differ from those of the run that wrote the checkpoint (else: stop, listing "
        "them)",
    )
    progress_bar: bool = fld(True, "show a progress bar (off in CI logs)")

    def __post_init__(self) -> None:
        unknown = [s for s in self.report_to if s not in SINKS]
        if unknown:
            raise ConfigError(f"report_to: {unknown[0]!r} is not one of {', '.join(SINKS)}")
        out = Path(self.output_dir)
        blocker = next((p for p in (out, *out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"output_dir: {str(blocker)!r} is a file, not a folder")


OFFLOADS = ("none", "optimizer", "param", "all")
SINKS = ("jsonl", "tensorboard", "wandb", "none")  # metric sinks (infra/logging.py)


def require_deepspeed(option: str) -> None:
    """A :class:`ConfigError` naming ``option`` when DeepSpeed is not installed."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"{option}: needs DeepSpeed, which is not installed here: pip install 'deepspeed<1' "
            "(or: bash scripts/setup.sh --dev)"
        )


@dataclasses.dataclass(frozen=True)
class DistArgs:
    """Several processes (torchrun / deepspeed launcher): DDP, or DeepSpeed ZeRO 0-3 with offload."""

    zero_stage: int | None = fld(
        None,
        "DeepSpeed ZeRO stage 0-3 (None: no DeepSpeed; plain DDP when launched with several "
        "processes). 1 shards optimizer states, 2 also gradients, 3 also parameters",
    )
    offload: str = fld(
        "none",
        "with ZeRO, keep on CPU: none, optimizer (states + update; stage >= 1), param (stage 3) "
        "or all (both)",
    )
    deepspeed_config: str | None = fld(
        None,
        "a DeepSpeed JSON config used instead of the one built from these flags; its 'auto' values "
        "are filled from the flags (needs --zero-stage unless the file sets zero_optimization)",
    )
    local_rank: int = fld(
        -1, "rank on this node, passed by the deepspeed launcher (else read from $LOCAL_RANK)"
    )
    dist_backend: str | None = fld(
        None, "torch.distributed backend (None: nccl when CUDA is available, else gloo)"
    )

    def __post_init__(self) -> None:
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.zero_stage is not None or self.deepspeed_config is not None:
            require_deepspeed("zero_stage" if self.zero_stage is not None else "deepspeed_config")
        if self.offload not in OFFLOADS:
            raise ConfigError(f"offload: {self.offload!r} is not one of {', '.join(OFFLOADS)}")
        if self.offload != "none" and self.zero_stage is None and self.deepspeed_config is None:
            raise ConfigError("offload: needs DeepSpeed (--zero-stage 1, 2 or 3)")
        if self.offload in ("optimizer", "all") and self.zero_stage == 0:
            raise ConfigError("offload: optimizer offload needs --zero-stage 1, 2 or 3")
        if self.offload in ("param", "all") and self.zero_stage not in (3, None):
            raise ConfigError("offload: parameter offload needs --zero-stage 3")
        if self.dist_backend is not None and self.dist_backend not in (
            "gloo",
            "nccl",
            "mpi",
            "ccl",
        ):
            raise ConfigError(
                f"dist_backend: {self.dist_backend!r} is not one of gloo, nccl, mpi, ccl"
            )
