"""``simple-rlhf <command> [options]``: one entry point, one sub-command per stage or tool.

Commands are registered by module path and imported only when used, so ``simple-rlhf --help`` is
instant. Each command's options come from its config dataclass (``--help`` prints every field's
doc); ``--config recipe.yaml`` loads a YAML recipe that flags override.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, config class, run function, one-line summary)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": (
        "simple_rlhf.pipeline",
        "PipelineConfig",
        "run",
        "steps 1-3 (SFT -> reward model -> PPO) in one command",
    ),
    "sft": ("simple_rlhf.trainers.sft", "SFTConfig", "run", "step 1: supervised fine-tuning"),
    "reward": ("simple_rlhf.trainers.reward", "RewardConfig", "run", "step 2: reward model"),
    "ppo": ("simple_rlhf.trainers.ppo", "PPOConfig", "run", "step 3: PPO with actor and critic"),
    "dpo": ("simple_rlhf.trainers.preference", "DPOConfig", "run", "DPO and its loss family"),
    "simpo": ("simple_rlhf.trainers.preference", "SimPOConfig", "run", "SimPO (reference-free)"),
    "cpo": ("simple_rlhf.trainers.preference", "CPOConfig", "run", "CPO / CPO-SimPO"),
    "orpo": ("simple_rlhf.trainers.preference", "ORPOConfig", "run", "ORPO (odds ratio)"),
    "kto": ("simple_rlhf.trainers.kto", "KTOConfig", "run", "KTO on unpaired good/bad labels"),
    "grpo": ("simple_rlhf.trainers.grpo", "GRPOConfig", "run", "GRPO (group baseline)"),
    "rloo": ("simple_rlhf.trainers.grpo", "RLOOConfig", "run", "RLOO (leave-one-out baseline)"),
    "reinforce": (
        "simple_rlhf.trainers.grpo",
        "ReinforceConfig",
        "run",
        "REINFORCE++ (and its group-baseline variant)",
    ),
    "distill": (
        "simple_rlhf.trainers.distill",
        "DistillConfig",
        "run",
        "knowledge distillation: supervised KD, SeqKD, GKD",
    ),
    "rejection-sampling": (
        "simple_rlhf.trainers.rejection_sampling",
        "RejectionSamplingConfig",
        "run",
        "best-of-n sampling + fine-tuning, in rounds",
    ),
    "score": (
        "simple_rlhf.serve.score",
        "ScoreConfig",
        "run",
        "score prompt/response pairs with a reward model",
    ),
    "eval": (
        "simple_rlhf.serve.compare",
        "CompareConfig",
        "run",
        "answers of several models side by side, with gold/RM scores",
    ),
    "chat": ("simple_rlhf.serve.chat", "ChatConfig", "run", "multi-round chat in the terminal"),
}


def register(name: str, module: str, config: str, run: str, summary: str) -> None:
    """Add a command (used by later stages and by plugins)."""
    COMMANDS[name] = (module, config, run, summary)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {n:<{width}}  {COMMANDS[n][3]}" for n in COMMANDS]
    return (
        "usage: simple-rlhf <command> [options]   (simple-rlhf <command> --help for its options)\n\n"
        "commands:\n" + "\n".join(lines)
    )


def _known_errors() -> tuple[type[BaseException], ...]:
    from simple_rlhf.config import ConfigError
    from simple_rlhf.data.tokenize import TemplateError
    from simple_rlhf.infra.build_locks import StaleBuildLockError
    from simple_rlhf.infra.checkpoint import CheckpointError
    from simple_rlhf.infra.guard import NonFiniteError
    from simple_rlhf.models.loading import ModelLoadError
    from simple_rlhf.rollout.rewards import RewardFunctionError

    errors: list[type[BaseException]] = [ConfigError, ModelLoadError, TemplateError]
    errors += [CheckpointError, NonFiniteError, StaleBuildLockError, RewardFunctionError]
    try:
        from simple_rlhf.data.errors import DataError

        errors.append(DataError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        from simple_rlhf import __version__

        print(__version__)
        return 0
    # the deepspeed launcher puts --local_rank=N before the command: move it after
    launcher_flags = [
        a for a in argv if a.startswith("--local_rank") or a.startswith("--local-rank")
    ]
    if launcher_flags and argv[0] in launcher_flags:
        argv = [a for a in argv if a not in launcher_flags]
        argv = argv[:1] + launcher_flags + argv[1:]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"simple-rlhf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, config_name, run_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    from simple_rlhf.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(
        prog=f"simple-rlhf {name}",
        description=(module.__doc__ or summary).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, config_cls)
    args = parser.parse_args(rest)
    errors = _known_errors()
    try:
        cfg = config_from_args(config_cls, args)
        getattr(module, run_name)(cfg)
    except errors as e:
        from simple_rlhf.config import ConfigError

        rank = os.environ.get("RANK")  # set by torchrun / the deepspeed launcher
        if rank is None:
            print(f"simple-rlhf {name}: error: {e}", file=sys.stderr)
        elif rank == "0" or not isinstance(e, ConfigError):
            # every rank reads the same options: a config error is said once, by rank 0
            print(f"simple-rlhf {name} [rank {rank}]: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simple-rlhf {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
