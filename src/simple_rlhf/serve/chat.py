"""``simple-rlhf chat --path DIR``: multi-round chat in the terminal with any saved model folder.

The conversation is rendered with the model's chat template (or the transcript-style fallback for
base models), answers are streamed token by token, and the history is kept across rounds.
Type ``clear`` to start a new conversation and ``quit`` (or ``exit``, or end of input) to leave.

    simple-rlhf chat --path outputs/rlhf/actor-ppo
    simple-rlhf chat --path outputs/sft --system-prompt "Answer briefly." --temperature 0.7
"""

from __future__ import annotations

import dataclasses
import sys
from typing import IO, Any

from simple_rlhf.config import ConfigError, fld

CLEAR = ("clear",)
QUIT = ("quit", "exit", "stop")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """Interactive chat."""

    path: str = fld("tiny", "model folder (or Hub name) to chat with")
    system_prompt: str | None = fld(None, "a system message put first in every conversation")
    temperature: float = fld(0.0, "0 = greedy; otherwise sampling temperature")
    top_p: float = fld(1.0, "nucleus sampling mass")
    top_k: int = fld(0, "top-k sampling (0: off)")
    max_new_tokens: int = fld(128, "maximum tokens per answer")
    max_history_tokens: int = fld(
        1024, "drop the oldest rounds when the conversation grows past this many tokens"
    )
    seed: int = fld(0, "sampling seed")
    trust_remote_code: bool = fld(False, "allow custom modelling code of Hub models")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens: must be >= 1")


class _Streamer:
    """Prints the new tokens of one answer as they are generated (batch of one)."""

    def __init__(self, tokenizer: Any, out: IO[str]) -> None:
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(v) for v in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for complete multi-byte characters
            self.out.write(text[self.printed :])
            self.out.flush()
            self.printed = len(text)

    def end(self) -> None:
        self.out.write("\n")
        self.out.flush()


class ChatSession:
    """The conversation state and one-round answering (testable without a terminal)."""

    def __init__(self, model: Any, tokenizer: Any, cfg: ChatConfig) -> None:
        from simple_rlhf.rollout.generate import SamplingArgs

        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.sampling = SamplingArgs(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            generation_batch_size=1,
        )
        self.history: list[dict[str, str]] = []
        self.rounds = 0

    def clear(self) -> None:
        self.history = []

    def messages(self) -> list[dict[str, str]]:
        system = (
            [{"role": "system", "content": self.cfg.system_prompt}]
            if self.cfg.system_prompt
            else []
        )
        return system + self.history

    def _prompt_ids(self) -> list[int]:
        from simple_rlhf.data.tokenize import encode_prompt

        ids = encode_prompt(self.tokenizer, self.messages())
        while len(ids) > self.cfg.max_history_tokens and len(self.history) > 2:
            self.history = self.history[2:]  # forget the oldest round
            ids = encode_prompt(self.tokenizer, self.messages())
        return ids

    def reply(self, user_text: str, out: IO[str] | None = None) -> str:
        from simple_rlhf.rollout.generate import decode_responses, generate

        self.history.append({"role": "user", "content": user_text})
        streamer = _Streamer(self.tokenizer, out) if out is not None else None
        rollout = generate(
            self.model,
            self.tokenizer,
            [self._prompt_ids()],
            self.sampling,
            seed=self.cfg.seed + self.rounds,
            streamer=streamer,
        )
        answer = decode_responses(self.tokenizer, rollout)[0]
        self.history.append({"role": "assistant", "content": answer})
        self.rounds += 1
        return answer


def chat_loop(session: ChatSession, stdin: IO[str], stdout: IO[str]) -> int:
    """Read lines until quit/EOF; ``clear`` resets the history. Returns rounds answered."""
    stdout.write("Type your message; 'clear' starts over, 'quit' leaves.\n")
    answered = 0
    while True:
        stdout.write("\nUser: ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text.lower() in QUIT:
            break
        if text.lower() in CLEAR:
            session.clear()
            stdout.write("(conversation cleared)\n")
            continue
        stdout.write("Assistant: ")
        session.reply(text, out=stdout)
        answered += 1
    return answered


def run(cfg: ChatConfig) -> dict[str, Any]:
    from simple_rlhf.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(cfg.path, trust_remote_code=cfg.trust_remote_code, padding_side="left")
    model = load_causal_lm(cfg.path, tok, trust_remote_code=cfg.trust_remote_code, dropout=0.0)
    session = ChatSession(model.eval(), tok, cfg)
    rounds = chat_loop(session, sys.stdin, sys.stdout)
    return {"rounds": rounds}
