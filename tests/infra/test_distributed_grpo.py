"""GRPO / REINFORCE++ (critic-free, step 3) on 2 real CPU processes (gloo): DDP, ZeRO-2 and ZeRO-3
for the one policy engine (the reference follows its stage).

One ``torchrun --standalone --nproc_per_node 2`` launch runs this file as its worker (``python
test_distributed_grpo.py SPEC.json``, see :func:`main`): several short runs in one process group,
policy = the tiny SFT model, reward = the gold function, 4 prompts x K = 4 responses per rollout
(each rank samples 2 whole groups = 8 rows), 2 rollouts, 2 minibatches of 8 rows per rollout
(2 ranks x 4 rows, against 8 rows in one process). The ZeRO-3 run uses K = 3, dynamic sampling
and a reward that is constant on some groups (:func:`gold_or_constant`): 3 of 4 groups dropped
leave a minibatch of 3 rows, so rank 1 runs a blank padding row; it also stops after rollout 1
and resumes from its DeepSpeed checkpoint. An RLOO run adds the tiny RM as a second reward
source, partitioned with the reference under ZeRO-3 (``--offload-reference-model``: parameters on
CPU). Each 2-rank run is compared with a single-process run
of the same config on the same global batch.

Sampling: GRPO needs K different samples of a prompt (greedy decoding gives K equal responses,
advantage 0, no update), but ``generate`` draws one random stream per batch, so a sampled response
depends on the rows sampled with it. The test therefore samples every row alone, seeded by
(prompt, index in its group, rollout) (:class:`PerRowSampler`, patched into ``trainers/online.py``
in both the single-process and the 2-rank runs): the same responses in both, whatever the split.
Under ZeRO-3 each rank's ``generate`` calls run with ``synced_gpus``.

What must match: the group baselines are local to a rank (whole groups), but REINFORCE++'s batch
whitening, the KL, the token-count normalisers of the loss, dynamic sampling and every metric are
global (the rollout is gathered on every rank), so the 2-rank loss, metrics and weights equal one
process's. Tolerances (measured on this machine in brackets; a rank's batch is padded to other
widths than the global one, so logits differ by float rounding): rollout 1 -- score mean, KL,
response length, entropy, advantage mean, dropped-group fraction, policy loss, KL loss, gradient
norm (and the RM's mean score): rel 1e-5 or abs 1e-6 [the policy loss, ~ -mean(A) of O(1)
advantages, e.g. -6.8e-3: abs <= 1.1e-7, rel 1.6e-5; gradient norm (1.3-3.3) rel <= 1.3e-6;
the others rel <= 5e-6]; rollout 2 (after 2 optimiser steps): rel 1e-4 or abs 1e-6 [rel <= 2.2e-5,
the RLOO KL]; saved policy weights atol 1e-5 [<= 4.5e-6; Adam epsilon 1e-6, as in the DPO
tests, bounds how far a weight whose gradient is within rounding of 0 moves]. Time on 2 shared cores: ~45 s (the
4 single-process runs ~8 s, the torchrun launch ~35 s) after the ``tiny_sft`` / ``tiny_rm``
fixtures (~65 s, shared with other tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
K = 4
ZERO3_K = 3  # responses per prompt of the ZeRO-3 run (dynamic sampling, gold_or_constant)

COMMON = {
    "report_to": ["jsonl"],
    "num_generations": K,
    "progress_bar": False,
    "logging_steps": 1,
    "reward_funcs": ["tiny_gold"],
    "prompts_per_rollout": 4,
    "num_rollouts": 2,
    "temperature": 1.0,
    "max_new_tokens": 16,
    "forward_batch_size": 8,
    "gold_eval_prompts": 0,
    "sample_every": 0,
    "learning_rate": 2e-4,
    "adam_epsilon": 1e-6,  # bounds how far rounding noise in a ~0 gradient moves a weight
}
RUNS = {  # name -> (config class, settings of both runs, per-device rows: 1 process, per rank)
    "grpo_ddp": ("GRPOConfig", {}, 8, 4),
    # REINFORCE++: advantages whitened over the global batch; ZeRO-2
    "rpp_zero2": ("ReinforceConfig", {"zero_stage": 2}, 8, 4),
    # ZeRO-3 policy and reference (partitioned), generation with synced_gpus; K = 3 and dynamic
    # sampling with a reward constant on some groups: a last minibatch of 3 rows gives rank 1 a
    # blank padding row; checkpoints, and the 2-rank run resumes at rollout 1
    "grpo_zero3": (
        "GRPOConfig",
        {
            "zero_stage": 3,
            "save_steps": 1,
            "num_generations": ZERO3_K,
            "dynamic_sampling": True,
            "reward_funcs": [f"{__file__}:gold_or_constant"],
        },
        6,
        3,
    ),
}
RUNS["rloo_zero3_rm"] = (  # RLOO with the tiny RM as a second reward source: the RM and the
    # reference partitioned with the policy's ZeRO-3, their parameters on CPU; every rank
    # evaluates the same 4 held-out prompts before and after training
    "RLOOConfig",
    {
        "zero_stage": 3,
        "offload_reference_model": True,
        "reward_model": "TINY_RM",
        "gold_eval_prompts": 4,
    },
    8,
    4,
)
LAUNCH = [  # the ZeRO-3 run stops after rollout 1 (checkpoint), then resumes to rollout 2
    ["grpo_ddp", RUNS["grpo_ddp"][1]],
    ["rpp_zero2", RUNS["rpp_zero2"][1]],
    ["grpo_zero3", {**RUNS["grpo_zero3"][1], "num_rollouts": 1}],
    ["grpo_zero3", RUNS["grpo_zero3"][1]],
    ["rloo_zero3_rm", RUNS["rloo_zero3_rm"][1]],
]
DIST_ONLY = ("zero_stage", "save_steps", "offload_reference_model")
SHARED = (
    "reward/score_mean",
    "objective/kl",
    "rollout/response_len",
    "policy/entropy",
    "advantages/mean",
    "rollout/zero_adv_group_frac",
)
LOSSES = ("policy/loss", "policy/grad_norm")


def _module(name: str):
    """A sibling test helper module loaded by path (the suite imports with importlib mode)."""
    spec = importlib.util.spec_from_file_location(f"_grpo_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PerRowSampler:
    """``generate`` replacement: each row sampled alone with seed ``crc32(prompt) + 7919 * j +
    1_000_033 * call`` (``j`` = index in its group of K, ``call`` = rollout), so a response
    depends on its prompt, its index and the rollout only. ``seen`` records each call's rows and
    response width."""

    def __init__(self, k: int, calls: int = 0) -> None:
        from simple_rlhf.rollout.generate import generate

        self.generate, self.k, self.calls, self.seen = generate, k, calls, []

    def __call__(self, model, tokenizer, prompts, sampling, *, seed=None, streamer=None):
        from simple_rlhf.rollout.generate import concat_rollouts

        parts = []
        for i, p in enumerate(prompts):
            s = (
                zlib.crc32(bytes(str(list(p)), "ascii"))
                + 7919 * (i % self.k)
                + 1_000_033 * self.calls
            )
            parts.append(self.generate(model, tokenizer, [p], sampling, seed=s))
        self.calls += 1
        out = concat_rollouts(parts, tokenizer.pad_token_id)
        self.seen.append([len(out), out.response_ids.shape[1]])
        return out


def gold_or_constant(prompts: list, responses: list[str], **_) -> list[float]:
    """0.5 for the prompts whose CRC-32 mod 12 is 2 or 10: their groups are dropped by dynamic
    sampling (chosen so that 3 of the 4 groups of rollout 1 are dropped, an odd number, and some
    of rollout 2 are kept). Other prompts: the gold reward plus 0.01 x the row's index in its
    group (the lists hold whole groups of ZERO3_K contiguous rows), so those groups are never
    dropped, even when the policy samples the same answer ZERO3_K times (a well-trained SFT model
    often does): which groups are dropped depends on the prompts alone, not on the sampling."""
    from simple_rlhf.data.tiny_task import gold_reward

    if all(r == "" for r in responses):  # the trial call before training (2 prompts)
        return [0.0] * len(responses)
    assert len(prompts) % ZERO3_K == 0, len(prompts)
    return [
        0.5
        if zlib.crc32(str(p).encode()) % 12 in (2, 10)
        else gold_reward(p, r) + 0.01 * (i % ZERO3_K)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]


def _run(name: str, overrides: dict, out: Path, done: int = 0) -> PerRowSampler:
    """One run of RUNS[name] with the per-row sampler patched in (``done`` rollouts already run:
    resuming)."""
    from simple_rlhf.config import load_config
    from simple_rlhf.trainers import grpo, online

    sampler, original = PerRowSampler(overrides["num_generations"], done), online.generate
    online.generate = sampler
    try:
        cls = getattr(grpo, RUNS[name][0])
        grpo.run(load_config(cls, overrides={**overrides, "output_dir": str(out)}))
    finally:
        online.generate = original
    return sampler


# ---- worker (one per rank) ----------------------------------------------------------------------


def main(spec_path: str) -> None:
    """Every rank: run each training of SPEC in this process group, recording the world size and
    each rollout's rows / response width on this rank."""
    spec = json.loads(Path(spec_path).read_text())
    for name, overrides in spec["runs"]:
        out = Path(spec["out"]) / name
        rank = int(os.environ["RANK"])  # the process group starts with the first run
        path = out / f"rank{rank}.json"  # a resumed run adds its rollouts
        before = json.loads(path.read_text())["seen"] if path.exists() else []
        per_rank = {**spec["common"], "per_device_train_batch_size": RUNS[name][3]}
        sampler = _run(name, {**per_rank, **overrides}, out, done=len(before))
        facts = {
            "rank": rank,
            "world_size": torch.distributed.get_world_size(),
            "seen": before + sampler.seen,
        }
        path.write_text(json.dumps(facts))


