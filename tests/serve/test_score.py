"""Tests for ``simple-rlhf score``: English and Chinese answers, comparisons, input files."""

from __future__ import annotations

import json
import math

import pytest

from simple_rlhf.cli.main import main
from simple_rlhf.config import ConfigError, load_config
from simple_rlhf.models.reward import RewardScorer
from simple_rlhf.serve.score import ScoreConfig, run

EN = "What color is each of these: apple, sky?"
EN_GOOD, EN_BAD = "apple is red. sky is blue.", "apple is green. sky is black. Hope this helps!"
ZH = "说出这些东西的颜色：苹果、天空。"
ZH_GOOD, ZH_BAD = "苹果是红色。天空是蓝色。", "苹果是绿色。天空是黑色。希望对你有帮助！"


@pytest.fixture(scope="module")
def scorer(tiny_rm):
    return RewardScorer.load(str(tiny_rm))


@pytest.mark.parametrize(("prompt", "good", "bad"), [(EN, EN_GOOD, EN_BAD), (ZH, ZH_GOOD, ZH_BAD)])
def test_compare_two_answers_en_zh(tiny_rm, scorer, capsys, prompt, good, bad):
    """The printed scores are the scorer's normalised scores of the prompt as a user message; the
    trained RM prefers the right colours without filler, P(A > B) = σ(r_A - r_B) on raw scores."""
    rc = main(
        ["score", "--reward-model", str(tiny_rm), "--prompt", prompt, "--response", good]
        + ["--response2", bad]
    )
    out = capsys.readouterr().out
    assert rc == 0
    msgs = [{"role": "user", "content": prompt}]
    s_good, s_bad = scorer.score([msgs, msgs], [good, bad])
    assert f"[{s_good:+.3f}]" in out and f"[{s_bad:+.3f}]" in out
    assert prompt in out and good in out and bad in out
    assert "A preferred" in out and s_good > s_bad
    std = scorer.stats["std"]
    p = 1.0 / (1.0 + math.exp(-(s_good - s_bad) * std))  # normalised gap x std = raw gap
    assert f"= {p:.3f}" in out


def test_input_file_single_and_pairs_raw_scores(tiny_rm, scorer, tmp_path):
    """A JSONL file with a single answer, a response/response2 record and a chosen/rejected one;
    --no-normalize gives raw scores (= normalised x std + mean); rows also go to --output-jsonl."""
    rows = [
        {"prompt": ZH, "response": ZH_GOOD},
        {"prompt": EN, "response": EN_GOOD, "response2": EN_BAD},
        {"prompt": [{"role": "user", "content": EN}], "chosen": EN_BAD, "rejected": EN_GOOD},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out_path = tmp_path / "out.jsonl"
    cfg = load_config(
        ScoreConfig,
        overrides={
            "reward_model": str(tiny_rm),
            "input_file": str(path),
            "normalize": False,
            "output_jsonl": str(out_path),
        },
    )
    got = run(cfg)
    written = [json.loads(ln) for ln in out_path.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(written) == 3
    mean, std = scorer.stats["mean"], scorer.stats["std"]
    z = scorer.score([[{"role": "user", "content": ZH}]], [ZH_GOOD])[0]
    assert got[0]["score"] == pytest.approx(z * std + mean, rel=1e-5, abs=1e-5)
    assert got[0]["score"] == got[0]["raw_score"] and "score2" not in got[0]
    assert got[1]["preferred"] == 1 and got[2]["preferred"] == 2
    assert got[1]["score"] == pytest.approx(got[2]["score2"], rel=1e-6)  # same prompt + answer
    assert written[1]["p_first"] == pytest.approx(got[1]["p_first"], rel=1e-9)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--prompt and --response"):
        ScoreConfig(prompt="hi")
    with pytest.raises(ConfigError, match="not both"):
        ScoreConfig(input_file="x.jsonl", prompt="hi", response="there")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ConfigError, match="record 0, field 'response'"):
        run(ScoreConfig(reward_model="unused", input_file=str(bad)))
