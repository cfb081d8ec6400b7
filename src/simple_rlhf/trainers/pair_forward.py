"""The forward pass the preference trainers share: sequence log-probs of response tokens, and where
the reference log-probs come from.

* :func:`sequence_forward` — one forward of a ``[N, T]`` batch whose ``labels`` are -100 off the
  response (``collate_pairs`` gives chosen rows then rejected rows, ``N = 2B``), with padding-aware
  positions (``models.forward.forward``). Returns per-sequence sums and length-averages of the
  response-token log-probs and the mean logit, as a :class:`SeqLogps`.
* :class:`Reference` — reference log-probs from a frozen copy of the initial policy, or, when the
  policy carries a LoRA adapter, from the *same* model with the adapter disabled (no second copy).
* :func:`precompute_reference` — one pass over a dataset before training; the values ride along
  with each example and :func:`cached_reference` turns a batch of them back into a ``SeqLogps``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from simple_rlhf.data.tokenize import IGNORE_INDEX
from simple_rlhf.losses.reduce import masked_mean
from simple_rlhf.models.forward import forward
from simple_rlhf.models.logprobs import sequence_logprobs, token_logprobs

REF_KEY = "ref_logps"  # example key holding precomputed (sum, average) reference log-probs


@dataclasses.dataclass
class SeqLogps:
    """Per-sequence quantities of a ``[N, T]`` batch, computed over its response tokens.

    ``logps`` ``[N]`` = ``sum_t m_t log p(y_t | x, y_<t)``; ``avg_logps`` ``[N]`` = the same divided
    by the response length ``sum_t m_t`` (IPO, SimPO, ORPO, CPO-SimPO). The rest exist only for a
    live policy forward: ``logits_mean`` ``[N]`` (detached mean logit over vocabulary and response
    tokens), ``token_logprobs`` and ``mask`` ``[N, T-1]`` (for an NLL term on chosen rows).
    """

    logps: torch.Tensor
    avg_logps: torch.Tensor
    logits_mean: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def pick(self, average: bool) -> torch.Tensor:
        """``avg_logps`` if ``average`` else ``logps``."""
        return self.avg_logps if average else self.logps

    def rows(self, index: slice) -> SeqLogps:
        """The same quantities for a slice of rows (e.g. the chosen half)."""
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return SeqLogps(*(None if v is None else v[index] for v in values))

    def halves(self) -> tuple[SeqLogps, SeqLogps]:
        """(chosen rows, rejected rows) of a ``[2B]`` pair batch (chosen first)."""
        n = self.logps.shape[0] // 2
        return self.rows(slice(0, n)), self.rows(slice(n, 2 * n))


def sequence_forward(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> SeqLogps:
    """Response log-probs of every row of a ``[N, T]`` batch in one forward.

    ``logits[:, t]`` scores ``labels[:, t + 1]``; positions whose label is -100 (prompt, padding)
    are masked out of every sum and mean, so their content never changes a result.
    """
    logits = forward(model, input_ids, attention_mask).logits[:, :-1]  # [N, T-1, V]
    targets = labels[:, 1:]  # [N, T-1]
    mask = targets != IGNORE_INDEX  # [N, T-1]
    lp = token_logprobs(logits, targets)  # [N, T-1], 0 where masked
    with torch.no_grad():
        logits_mean = masked_mean(logits.detach().float().mean(dim=-1), mask, dim=-1)  # [N]
    return SeqLogps(
        logps=sequence_logprobs(lp, mask),
        avg_logps=sequence_logprobs(lp, mask, average=True),
        logits_mean=logits_mean,
        token_logprobs=lp,
        mask=mask,
    )


def batch_forward(model: Any, batch: dict[str, torch.Tensor]) -> SeqLogps:
    """:func:`sequence_forward` on a collated batch (input_ids, attention_mask, labels)."""
    return sequence_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode, gradient-free copy of ``model`` (the reference policy)."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


class Reference:
    """Reference log-probs: from ``frozen`` (a copy of the initial policy) or, if that is ``None``,
    from ``policy`` with its peft LoRA adapter disabled (``disable_adapter()``), which is exactly
    the base model the adapter was added to. Always computed in eval mode without gradients."""

    def __init__(self, policy: Any, frozen: torch.nn.Module | None = None) -> None:
        if frozen is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("a reference needs a frozen copy unless the policy has a LoRA adapter")
        self.policy = policy
        self.frozen = frozen

    @contextlib.contextmanager
    def model(self) -> Iterator[Any]:
        """The module to run for reference log-probs (restores the policy's mode afterwards)."""
        if self.frozen is not None:
            yield self.frozen
            return
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor]) -> SeqLogps:
        """Reference ``logps`` / ``avg_logps`` ``[N]`` of a collated batch."""
        with self.model() as m:
            out = batch_forward(m, batch)
        return SeqLogps(out.logps, out.avg_logps)


@torch.no_grad()
def precompute_reference(
    reference: Reference,
    examples: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
) -> list[dict[str, Any]]:
    """Copies of ``examples`` carrying their reference log-probs under :data:`REF_KEY`.

    For a pair example the value is ``[[sum_c, sum_r], [avg_c, avg_r]]`` (rows of ``collate`` are
    chosen-first, so row ``i`` and row ``i + B`` belong to example ``i``).
    """
    out: list[dict[str, Any]] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        ref = reference.logps(collate(chunk))
        b = len(chunk)
        for i, ex in enumerate(chunk):
            sums = [float(ref.logps[i]), float(ref.logps[i + b])]
            avgs = [float(ref.avg_logps[i]), float(ref.avg_logps[i + b])]
            out.append({**ex, REF_KEY: [sums, avgs]})
    return out


def cached_reference(chunk: Sequence[dict[str, Any]]) -> SeqLogps | None:
    """The ``[2B]`` reference ``SeqLogps`` of a batch of precomputed examples (chosen rows first);
    ``None`` if the examples carry none."""
    if not chunk or REF_KEY not in chunk[0]:
        return None
    vals = torch.tensor([ex[REF_KEY] for ex in chunk], dtype=torch.float32)  # [B, 2, 2]
    sums = torch.cat([vals[:, 0, 0], vals[:, 0, 1]])  # [2B]
    avgs = torch.cat([vals[:, 1, 0], vals[:, 1, 1]])  # [2B]
    return SeqLogps(sums, avgs)
