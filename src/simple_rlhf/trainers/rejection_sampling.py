"""Rejection-sampling (best-of-N) fine-tuning, in rounds.

Variant (the "RAFT" / expert-iteration / Llama-2 rejection-sampling recipe): each round

1. takes the next ``--max-prompts`` prompts (kind "prompt", ``--data-step``, default 3);
2. samples ``--num-samples`` N responses per prompt from the current policy with the one generation
   engine (``rollout/generate.py``; prompts repeated N times, seeded);
3. scores them with the reward-source interface PPO and GRPO use (``rollout/rewards.py``:
   ``build_reward`` -> ``CombinedReward``; functions resolved by ``load_reward_function``): a
   reward model (``--reward-model``, normalised as stored with it) and/or reward functions
   (``--reward-funcs``: built-in names such as ``tiny_gold``, ``module:function`` or
   ``file.py:function``, called with the prompts' extra data columns as keywords), weighted
   (``--reward-weights``, RM first); with neither, on the tiny task, the gold reward ``tiny_gold``;
4. keeps the best response of each prompt (argmax; first on ties; with ``--require-eos`` only among
   responses that ended with EOS; ``--min-score`` drops prompts whose best is below it) and writes
   ``round_<r>/data.jsonl`` (``{"messages": [...], "score": s}`` for chat prompts, ``{"prompt",
   "response", "score"}`` for raw ones), readable by the data layer; with ``--keep-worst`` also
   ``round_<r>/pairs.jsonl`` (best as chosen, worst as rejected, where they differ);
5. fine-tunes the policy on that file by calling the SFT trainer (``trainers/sft.py::run``) with a
   config built from this one (model = the current policy, optimiser/LoRA sections as given here),
   saving it to ``round_<r>/model``; the next round samples from it.

Reported per round: mean score of all samples, mean best-of-N score, mean worst score, each reward
source's mean (``reward/<name>_mean``), EOS rate and, on the tiny task, the policy's greedy gold
reward before and after the round. A finished round (``round_<r>/round.json``) is skipped when the
run is restarted; an unfinished one reuses its written data and resumes its SFT from the latest
checkpoint. The final policy is saved to ``--output-dir``.

One CPU, tiny default (policy = the SFT model, gold reward as the scorer)::

    simple-rlhf rejection-sampling --model-name-or-path outputs/sft --rounds 2 \\
        --output-dir outputs/rejection_sampling

With a reward model and a real policy, LoRA::

    simple-rlhf rejection-sampling --model-name-or-path outputs/opt-sft \\
        --reward-model outputs/rm --data-path Dahoas/rm-static --num-samples 4 \\
        --lora-dim 64 --learning-rate 1e-4 --output-dir outputs/opt-rs

Measured (``benchmarks/distill_results.md``; tiny SFT policy at greedy gold 0.755, 128 prompts x
8 samples per round, 2 SFT epochs per round, seed 1234). Gold reward as the scorer, default lr
3e-4: 0.755 -> 0.943 -> 0.993 (per-chunk seeds; session 2's seeding 0.755 -> 0.979 -> 0.993);
at lr 1e-3 round 1 is as good (0.977) but round 2 falls back (0.928; 256 prompts: 0.981 ->
0.962), so the default is 3e-4. A 200-step RM as the scorer (pair accuracy 0.78): 0.755 -> 0.868
-> 0.865 (session 2's seeding: 0.889 -> 0.828); round 2 does not help because the RM's picks get
worse in truth once the policy has moved towards what the RM likes (gold of the kept responses
0.80 -> 0.74; at lr 1e-3 0.80 -> 0.66): the RM's proxy error. Selection and records:
``trainers/best_of_n.py``.

Sampling is in chunks of ``generation_batch_size // num_samples`` prompts, each with its own
seed (round seed, chunk index), so the samples do not depend on how the chunks are spread.
Several processes (``torchrun``/``deepspeed`` launcher, ``--zero-stage`` etc. as for SFT): every
rank holds the whole policy and samples and scores its contiguous share of the chunks; the
records are gathered in chunk order, so rank 0 writes the same ``data.jsonl`` as one process (with
a reward model: up to float rounding of its batches, which could flip a near tie); the other ranks
wait at a barrier, then the SFT fine-tune runs on all ranks (``sft.run``: DDP or ZeRO). The gold
evaluation and the final save are rank 0's.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from simple_rlhf.config import (
    ConfigError,
    DataArgs,
    DistArgs,
    HeldoutArgs,
    LogArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    fld,
    section,
)
from simple_rlhf.data.pipeline import load_encoded
from simple_rlhf.infra.checkpoint import save_hf_model
from simple_rlhf.infra.distributed import init_distributed
from simple_rlhf.infra.logging import MetricsLogger, format_metrics
from simple_rlhf.infra.seed import set_seed
from simple_rlhf.rollout.generate import (
    SamplingArgs,
    concat_rollouts,
    decode_responses,
    generate,
)
from simple_rlhf.rollout.rewards import (
    CombinedReward,
    build_reward,
    call_reward,
    fields_to_columns,
)
from simple_rlhf.trainers import common
from simple_rlhf.trainers.best_of_n import select, write_jsonl, write_text_atomic

RewardFn = Callable[..., list[float]]


@dataclasses.dataclass(frozen=True)
class RejectionSamplingArgs:
    """Rounds, samples per prompt, the scorer and what is kept."""

    num_samples: int = fld(8, "responses sampled per prompt (the N of best-of-N)")
    rounds: int = fld(1, "sample -> select -> fine-tune rounds")
    max_prompts: int | None = fld(
        512, "prompts per round; each round takes the next ones, cycling (None: all every round)"
    )
    reward_model: str | None = fld(None, "reward model folder (simple-rlhf reward) to score with")
    reward_funcs: list[str] = fld(
        [],
        "reward functions: built-in names (tiny_gold), module:function or file.py:function "
        "(with no RM and no function on the tiny task: tiny_gold)",
    )
    reward_weights: list[float] = fld(
        [], "weights of the reward sources, RM first then functions (empty: all 1)"
    )
    normalize_reward: bool = fld(True, "normalise RM scores with the mean/std stored with the RM")
    keep_worst: bool = fld(
        False, "also write the worst response of each prompt as preference pairs (pairs.jsonl)"
    )
    min_score: float | None = fld(None, "drop prompts whose best score is below this")
    require_eos: bool = fld(True, "only responses that ended with EOS can be kept")
    data_step: int = fld(3, "which step's share of the data split gives the prompts")

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.rounds < 1:
            raise ConfigError("num_samples and rounds: must be >= 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError("max_prompts: must be >= 1 (or None for all)")
        n_sources = bool(self.reward_model) + len(self.reward_funcs)
        if self.reward_weights and len(self.reward_weights) != n_sources:
            raise ConfigError(
                f"reward_weights: {len(self.reward_weights)} weights for {n_sources} reward sources"
            )
        if self.data_step not in (1, 2, 3):
            raise ConfigError(f"data_step: must be 1, 2 or 3, got {self.data_step}")


@dataclasses.dataclass(frozen=True)
class RejectionSamplingConfig:
    """Best-of-N sampling + SFT on the best, in rounds."""

    model: ModelArgs = section(lambda: ModelArgs(model_name_or_path="outputs/sft"))
    data: DataArgs = section(DataArgs)
    optim: OptimArgs = section(
        lambda: OptimArgs(learning_rate=3e-4, num_train_epochs=2, per_device_train_batch_size=16)
    )
    lora: LoraArgs = section(LoraArgs)
    log: LogArgs = section(lambda: LogArgs(output_dir="outputs/rejection_sampling"))
    sampling: SamplingArgs = section(SamplingArgs)
    rs: RejectionSamplingArgs = section(RejectionSamplingArgs)
    heldout: HeldoutArgs = section(HeldoutArgs)
    dist: DistArgs = section(DistArgs)

    def __post_init__(self) -> None:
        if self.lora.lora_dim > 0 and not self.lora.merge_lora:
            raise ConfigError(
                "LoRA in rejection sampling needs merge_lora: each round's model is loaded again "
                "to be evaluated, sampled from and saved"
            )


# ---- pieces (tested on their own) ----------------------------------------------------------------


def reward_source(cfg: RejectionSamplingConfig) -> tuple[RewardFn, str]:
    """The run's scorer (``rollout/rewards.py::build_reward``: the RM and/or functions, weighted)
    and its description; with neither on the tiny task, the gold reward ``tiny_gold``."""
    rs = cfg.rs
    funcs = list(rs.reward_funcs)
    if not rs.reward_model and not funcs:
        if "tiny" not in cfg.data.data_path:
            raise ConfigError("no reward: set --reward-model (an RM folder) and/or --reward-funcs")
        funcs = ["tiny_gold"]
    reward = build_reward(
        rs.reward_model,
        funcs,
        rs.reward_weights,
        normalize=rs.normalize_reward,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    weights = ", ".join(f"{w:g} x {n}" for w, n in zip(reward.weights, reward.names, strict=True))
    return reward, weights


def round_prompts(prompts: Sequence[Any], round_index: int, max_prompts: int | None) -> list:
    """Round ``round_index`` (0-based) takes the next ``max_prompts`` prompts, cycling."""
    if max_prompts is None or max_prompts >= len(prompts):
        return list(prompts)
    start = (round_index * max_prompts) % len(prompts)
    idx = [(start + i) % len(prompts) for i in range(max_prompts)]
    return [prompts[i] for i in idx]


def prompt_chunks(n_prompts: int, num_samples: int, generation_batch_size: int) -> list[range]:
    """The round's prompts cut into generation chunks of ``max(1, generation_batch_size //
    num_samples)`` prompts (each sampled ``num_samples`` times in one ``generate`` call); the
    chunks do not depend on the number of processes."""
    per = max(1, generation_batch_size // num_samples)
    return [range(s, min(s + per, n_prompts)) for s in range(0, n_prompts, per)]


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` of a round seeded ``seed``."""
    return random.Random(f"{seed}-rs-chunk-{chunk}").randrange(2**31)


