"""Tests for the reward-model trainer: metrics by hand, loss selection, accumulation, the length
policy, LoRA, resume, and a short run that learns (the shared ``tiny_rm`` fixture)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.models.loading import load_causal_lm, load_tokenizer
from simple_rlhf.models.reward import STATS_FILE, RewardScorer, load_reward_model, read_stats
from simple_rlhf.trainers.reward import (
    OBJECTIVES,
    RewardArgs,
    RewardConfig,
    backward_step,
    likelihood_objective,
    run,
)
from simple_rlhf.trainers.reward_eval import (
    gold_metrics,
    pair_batch,
    pair_eval_metrics,
    rank,
    score_examples,
    spearman,
)


def test_spearman_hand_values():
    """x = (1,2,3,4), y = (1,3,2,4): d = (0,1,1,0), rho = 1 - 6·2 / (4·15) = 0.8.
    Ties average their ranks: x = (1,2,2,3) -> (1, 2.5, 2.5, 4); with y = (1,2,3,4) the centred
    ranks are (-1.5,0,0,1.5) and (-1.5,-.5,.5,1.5): rho = 4.5 / sqrt(4.5·5) = 0.948683.
    A constant side has no rank correlation (NaN)."""
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8, rel=1e-6)
    assert rank([1, 2, 2, 3]) == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.948683, rel=1e-5)
    assert spearman([10, 20, 30], [3, 2, 1]) == pytest.approx(-1.0, rel=1e-6)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_pair_eval_metrics_hand_values():
    """chosen (2, 0, 1), rejected (1, 0, 3): accuracy 1/3 (the tie counts as wrong), means 1 and
    4/3, margin (1 + 0 - 2)/3 = -1/3, loss = (softplus(-1) + ln 2 + softplus(2))/3
    = (0.313262 + 0.693147 + 2.126928)/3 = 1.044446."""
    m = pair_eval_metrics(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 3.0]))
    assert m["eval/accuracy"] == pytest.approx(1 / 3, rel=1e-6)
    assert m["eval/chosen_mean"] == pytest.approx(1.0, rel=1e-6)
    assert m["eval/rejected_mean"] == pytest.approx(4 / 3, rel=1e-6)
    assert m["eval/margin_mean"] == pytest.approx(-1 / 3, rel=1e-6)
    assert m["eval/loss"] == pytest.approx(1.044446, rel=1e-5)


def test_gold_metrics_hand_values():
    """Scores c = (3, 1, 0), r = (1, 2, 0); gold (1, .5), (.5, 1), (.5, .5).
    Gold accuracy over the 2 pairs with unequal gold: pair 1 agrees (3>1, 1>.5), pair 2 agrees
    (1<2, .5<1) -> 1.0. Spearman over (3,1,0,1,2,0) vs (1,.5,.5,.5,1,.5): ranks
    (6, 3.5, 1.5, 3.5, 5, 1.5) vs (5.5, 2.5, 2.5, 2.5, 5.5, 2.5); centred (2.5,0,-2,0,1.5,-2) and
    (2,-1,-1,-1,2,-1): cov = 5+0+2+0+3+2 = 12, var 16.5 and 12 -> 12/sqrt(198) = 0.852803."""
    m = gold_metrics(
        torch.tensor([3.0, 1.0, 0.0]),
        torch.tensor([1.0, 2.0, 0.0]),
        [(1.0, 0.5), (0.5, 1.0), (0.5, 0.5)],
    )
    assert m["eval/gold_accuracy"] == pytest.approx(1.0)
    assert m["eval/spearman_gold"] == pytest.approx(0.852803, rel=1e-5)


def test_config_validation_of_the_kind():
    with pytest.raises(ConfigError, match="kind"):
        RewardArgs(kind="generative")
    with pytest.raises(ConfigError, match="--kind value"):
        RewardArgs(kind="likelihood", loss_type="dschat")
    with pytest.raises(ConfigError, match="nll_coef"):
        RewardArgs(nll_coef=-1.0)


def test_config_validation():
    with pytest.raises(ConfigError, match="loss_type"):
        RewardArgs(kind="value", loss_type="hinge")
    with pytest.raises(ConfigError, match="'pairwise'/'mixed' only"):
        RewardArgs(kind="value", loss_type="dschat", center_coef=0.01)
    with pytest.raises(ConfigError, match="token_loss_coef"):
        RewardArgs(kind="value", loss_type="mixed", token_loss_coef=-1.0)
    cfg = load_config(RewardConfig, overrides={"zero_stage": 3, "offload": "all"})
    assert (cfg.dist.zero_stage, cfg.dist.offload) == (3, "all")
    with pytest.raises(ConfigError, match="stats_reference"):
        RewardArgs(stats_reference="everything")


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(str(tiny_base))


def _examples(tok, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    eos = tok.eos_token_id

    def ids(k: int) -> list[int]:
        return torch.randint(10, 600, (k,), generator=g).tolist()

    return [
        {
            "prompt_ids": ids(4 + i % 3),
            "chosen_ids": ids(2 + i % 4) + [eos],
            "rejected_ids": ids(5 - i % 3) + [eos],
        }
        for i in range(n)
    ]


def test_identical_pair_gives_ln2_and_counts_as_a_tie(tiny_base, tok):
    """chosen == rejected: both scores are equal, so -log σ(0) = ln 2 = 0.693147 for the pairwise
    and dschat losses (dschat uses the last token only for identical sequences), (1 + λ) ln 2 =
    1.386294 for mixed (λ = 1), and held-out accuracy 0."""
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_base), tok).eval()
    ex = _examples(tok, 2)
    same = [{**e, "rejected_ids": e["chosen_ids"]} for e in ex]
    b = pair_batch(same, tok.pad_token_id)
    with torch.no_grad():
        from simple_rlhf.models.forward import token_values

        values = token_values(model, b["input_ids"], b["attention_mask"])
        for name in OBJECTIVES:
            loss, metrics = OBJECTIVES[name](values, b, RewardArgs(kind="value", loss_type=name))
            want = 2 * math.log(2.0) if name == "mixed" else math.log(2.0)
            assert loss.item() == pytest.approx(want, rel=1e-6)
            assert metrics["accuracy"].item() == 0.0
    c, r = score_examples(model, same, 4, tok.pad_token_id)
    assert torch.equal(c, r)
    assert pair_eval_metrics(c, r)["eval/accuracy"] == 0.0


def test_head_values_through_the_wrapper_equal_token_values(tiny_base, tok):
    """``head_values`` calls the model itself (a DDP wrapper's forward runs) and captures the head;
    on a plain model and on a peft (LoRA + trainable head) model it gives the same ``[B, T]``
    values as ``token_values`` (which calls the backbone directly), right or left padded
    (atol 1e-6: same arithmetic, only the call path differs)."""
    from simple_rlhf.config import LoraArgs
    from simple_rlhf.models.forward import token_values
    from simple_rlhf.models.lora import apply_lora
    from simple_rlhf.models.reward import head_values

    torch.manual_seed(0)
    plain = load_reward_model(str(tiny_base), tok).eval()
    lora = apply_lora(
        load_reward_model(str(tiny_base), tok), LoraArgs(lora_dim=4), task_type="SEQ_CLS",
        extra_trainable=["score"],
    ).eval()  # fmt: skip
    b = pair_batch(_examples(tok, 3), tok.pad_token_id)
    ids, mask = b["input_ids"], b["attention_mask"]
    left_ids = torch.stack(
        [torch.roll(r, int((m == 0).sum())) for r, m in zip(ids, mask, strict=True)]
    )
    left_mask = torch.stack([torch.roll(m, int((m == 0).sum())) for m in mask])
    with torch.no_grad():
        for model in (plain, lora):
            for i, m in ((ids, mask), (left_ids, left_mask)):
                want = token_values(model, i, m)
                got = head_values(model, i, m)
                assert got.shape == i.shape
                torch.testing.assert_close(got * m, want * m, rtol=0, atol=1e-6)


def test_new_head_is_seeded_and_a_trained_head_is_kept(tiny_base, tok, tmp_path):
    """``head_seed``: the new head is N(0, 0.02²) from its own generator, whatever the global RNG
    did before; a saved RM keeps its trained head (nothing missing, nothing re-drawn)."""
    from simple_rlhf.models.forward import score_head

    heads = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = load_reward_model(str(tiny_base), tok, head_seed=7)
        heads.append(score_head(model).weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)
    want = torch.randn(tuple(heads[0].shape), generator=torch.Generator().manual_seed(7)) * 0.02
    torch.testing.assert_close(heads[0], want, rtol=0, atol=0)
    with torch.no_grad():
        score_head(model).weight.fill_(0.5)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    again = load_reward_model(str(tmp_path / "rm"), tok, head_seed=7)
    assert torch.all(score_head(again).weight == 0.5)


def test_mixed_objective_is_pairwise_plus_weighted_dschat(tiny_base, tok):
    """mixed = pairwise + λ·dschat on the same values (λ = 0.5 here), metrics the pairwise ones."""
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_base), tok).eval()
    b = pair_batch(_examples(tok, 4, seed=1), tok.pad_token_id)
    with torch.no_grad():
        from simple_rlhf.models.forward import token_values

        v = token_values(model, b["input_ids"], b["attention_mask"])
    pw, m = OBJECTIVES["pairwise"](v, b, RewardArgs())
    ds, _ = OBJECTIVES["dschat"](v, b, RewardArgs(kind="value", loss_type="dschat"))
    mixed, mm = OBJECTIVES["mixed"](
        v, b, RewardArgs(kind="value", loss_type="mixed", token_loss_coef=0.5)
    )
    assert mixed.item() == pytest.approx(pw.item() + 0.5 * ds.item(), rel=1e-6)
    assert mm["accuracy"].item() == m["accuracy"].item()


@pytest.mark.parametrize("loss_type", ["pairwise", "dschat", "mixed", "likelihood"])
def test_accumulation_matches_one_big_batch(tiny_base, tok, loss_type):
    """Gradients of 4 pairs in one micro-batch equal those of 2 x 2 accumulated (weights 1/2)."""
    if loss_type == "likelihood":
        args = RewardArgs(kind="likelihood", center_coef=0.01)
    else:
        center = 0.01 if loss_type != "dschat" else 0.0
        args = RewardArgs(kind="value", loss_type=loss_type, center_coef=center)
    ex = _examples(tok, 4, seed=3)
    grads = []
    for chunks in ([ex], [ex[:2], ex[2:]]):
        torch.manual_seed(0)
        if loss_type == "likelihood":
            model = load_causal_lm(str(tiny_base), tok)
        else:
            model = load_reward_model(str(tiny_base), tok)
        loss, _, _ = backward_step(model, chunks, tok.pad_token_id, args)
        grads.append((loss, torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_likelihood_objective_by_hand(tiny_base, tok):
    """The likelihood RM's loss on 3 pairs equals CPO at beta 1 worked out row by row: each
    response's summed log-probability from a separate unpadded forward, the Bradley-Terry term
    mean(-log sigmoid(s_c - s_r)) plus nll_coef x the mean of the chosen answers' per-token NLL."""
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_base), tok).eval()
    ex = _examples(tok, 3, seed=5)

    def logps(prompt: list[int], resp: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + resp])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        return torch.stack([lp[len(prompt) - 1 + i, t] for i, t in enumerate(resp)])

    bt, nll = [], []
    for e in ex:
        c, r = logps(e["prompt_ids"], e["chosen_ids"]), logps(e["prompt_ids"], e["rejected_ids"])
        bt.append(-torch.nn.functional.logsigmoid(c.sum() - r.sum()))
        nll.append(-c.mean())
    want_bt, want_nll = torch.stack(bt).mean().item(), torch.stack(nll).mean().item()
    b = pair_batch(ex, tok.pad_token_id)
    with torch.no_grad():
        for coef in (0.0, 0.5):
            loss, metrics = likelihood_objective(model, b, RewardArgs(nll_coef=coef))
            assert loss.item() == pytest.approx(want_bt + coef * want_nll, rel=1e-5)
            assert metrics["nll"].item() == pytest.approx(want_nll, rel=1e-5)


