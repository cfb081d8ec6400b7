"""A task the project never saw, brought as plain files plus a reward function (issue 16): every
command reads it through the public paths, evaluates on held-out prompts with the user's reward,
and each defect the issue met has a test here. Short runs: these check wiring, not learning
(benchmarks/generalization.py measures learning)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from simple_rlhf.cli.main import main
from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.data.prompt_format import get_format
from simple_rlhf.models.tiny import DATA_VOCAB_SIZE, ensure_tiny
from simple_rlhf.trainers import online as ol

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"sft": 300, "pairs": 200, "kto": 200, "heldout": 16, "prompts": 120}
QUIET = ["--report-to", "none", "--no-progress-bar"]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "_make_tasks", ROOT / "benchmarks/tasks/make_tasks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_make_tasks"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """The 'add' task, English, plain strings: sft/pairs/kto/prompts/heldout JSONL + reward.py."""
    out = tmp_path_factory.mktemp("tasks")
    return Path(_generator().make_task("add", "en", "plain", out, seed=0, sizes=SIZES))


def reward_spec(task: Path) -> str:
    return f"{task / 'reward.py'}:reward"


@pytest.fixture(scope="module")
def user_sft(task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    rc = main(
        ["sft", "--data-path", str(task / "sft.jsonl"), "--output-dir", str(out)]
        + ["--max-steps", "40", "--eval-prompts", str(task / "heldout.jsonl")]
        + ["--eval-reward-funcs", reward_spec(task), *QUIET]
    )
    assert rc == 0
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_sft_on_user_files_evaluates_held_out_with_the_users_reward(user_sft):
    """Defect 4: held-out answers scored by the user's reward before and after; defect 9: the tiny
    model gets a tokenizer trained on the user's text; the prompt format is saved (raw)."""
    s = summary(user_sft)
    for when in ("before", "after"):
        assert {"eval/gold_greedy", "eval/pass_rate_greedy", "eval/eos_rate_greedy"} <= set(s[when])
    assert s["after"]["eval/eos_rate_greedy"] > s["before"]["eval/eos_rate_greedy"]
    tok = AutoTokenizer.from_pretrained(user_sft)
    assert len(tok) <= DATA_VOCAB_SIZE
    colour_tok = AutoTokenizer.from_pretrained(ensure_tiny())
    text = "How much is 14 plus 32?\n"
    assert len(tok(text)["input_ids"]) < len(colour_tok(text)["input_ids"])
    # numbers are spelt digit by digit (with whole numbers as tokens the model cannot add numbers
    # it has not seen), and text round-trips exactly
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert "1" in pieces and "4" in pieces and not any("14" in p or "32" in p for p in pieces)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert get_format(tok).kind == "raw"