def sample_chunks(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    chunks: Sequence[range],
    reward_fn: RewardFn,
    sampling: SamplingArgs,
    num_samples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Sample ``num_samples`` responses per prompt of ``chunks`` (chunk ``c`` seeded
    :func:`chunk_seed` ``(seed, c)``, so its samples depend on its prompts and the seed only) and
    score them all in one call. Returns one record per prompt, in chunk order: ``{"texts",
    "scores", "eos", "lengths"}`` (lists of ``num_samples``) and ``"sources"`` (each reward
    source's scores, when ``reward_fn`` is the shared ``CombinedReward``)."""
    N, parts, rows = num_samples, [], [i for c in chunks for i in c]
    if not rows:
        return []
    for c in chunks:
        ids = [prompts[i]["prompt_ids"] for i in c for _ in range(N)]  # each prompt N times
        parts.append(generate(policy, tokenizer, ids, sampling, seed=chunk_seed(seed, c.start)))
    rollout = concat_rollouts(parts, tokenizer.pad_token_id)
    texts = decode_responses(tokenizer, rollout)
    raw_prompts = [prompts[i]["prompt"] for i in rows for _ in range(N)]
    fields = fields_to_columns([prompts[i]["fields"] for i in rows for _ in range(N)])
    if isinstance(reward_fn, CombinedReward):  # the shared interface: also each source's scores
        flat, per_source = reward_fn.evaluate(raw_prompts, texts, **fields)
    else:
        flat, per_source = call_reward("reward", reward_fn, raw_prompts, texts, **fields), {}
    eos, lengths = rollout.has_eos.tolist(), rollout.response_lengths.tolist()
    return [
        {
            "texts": texts[k * N : (k + 1) * N],
            "scores": [float(x) for x in flat[k * N : (k + 1) * N]],
            "eos": eos[k * N : (k + 1) * N],
            "lengths": lengths[k * N : (k + 1) * N],
            "sources": {n: list(v[k * N : (k + 1) * N]) for n, v in per_source.items()},
        }
        for k in range(len(rows))
    ]


def sample_and_select(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    reward_fn: RewardFn,
    sampling: SamplingArgs,
    rs: RejectionSamplingArgs,
    seed: int,
    dist: Any = None,
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Sample N responses per prompt, score, keep the best (and worst).

    The prompts are sampled in chunks (:func:`prompt_chunks`, each with its own seed); with
    ``dist`` (several processes) rank ``r`` samples and scores its contiguous share of the chunks
    and the ranks' records are gathered on every rank in chunk order, so every rank selects the
    same rows, those of one process (up to the float rounding of a reward model's batches).

    Returns ``(sft_rows, pair_rows, metrics)``.
    """
    N = rs.num_samples
    chunks = prompt_chunks(len(prompts), N, sampling.generation_batch_size)
    mine = dist.shard(chunks) if dist is not None else chunks
    samples = sample_chunks(policy, tokenizer, prompts, mine, reward_fn, sampling, N, seed)
    if dist is not None and dist.world_size > 1:
        parts: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, samples)
        samples = [s for part in parts for s in part]  # rank order = chunk order
    return select(prompts, samples, rs)


def sft_config_for_round(cfg: RejectionSamplingConfig, policy: str, data: Path, out: Path):
    """The SFT trainer's config for one round: this run's sections, the round's data and model."""
    from simple_rlhf.trainers.sft import SFTArgs, SFTConfig

    return SFTConfig(
        model=dataclasses.replace(cfg.model, model_name_or_path=policy),
        data=dataclasses.replace(cfg.data, data_path=[str(data)], eval_fraction=0.0),
        optim=cfg.optim,
        lora=cfg.lora,
        log=dataclasses.replace(cfg.log, output_dir=str(out)),
        sft=SFTArgs(),
        heldout=HeldoutArgs(gold_eval_prompts=0),
        dist=cfg.dist,
    )


# ---- the run -------------------------------------------------------------------------------------


def run(cfg: RejectionSamplingConfig) -> dict[str, Any]:
    """Run the rounds and save the final policy; returns the summary (also in summary.json)."""
    from simple_rlhf.trainers import sft

    # ---- setup ----
    dist = init_distributed(cfg.dist)  # one process: no process group, nothing changes
    multi = dist if dist.initialized else None
    # sampling / evaluation use plain whole models on every rank: not partitioned by a ZeRO-3
    # setting the SFT rounds leave behind, no synced generation
    plain = dist.plan(cfg.optim, cfg.model.dtype, zero_stage=None).hf_current
    set_seed(cfg.optim.seed)
    rs, out_dir = cfg.rs, Path(cfg.log.output_dir)
    with dist.main_first():  # the node's main rank builds the tiny model / data cache first
        tokenizer = common.load_run_tokenizer(cfg.model)
        prompts, stats = load_encoded(tokenizer, cfg.data, "prompt", rs.data_step, "train")
    reward_fn, reward_name = reward_source(cfg)
    logger = MetricsLogger(
        out_dir, cfg.log.report_to, total_steps=None, progress_bar=False, enabled=dist.is_main
    )
    if dist.is_main:
        common.save_run_config(out_dir, cfg)
    logger.print(
        f"[rejection-sampling] {rs.rounds} round(s) x {min(len(prompts), rs.max_prompts or 10**9)} "
        f"prompts x {rs.num_samples} samples; prompts: {stats.describe()}; scorer: {reward_name}"
        + (f"; {dist.describe()}" if multi else "")
    )
    heldout = common.heldout_evaluator(
        cfg, tokenizer, run_reward_funcs=rs.reward_funcs, max_new_tokens=cfg.sampling.max_new_tokens
    )
    logger.print(f"[rejection-sampling] {heldout.describe()}")

    def load_policy(path: str) -> Any:  # to sample from: QLoRA's 4-bit base if asked, no adapter
        with plain():
            return common.load_trained_lm(
                cfg.model, tokenizer, cfg.lora, name_or_path=path, dropout=0.0, apply_adapter=False
            )

    def gold(model: Any) -> dict[str, float]:  # rank 0 only; ``model``: a model or its path
        if not heldout or not dist.is_main:
            return {}
        model = load_policy(model) if isinstance(model, str) else model
        with plain():
            return heldout(model, tokenizer, log=logger.print)

    policy_path = cfg.model.model_name_or_path
    summary: dict[str, Any] = {"scorer": reward_name, "prompts": len(prompts), "rounds": []}
    gold_now: dict[str, float] | None = None
    timer = common.Timer()
    # ---- rounds ----
    for r in range(1, rs.rounds + 1):
        rdir = out_dir / f"round_{r}"
        done = rdir / "round.json"
        dist.barrier()  # every rank looks at the files before rank 0 writes this round's
        if cfg.log.resume and done.is_file():
            record = json.loads(done.read_text())
            summary["rounds"].append(record)
            policy_path, gold_now = str(rdir / "model"), record.get("gold_after")
            logger.print(f"[rejection-sampling] round {r} already done ({done}); skipped")
            continue
        # 1-4. sample, score, select (ranks: their share of the chunks, gathered), write (rank 0;
        #      reused if an interrupted run wrote them already)
        selection = rdir / "selection.json"
        policy = load_policy(policy_path)
        if gold_now is None:
            gold_now = gold(policy)
        if cfg.log.resume and selection.is_file() and (rdir / "data.jsonl").is_file():
            metrics = json.loads(selection.read_text())
        else:
            chunk = round_prompts(prompts, r - 1, rs.max_prompts)
            with timer("generate"), plain():
                sft_rows, pair_rows, metrics = sample_and_select(
                    policy, tokenizer, chunk, reward_fn, cfg.sampling, rs, cfg.optim.seed + r,
                    dist=multi,
                )  # fmt: skip
            if not sft_rows:
                raise ValueError(
                    f"round {r}: no response was kept (none ended with EOS or passed "
                    "--min-score); raise --max-new-tokens or lower --min-score"
                )
            metrics.update(timer.pop())
            if dist.is_main:
                write_jsonl(rdir / "data.jsonl", sft_rows)
                if rs.keep_worst:
                    write_jsonl(rdir / "pairs.jsonl", pair_rows)
                write_text_atomic(selection, json.dumps(metrics, indent=2))
            dist.barrier()  # no rank reads data.jsonl before rank 0 wrote it
        del policy
        logger.log(metrics, r)
        logger.print(f"[rejection-sampling] round {r} samples: {format_metrics(metrics)}")
        # 5. fine-tune on the kept responses with the SFT trainer (on every rank: distributed)
        sft_cfg = sft_config_for_round(cfg, policy_path, rdir / "data.jsonl", rdir / "model")
        sft_summary = sft.run(sft_cfg)
        policy_path = str(rdir / "model")
        gold_before, gold_now = gold_now, gold(policy_path)
        record = {
            "round": r,
            **metrics,
            "sft_steps": sft_summary.get("steps"),
            "sft_seconds": sft_summary.get("train_seconds"),
            "gold_before": gold_before,
            "gold_after": gold_now,
        }
        g_key = "eval/gold_greedy"
        if g_key in gold_now and dist.is_main:
            logger.log({"gold/before": gold_before[g_key], "gold/after": gold_now[g_key]}, r)
            logger.print(
                f"[rejection-sampling] round {r}: greedy gold {gold_before[g_key]:.4f} -> "
                f"{gold_now[g_key]:.4f}"
            )
        if dist.is_main:
            write_text_atomic(done, json.dumps(record, indent=2))
        summary["rounds"].append(record)

    # ---- save the final policy beside the rounds (rank 0) ----
    summary["world_size"] = dist.world_size
    if dist.is_main:
        with plain():
            final = common.load_frozen_lm(policy_path, tokenizer, cfg.model)  # full precision
        save_hf_model(final, tokenizer, out_dir, extra_json={"summary.json": summary})
    dist.barrier()
    logger.print(f"[rejection-sampling] saved the final policy to {out_dir}")
    logger.close()
    return summary