def test_likelihood_rm_saves_a_causal_lm_that_scores_by_summed_logprob(tmp_path, tiny_base, tok):
    """``kind likelihood`` (the default): 2 steps, saved as a plain causal LM whose config.json
    names ``reward_kind``; ``RewardScorer.load`` scores a response by its summed log-probability
    (checked against ``AutoModelForCausalLM`` by hand), normalised by reward_stats.json; a PPO
    critic (scalar head) can start from the folder."""
    from transformers import AutoModelForCausalLM

    from simple_rlhf.data.tokenize import encode_prompt, encode_response

    summary = run(_quick(tmp_path, "lik", max_steps=2))
    assert summary["kind"] == "likelihood" and summary["steps"] == 2
    folder = tmp_path / "lik"
    assert json.loads((folder / "config.json").read_text())["reward_kind"] == "likelihood"
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    scorer = RewardScorer.load(str(folder))
    prompt, response = "Q3: name a colour.", "red."
    head, body = (
        encode_prompt(scorer.tokenizer, prompt),
        encode_response(scorer.tokenizer, prompt, response),
    )
    with torch.no_grad():
        lp = torch.log_softmax(lm(torch.tensor([head + body])).logits[0].double(), -1)
    want = sum(lp[len(head) - 1 + i, t].item() for i, t in enumerate(body))
    stats = read_stats(folder)
    got = scorer.score([prompt], [response])[0]
    assert got == pytest.approx((want - stats["mean"]) / stats["std"], rel=1e-4)
    raw = RewardScorer.load(str(folder), normalize=False).score([prompt], [response])[0]
    assert raw == pytest.approx(want, rel=1e-5)
    critic = load_reward_model(str(folder), tok)
    assert critic.config.num_labels == 1