# ---- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory, tiny_sft, tiny_rm) -> Path:
    """The single-process references (minibatch 8 in one process) and the 2-rank runs (4 each)."""
    import deepspeed  # noqa: F401 - CI must have it: fail here rather than skip

    out = tmp_path_factory.mktemp("grpo_dist")
    common = {**COMMON, "model_name_or_path": str(tiny_sft)}
    launch = json.loads(json.dumps(LAUNCH).replace("TINY_RM", str(tiny_rm)))
    for name, (_, over, per_device, _) in RUNS.items():
        over = {k: str(tiny_rm) if v == "TINY_RM" else v for k, v in over.items()}
        single = {k: v for k, v in over.items() if k not in DIST_ONLY}
        single["per_device_train_batch_size"] = per_device
        _run(name, {**common, **single}, out / f"{name}_ref")
    assert not torch.distributed.is_initialized()
    spec = out / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "common": common, "runs": launch}))
    _module("dist_worker").torchrun(__file__, spec, out / "torchrun.log")
    return out


def _rollouts(folder: Path) -> list[dict]:
    from simple_rlhf.infra.logging import read_jsonl

    return [r for r in read_jsonl(folder / "metrics.jsonl") if "policy/loss" in r]


def _max_diff(got: dict, want: dict, keys) -> tuple[float, float]:
    """The largest absolute and relative differences over ``keys``."""
    d = [abs(got[k] - want[k]) for k in keys]
    return max(d), max(x / max(abs(want[k]), 1e-12) for x, k in zip(d, keys, strict=True))


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_grpo_two_ranks_match_one_process(name, grpo_runs):
    """2 ranks x 2 prompt groups = 1 process x 4 groups: the first rollout's global statistics and
    the policy / KL losses agree (rel 1e-5, abs 1e-6: the loss is ~ -mean(A), a near-0 mean of
    O(1) advantages), the second (after 2 optimiser steps) within rel 1e-4; the saved policy (rank
    0, gathered under ZeRO-3) equals the single-process one (atol 1e-5); world size 2 asserted,
    each rank sampled 2 whole groups (2 K rows) per rollout. ZeRO-3: dynamic sampling dropped an
    odd number of groups of 3 at least once (a minibatch of 3 rows: rank 1 ran a blank row), the
    run resumed at rollout 1 from its DeepSpeed checkpoint."""
    from safetensors.torch import load_file

    folder, ref = grpo_runs / name, grpo_runs / f"{name}_ref"
    k = {**COMMON, **RUNS[name][1]}["num_generations"]
    facts = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [f["rank"] for f in facts] == [0, 1] and all(f["world_size"] == 2 for f in facts)
    assert all([s[0] for s in f["seen"]] == [2 * k, 2 * k] for f in facts), facts
    got, want = _rollouts(folder), _rollouts(ref)
    assert len(got) == len(want) == 2
    keys = SHARED + LOSSES + (("policy/kl_loss",) if name.startswith("grpo") else ())
    keys += ("reward/rm_mean",) if name.endswith("_rm") else ()
    print(name, "rollout 1 max abs / rel", _max_diff(got[0], want[0], keys))
    print(name, "rollout 2 max abs / rel", _max_diff(got[1], want[1], keys))
    for k in keys:
        assert got[0][k] == pytest.approx(want[0][k], rel=1e-5, abs=1e-6), k
    for k in keys:
        assert got[1][k] == pytest.approx(want[1][k], rel=1e-4, abs=1e-6), k
    if name != "grpo_zero3":  # the update did something
        assert want[0]["policy/grad_norm"] > 0.1
    # grpo_zero3 keeps one group of K = 3 in rollout 1: if the policy sampled the same answer 3
    # times, GRPO's zero-sum advantages give it exactly no gradient (seen with 2 of 5 SFT seeds),
    # so no movement is asserted there; its point is the padded minibatch and the resume, and
    # the other runs assert that their updates move the weights
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rollouts"] == 2
    g = load_file(str(folder / "model.safetensors"))
    w = load_file(str(ref / "model.safetensors"))
    assert g.keys() == w.keys()
    print(name, "weights max abs diff", max(float((g[k] - w[k]).abs().max()) for k in w))
    for k in w:
        torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-5, msg=k)
    if name == "rloo_zero3_rm":  # the held-out evaluation (gold and run reward, greedy, sampled)
        want_s = json.loads((ref / "summary.json").read_text())
        for when in ("before", "after"):
            assert len(summary[when]) == len(want_s[when]) == 10  # 5 per kind
            for k, v in want_s[when].items():
                assert summary[when][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (when, k)
    if name == "grpo_zero3":
        dropped = [r["rollout/groups_dropped"] for r in want]
        assert [r["rollout/groups_dropped"] for r in got] == dropped
        # fixed by the prompts (gold_or_constant): 3 groups of rollout 1 (odd), not all of 2
        assert dropped[0] == 3 and dropped[1] < 4, dropped
        assert (folder / "checkpoints" / "step-1" / "state.json").exists()
        assert (folder / "checkpoints" / "step-2" / "state.json").exists()


def _experience(vocab: int, n: int = 5):
    """``n`` rows, prompts of 2-4 tokens (left-padded), responses of 1-5 tokens (right-padded,
    rows with 5 have no EOS), random advantages / old and reference logprobs."""
    from simple_rlhf.rollout import experience as xp
    from simple_rlhf.rollout.generate import Rollout

    g = torch.Generator().manual_seed(0)
    p_len, r_len = torch.tensor([4, 2, 3, 4, 2])[:n], torch.tensor([5, 1, 3, 2, 4])[:n]
    prompt_mask = (torch.arange(4)[None] >= 4 - p_len[:, None]).long()
    response_mask = (torch.arange(5)[None] < r_len[:, None]).long()
    prompt_ids = torch.randint(10, vocab, (n, 4), generator=g) * prompt_mask
    response_ids = torch.randint(10, vocab, (n, 5), generator=g) * response_mask
    r = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, r_len < 5)
    lp = -torch.rand(n, 5, generator=g) * response_mask
    adv = torch.randn(n, 5, generator=g) * response_mask
    return xp.Experience(r, lp, lp + 0.1 * response_mask, torch.zeros(n), lp * 0, lp * 0, adv)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_rank_slices_add_up_to_the_minibatch_gradient(tiny_base, agg):
    """A minibatch of 5 rows over 2 ranks: ``shard_padded`` gives 3 rows each (rank 1: 2 real +
    1 blank copy, response mask 0). The gradients of the 2 ranks' weighted losses (weights of the
    global minibatch, micro-batches of 2) add up to the one-process gradient of the 5 rows (the
    engine averages over ranks, hence the ``x N`` scale; here summed with scale 1), within
    1e-5 of the largest gradient entry (float rounding); the loss and KL-loss metric sums too.
    KL (k3) in the loss and truncated rows masked."""
    from simple_rlhf.infra.distributed import Dist
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
    from simple_rlhf.trainers.grpo import CriticFreeArgs, loss_spec
    from simple_rlhf.trainers.online import policy_backward
    from simple_rlhf.trainers.online_dist import rank_slice

    tok = load_tokenizer(str(tiny_base))
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_base), tok, dropout=0.0)
    exp = _experience(len(tok))
    rl = CriticFreeArgs(loss_aggregation=agg, kl_coef=0.1, mask_truncated=True)
    spec = loss_spec(rl, 5.0)

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return out

    idx = [4, 0, 2, 1, 3]
    want_m = policy_backward(model, exp.index(idx), 2, spec, temperature=1.0)
    want = grads()
    got_m: dict[str, float] = {}
    got = None
    for rank in (0, 1):
        mb, norm_mb = rank_slice(exp, idx, Dist(args=None, rank=rank, world_size=2))
        assert len(mb) == 3 and len(norm_mb) == 5
        if rank == 1:
            assert int(mb.mask[2].sum()) == 0  # the blank padding row
        m = policy_backward(model, mb, 2, spec, temperature=1.0, norm_mb=norm_mb)
        got_m = {k: got_m.get(k, 0.0) + v for k, v in m.items()}
        g = grads()
        got = g if got is None else [a + b for a, b in zip(got, g, strict=True)]
    scale = max(float(w.abs().max()) for w in want)
    assert scale > 1e-3
    for a, b in zip(got, want, strict=True):  # float rounding of other paddings: 1e-5 x max
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
    for k in ("policy/loss", "policy/kl_loss"):
        assert got_m[k] == pytest.approx(want_m[k], rel=1e-5), k


def test_world_size_checks():
    """4 prompts over 3 processes: not whole groups per rank; 4 x 4 = 16 rows over a global
    minibatch of 4 x 1 x 2 = 8: fine, of 8 x 1 x 2 = 16: fine, of 6 x 1 x 2 = 12: refused."""
    from simple_rlhf.config import ConfigError
    from simple_rlhf.trainers.online_dist import check_world

    with pytest.raises(ConfigError, match="prompts_per_rollout"):
        check_world(4, 4, 4, 1, 3)
    check_world(4, 4, 4, 1, 2)
    check_world(4, 4, 8, 1, 2)
    with pytest.raises(ConfigError, match="global minibatch"):
        check_world(4, 4, 6, 1, 2)
    check_world(3, 4, 6, 1, 1)  # one process: nothing checked here


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zero_stage": 2, "offload": "param"}, "offload"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"zero_stage": 2, "offload_reference_model": True}, "offload_reference_model"),
    ],
)
def test_grpo_dist_args_validation(overrides, message):
    from simple_rlhf.config import ConfigError, load_config
    from simple_rlhf.trainers.grpo import GRPOConfig

    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, overrides={"reward_funcs": ["tiny_gold"], **overrides})


if __name__ == "__main__":
    main(sys.argv[1])