def test_eval_renders_prompts_as_training_did_and_takes_reward_funcs(user_sft, task, capsys):
    """Defect 2: ``eval --prompts-file`` gives plain prompts to a plain-trained model as they
    are (not in the chat template) and scores with the user's reward: the same mean as the
    trainer's own held-out evaluation of the same prompts."""
    rc = main(
        ["eval", "--models", str(user_sft), "--prompts-file", str(task / "heldout.jsonl")]
        + ["--n-prompts", "16", "--reward-funcs", reward_spec(task)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    want = summary(user_sft)["after"]["eval/gold_greedy"]
    assert f"mean reward {want:.3f}" in out and "pass rate" in out


def test_one_command_trains_on_the_whole_file_and_says_so(user_sft, task, tmp_path, capsys):
    """Defect 3: ``dpo`` on one pair file uses all its training pairs (not the 2,4,4 share) and the
    log says how many of how many."""
    rc = main(
        ["dpo", "--model-name-or-path", str(user_sft), "--data-path", str(task / "pairs.jsonl")]
        + ["--max-steps", "1", "--output-dir", str(tmp_path), "--gold-eval-prompts", "4", *QUIET]
    )
    out = capsys.readouterr().out
    assert rc == 0
    n_lines = len((task / "pairs.jsonl").read_text().splitlines())
    n_train = n_lines - round(0.05 * n_lines)  # the 5% eval hold-out
    assert f"{n_train:,} of {n_train:,} train records as pair" in out
    assert summary(tmp_path)["train_examples"] == n_train


def test_kto_on_an_unpaired_file(user_sft, task, tmp_path):
    """Defect 1: ``kto`` on a standard prompt/completion/label file with the default eval split
    runs (no held-out pairs are asked of it) and evaluates with the user's reward."""
    rc = main(
        ["kto", "--model-name-or-path", str(user_sft), "--data-path", str(task / "kto.jsonl")]
        + ["--max-steps", "2", "--output-dir", str(tmp_path), "--gold-eval-prompts", "4"]
        + ["--eval-reward-funcs", reward_spec(task), *QUIET]
    )
    assert rc == 0
    after = summary(tmp_path)["after"]
    assert "eval/loss" in after and "eval/gold_greedy" in after
    assert "eval/rewards/accuracy" not in after


def test_grpo_with_the_users_reward_evaluates_held_out(user_sft, task, tmp_path, capsys):
    """Defect 4 for the online trainers: held-out prompts from the data's eval share, scored by
    the run's reward function by default, before and after."""
    rc = main(
        ["grpo", "--model-name-or-path", str(user_sft), "--data-path", str(task / "prompts.jsonl")]
        + ["--reward-funcs", reward_spec(task), "--num-rollouts", "1", "--prompts-per-rollout", "4"]
        + ["--num-generations", "4", "--per-device-train-batch-size", "16"]
        + ["--gold-eval-prompts", "4", "--output-dir", str(tmp_path), *QUIET]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "4 prompts from the eval share of" in out and "scored by reward" in out
    s = summary(tmp_path)
    assert "eval/gold_greedy" in s["before"] and "eval/pass_rate_sampled" in s["after"]


def _bad_reward(tmp_path: Path) -> str:
    path = tmp_path / "bad_reward.py"
    path.write_text("def reward(completions):\n    return [0.0 for _ in completions]\n")
    return f"{path}:reward"


def test_a_reward_with_the_wrong_signature_fails_at_once_in_one_line(task, tmp_path):
    """Defect 7: named, with its signature, before any model is loaded: no traceback, no model."""
    cmd = [sys.executable, "-m", "simple_rlhf", "grpo", "--model-name-or-path", "no/such-model"]
    cmd += ["--data-path", str(task / "prompts.jsonl"), "--reward-funcs", _bad_reward(tmp_path)]
    cmd += ["--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "must accept (prompts, completions, **kwargs)" in proc.stderr
    assert "reward(completions)" in proc.stderr


def test_a_reward_that_raises_fails_on_a_trial_call_before_models(user_sft, task, tmp_path):
    """A reward that raises is found on a trial call right after the prompts are read (before
    the policy and reference are loaded), named, with the data columns it was given."""
    path = tmp_path / "raises.py"
    path.write_text(
        "def reward(prompts, completions, **kw):\n    return [1 / 0 for _ in prompts]\n"
    )
    cmd = [sys.executable, "-m", "simple_rlhf", "grpo", "--model-name-or-path", str(user_sft)]
    cmd += ["--data-path", str(task / "prompts.jsonl"), "--reward-funcs", f"{path}:reward"]
    cmd += ["--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ZeroDivisionError" in proc.stderr and "trial call before training" in proc.stderr
    assert "data columns passed: ['answer']" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_python_callable_is_a_reward_function(user_sft, task, tmp_path):
    """Defect 7: a callable passed from Python is used as it is (not turned into a string), and
    the saved run config names it."""
    from simple_rlhf.trainers.grpo import GRPOConfig, run

    calls = []

    def exact(prompts, completions, answer=None, **_):
        calls.append(len(completions))
        return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

    cfg = load_config(
        GRPOConfig,
        overrides={
            "model_name_or_path": str(user_sft), "data_path": [str(task / "prompts.jsonl")],
            "reward_funcs": [exact], "num_rollouts": 1, "prompts_per_rollout": 4,
            "num_generations": 2, "gold_eval_prompts": 2, "output_dir": str(tmp_path),
            "per_device_train_batch_size": 8,
            "report_to": ["none"], "progress_bar": False,
        },
    )  # fmt: skip
    assert cfg.reward.reward_funcs == [exact]
    run(cfg)
    assert calls
    saved = (tmp_path / "run_config.yaml").read_text()
    assert "test_a_python_callable_is_a_reward_function.<locals>.exact" in saved
    with pytest.raises(ConfigError, match="learning_rate: expected a value, got the Python"):
        load_config(GRPOConfig, overrides={"learning_rate": exact, "reward_funcs": ["tiny_gold"]})


def test_signal_and_preflight_notes(tiny_base):
    """Defect 6: zero-signal rollouts and plain prompts for an unmarked chat model are named
    (the template mismatch, not only 'raise the temperature')."""
    import torch

    assert "same reward 0" in ol.signal_note(torch.zeros(8), 4)
    assert "prompted differently" in ol.signal_note(torch.zeros(8), 4)
    assert "all groups of 4" in ol.signal_note(torch.tensor([0.0] * 4 + [1.0] * 4), 4)
    assert ol.signal_note(torch.tensor([0.0, 1.0, 0.0, 0.0]), 4) is None
    tok = AutoTokenizer.from_pretrained(tiny_base)
    notes = ol.preflight_notes(tok, [{"prompt": "What is 1 + 1?"}, {"prompt": "x"}])
    assert len(notes) == 1 and "2 of 2 prompts are plain strings" in notes[0]
    tok.init_kwargs["prompt_format"] = {"kind": "chat"}
    assert ol.preflight_notes(tok, [{"prompt": "What is 1 + 1?"}]) == []


def test_save_best_keeps_the_best_held_out_model(user_sft, task, tmp_path, capsys):
    """``--save-best``: the saved model is the evaluation with the best held-out reward, not the
    last (a learning rate that wrecks the model), and summary.json says which; ``eval`` of the
    saved folder gives that reward again."""
    rc = main(
        ["sft", "--model-name-or-path", str(user_sft), "--data-path", str(task / "sft.jsonl")]
        + ["--max-steps", "4", "--learning-rate", "0.5", "--eval-steps", "2", "--save-best"]
        + ["--eval-prompts", str(task / "heldout.jsonl"), "--eval-reward-funcs", reward_spec(task)]
        + ["--output-dir", str(tmp_path), *QUIET]
    )
    assert rc == 0
    s = summary(tmp_path)
    best = s["best"]
    assert best["metric"] == "eval/gold_greedy"
    evaluated = [
        v["eval/gold_greedy"] for k, v in s.items() if k == "before" or k.startswith("step_")
    ]
    assert best["value"] == max(evaluated)
    assert not (tmp_path / "best").exists()
    # lr 0.5: the last model is worse than the best one, so evaluating the saved folder tells
    # which of the two was saved
    assert s["after"]["eval/gold_greedy"] < best["value"]
    capsys.readouterr()
    main(["eval", "--models", str(tmp_path), "--prompts-file", str(task / "heldout.jsonl")]
         + ["--n-prompts", "16", "--reward-funcs", reward_spec(task)])  # fmt: skip
    assert f"mean reward {best['value']:.3f}" in capsys.readouterr().out