def _pairs_file(tmp_path, n_short: int = 12) -> str:
    """Raw-string pairs; the last one is far longer than 64 tokens."""
    rows = [
        {"prompt": f"Q{i}: name a colour.", "chosen": "red.", "rejected": "no idea, sorry."}
        for i in range(n_short)
    ]
    rows.append({"prompt": "Q: long one.", "chosen": "blue. " * 80, "rejected": "green."})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _quick(tmp_path, out: str, **overrides):
    values = {
        "data_path": [_pairs_file(tmp_path)],
        "data_split": "0,1,0",
        "eval_fraction": 0.0,
        "max_seq_len": 64,
        "max_prompt_len": 32,
        "data_cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / out),
        "report_to": ["jsonl"],
        "progress_bar": False,
        "per_device_train_batch_size": 4,
    }
    values.update(overrides)
    return load_config(RewardConfig, overrides=values)


def test_too_long_pair_dropped_and_counted_dschat_checkpointing(tmp_path):
    """13 pairs, one longer than max_seq_len 64: dropped and counted (12 kept); with no held-out
    split the stats come from the train chosen responses; dschat loss + gradient checkpointing
    train for 3 steps with finite losses logged to metrics.jsonl."""
    cfg = _quick(
        tmp_path,
        "rm",
        max_steps=3,
        loss_type="dschat",
        kind="value",
        gradient_checkpointing=True,
        logging_steps=1,
    )
    summary = run(cfg)
    assert summary["train_dropped"] == 1 and summary["train_examples"] == 12
    assert summary["eval_examples"] == 0 and summary["steps"] == 3
    stats = read_stats(tmp_path / "rm")
    assert stats["reference"] == "train_chosen" and stats["n"] == 12 and stats["std"] > 0
    rows = [json.loads(ln) for ln in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_lora_trains_head_and_adapters_only(tmp_path, tiny_base, tok):
    """LoRA rank 4, 2 steps: the merged save loads as a sequence classifier; the head (score)
    changed, the (frozen, not adapted) embeddings did not, adapted linear layers did."""
    from transformers import AutoModelForSequenceClassification

    cfg = _quick(tmp_path, "lora", max_steps=2, lora_dim=4, learning_rate=1e-2, kind="value")
    run(cfg)
    torch.manual_seed(cfg.optim.seed)
    from simple_rlhf.infra.seed import set_seed

    set_seed(cfg.optim.seed)
    init = load_reward_model(str(tiny_base), tok).state_dict()
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lora").state_dict()
    assert set(saved) == set(init)
    assert not torch.equal(saved["score.weight"], init["score.weight"])
    assert torch.equal(saved["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q], init[q])


def test_qlora_rm_trains_and_saves_a_plain_classifier(tmp_path):
    """QLoRA: the backbone's linear layers load as 4-bit NF4 (bitsandbytes), the head stays
    float32 and trains with the LoRA adapters; 2 steps; the merged save (base dequantised +
    adapters) loads as a plain float32 sequence classifier whose scores are finite."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForSequenceClassification

    with pytest.raises(ConfigError, match="lora-dim"):
        run(_quick(tmp_path, "q0", max_steps=1, load_in_4bit=True, kind="value"))
    summary = run(_quick(tmp_path, "q", max_steps=2, lora_dim=4, load_in_4bit=True, kind="value"))
    assert summary["steps"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    assert model.score.weight.dtype == torch.float32
    assert not any("lora" in n for n, _ in model.named_parameters())
    scores = RewardScorer.load(str(tmp_path / "q")).score(["Q: name a colour."], ["red."])
    assert math.isfinite(scores[0])


@pytest.mark.slow
def test_resume_continues_to_the_same_weights(tmp_path):
    """Constant LR: 4 steps straight == 2 steps (checkpoint) + resume to 4, weight for weight."""
    from safetensors.torch import load_file

    common = {"lr_scheduler_type": "constant", "warmup_ratio": 0.0, "save_steps": 2}
    run(_quick(tmp_path, "a", max_steps=4, **common))
    first = run(_quick(tmp_path, "b", max_steps=2, **common))
    summary = run(_quick(tmp_path, "b", max_steps=4, **common))
    assert summary["steps"] == 4 and summary["before"] == first["before"]  # kept over the resume
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ---- the shared tiny RM (trained once per session from tiny_sft) ----------------------------------


@pytest.mark.learning
def test_short_run_learns(tiny_rm, learning):
    """300 steps from tiny_sft, 128 held-out tiny-task pairs. Over 5 seeds
    (benchmarks/learning_tests_results.md): accuracy gain 0.16-0.31 to 0.74-0.77, gold-order
    accuracy 0.84-0.88, Spearman(score, gold) 0.33-0.59. Asserted about half-way between no
    learning and the worst seed: gain >= 0.08, accuracy >= 0.65, gold order >= 0.75, Spearman
    >= 0.2; chosen scores above rejected."""
    summary = json.loads((tiny_rm / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    gain = after["eval/accuracy"] - before["eval/accuracy"]
    learning.at_least("reward", "accuracy gain", gain, 0.08)
    learning.at_least("reward", "eval/accuracy", after["eval/accuracy"], 0.65)
    learning.at_least("reward", "eval/gold_accuracy", after["eval/gold_accuracy"], 0.75)
    learning.at_least("reward", "eval/spearman_gold", after["eval/spearman_gold"], 0.2)
    assert after["eval/margin_mean"] > 0 and after["eval/chosen_mean"] > after["eval/rejected_mean"]


def test_saved_rm_loads_and_its_stats_normalise_the_reference_set(tiny_rm):
    """AutoModelForSequenceClassification loads the folder (num_labels 1, pad id = tokenizer's);
    RewardScorer applies reward_stats.json, so the normalised scores of the reference responses
    (held-out chosen) have mean 0 and std 1."""
    from transformers import AutoModelForSequenceClassification

    from simple_rlhf.data.pipeline import load_encoded
    from simple_rlhf.trainers.reward import RewardConfig as Cfg

    hf = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    scorer = RewardScorer.load(str(tiny_rm))
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == scorer.tokenizer.pad_token_id
    stats = read_stats(tiny_rm)
    assert stats["reference"] == "eval_chosen" and (tiny_rm / STATS_FILE).is_file()
    import yaml

    run_cfg = yaml.safe_load((tiny_rm / "run_config.yaml").read_text())
    cfg = load_config(Cfg, yaml_data={"data": run_cfg["data"]})
    evals, _ = load_encoded(scorer.tokenizer, cfg.data, "pair", step=2, split="eval")
    assert len(evals) == stats["n"]
    from simple_rlhf.data.tokenize import pad

    seqs = [e["prompt_ids"] + e["chosen_ids"] for e in evals]
    ids, mask = pad(seqs, scorer.tokenizer.pad_token_id), pad([[1] * len(s) for s in seqs], 0)
    z = scorer.score_ids(ids, mask).double()
    assert z.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert z.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)


# ---- the default (likelihood) RM, a short run from tiny_sft -------------------------------------


@pytest.fixture(scope="module")
def tiny_likelihood_rm(tiny_sft, tmp_path_factory, learning):
    out = tmp_path_factory.mktemp("likelihood_rm") / "rm"
    overrides = {
        "model_name_or_path": str(tiny_sft),
        "output_dir": str(out),
        "max_steps": 120,
        "seed": learning.seed,
        "report_to": ["none"],
        "progress_bar": False,
        "max_eval_samples": 128,
        "gold_eval_prompts": 32,
    }
    run(load_config(RewardConfig, overrides=overrides))
    return out


@pytest.mark.learning
def test_likelihood_rm_short_run_learns(tiny_likelihood_rm, learning):
    """120 steps of the default likelihood RM from tiny_sft, 128 held-out tiny-task pairs, then
    the RM's accuracy on pairs of the SFT policy's own sampled answers (32 held-out prompts x 4,
    ordered by tiny_gold). Seeds 1234 / 1: accuracy gain +0.164 / +0.156 (from 0.6-0.65: the SFT
    model's own likelihood already orders pairs), gold-order accuracy 0.898 / 0.898, policy-pair
    accuracy 0.955 / 0.846. Asserted about half-way between no learning (gain 0, chance 0.5) and
    the worse seed: gain >= 0.08, gold order >= 0.7, policy pairs >= 0.67."""
    summary = json.loads((tiny_likelihood_rm / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    assert summary["kind"] == "likelihood"
    gain = after["eval/accuracy"] - before["eval/accuracy"]
    learning.at_least("reward-likelihood", "accuracy gain", gain, 0.08)
    learning.at_least("reward-likelihood", "eval/gold_accuracy", after["eval/gold_accuracy"], 0.7)
    learning.at_least(
        "reward-likelihood", "eval/policy_pairs_accuracy", after["eval/policy_pairs_accuracy"], 0.67
    )
