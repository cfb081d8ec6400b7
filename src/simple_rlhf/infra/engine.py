"""How one model is trained across ranks: :class:`Plan` (settled by ``Dist.plan`` before the model
is loaded, so ZeRO-3 can partition at load) and :class:`Engine` (the wrapped model: plain, DDP or
DeepSpeed; accumulation, backward, step, evaluation under ZeRO-3, saving a loadable HF folder).
See ``infra/distributed.py`` for the ranks and the usage pattern of a trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from simple_rlhf.infra import zero
from simple_rlhf.infra.guard import NonFiniteGuard

if TYPE_CHECKING:
    from simple_rlhf.infra.distributed import Dist

T = TypeVar("T")


def is_4bit_param(p: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit (QLoRA) weight: two values packed per byte, shape in its quant_state."""
    return type(p).__name__ == "Params4bit" and getattr(p, "quant_state", None) is not None


def grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """The global norm of the gradients of ``model`` (before clipping), clipped to ``max_norm``
    in place when > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm and max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))


def guarded_step(
    model: torch.nn.Module, optimizer: Any, scheduler: Any, max_norm: float, guard: NonFiniteGuard
) -> float:
    """One optimiser step of a plain (or DDP, gradients already averaged) model: measure and clip
    the gradient norm, step the optimiser unless the norm is NaN/inf (``guard``), step the schedule
    (``None``: the caller does), clear the gradients; returns the norm before clipping."""
    norm = grad_norm(model, max_norm)
    stepped = guard.allow(norm)
    if stepped:
        optimizer.step()
    if scheduler is not None:
        with warnings.catch_warnings():  # torch warns of a schedule step without an optimiser step
            if not stepped:
                warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, at full size also under ZeRO-3 (``ds_numel``) and for
    bitsandbytes 4-bit weights (two values packed per byte: counted unpacked)."""
    total = trainable = 0
    for p in model.parameters():
        n = (
            int(p.quant_state.shape.numel())
            if is_4bit_param(p)
            else getattr(p, "ds_numel", p.numel())
        )
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


@dataclasses.dataclass
class Plan:
    """How one model is wrapped (made by :meth:`Dist.plan` before the model is loaded)."""

    dist: Dist
    optim: Any
    dtype: str
    ds_config: dict[str, Any] | None
    hf_ds_config: Any = None

    @property
    def zero_stage(self) -> int | None:
        return None if self.ds_config is None else zero.config_stage(self.ds_config)

    def loading(self) -> contextlib.AbstractContextManager:
        """Wrap model loading: the global RNG is left where it was. A ZeRO-3 load draws random
        numbers (transformers re-creates the partitioned embeddings when it resizes them) that a
        single-process load does not, so without this LoRA adapters would start elsewhere.
        Transformers also sees this plan's ZeRO-3 setting (:meth:`hf_current`)."""
        devices = [self.dist.local_rank] if self.dist.device.type == "cuda" else []
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng(devices=devices))
        stack.enter_context(self.hf_current())
        return stack

    @contextlib.contextmanager
    def hf_current(self) -> Iterator[None]:
        """Inside the block transformers sees this plan's ZeRO-3 setting (partition at load,
        ``generate(synced_gpus=...)``), not that of the last ZeRO-3 plan made: needed when models
        of one run have different stages (PPO's actor and critic). No-op without DeepSpeed."""
        if self.ds_config is None and self.dist.backend is None:
            yield
            return
        from transformers.integrations import deepspeed as hf_ds

        previous = hf_ds._hf_deepspeed_config_weak_ref
        if self.hf_ds_config is not None:
            hf_ds.set_hf_deepspeed_config(self.hf_ds_config)
        else:
            hf_ds.unset_hf_deepspeed_config()
        try:
            yield
        finally:
            hf_ds._hf_deepspeed_config_weak_ref = previous

    def wrap(
        self, model: Any, optimizer: Any, scheduler: Any, *, allow_4bit: bool = False
    ) -> Engine:
        """Plain model (one process), DDP (several, no DeepSpeed) or ``deepspeed.initialize``.

        QLoRA (a bitsandbytes 4-bit base) at ZeRO-3 only with ``allow_4bit``: the packed weights
        are partitioned and gathered like any parameter and :meth:`Engine.save_hf` writes what
        one process writes (2-process SFT, RM, DPO and KTO tests in
        ``tests/infra/test_distributed.py``), but a trainer passes it only once its own path
        (e.g. generation, frozen copies) was checked."""
        d = self.dist
        if (
            self.zero_stage == 3
            and not allow_4bit
            and any(is_4bit_param(p) for p in model.parameters())
        ):
            from simple_rlhf.config import ConfigError

            raise ConfigError(
                "load_in_4bit (QLoRA) with ZeRO-3 is not enabled for this trainer; use "
                "--zero-stage 0, 1 or 2 (only the small adapters train, so stage 3 gains little) "
                "or drop --load-in-4bit"
            )
        if self.ds_config is not None:
            import deepspeed

            ds_engine, ds_opt, _, ds_sched = deepspeed.initialize(
                model=model,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=self.ds_config,
                dist_init_required=False,
            )
            return Engine(self, ds_engine, ds_engine.module, ds_opt, ds_sched or scheduler, "ds")
        model = model.to(d.device)
        if d.initialized and d.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [d.local_rank] if d.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
            return Engine(self, wrapped, model, optimizer, scheduler, "ddp")
        return Engine(self, model, model, optimizer, scheduler, "plain")

    def wrap_frozen(self, model: Any) -> Engine:
        """A model that is only evaluated (reference, reward model, teacher): no gradients, eval
        mode. ZeRO-3 partitions it over the ranks (parameters on CPU with ``offload="param"``);
        otherwise every rank holds it whole on its device. Call ``engine.module(...)`` on every
        rank alike under ZeRO-3."""
        model.requires_grad_(False)
        model.eval()
        if self.zero_stage == 3:
            import deepspeed

            cfg = {k: v for k, v in self.ds_config.items() if k != "gradient_clipping"}
            zero_cfg = {k: v for k, v in cfg["zero_optimization"].items()}
            zero_cfg.pop("offload_optimizer", None)
            cfg["zero_optimization"] = zero_cfg
            ds_engine, *_ = deepspeed.initialize(model=model, config=cfg, dist_init_required=False)
            ds_engine.eval()
            return Engine(self, ds_engine, ds_engine.module, None, None, "ds")
        model = model.to(self.dist.device)
        return Engine(self, model, model, None, None, "plain")


class Engine:
    """One trained model: ``model`` for training forwards (the wrapper), ``module`` for everything
    else (the HF model: generate, config, evaluation), and backward/step/save across ranks."""

    def __init__(self, plan: Plan, model: Any, module: Any, optimizer, scheduler, kind: str):
        self.plan, self.dist = plan, plan.dist
        self.model, self.module = model, module
        self.optimizer, self.scheduler = optimizer, scheduler
        self.kind = kind  # "plain" | "ddp" | "ds"
        self.zero_stage = plan.zero_stage
        self.max_grad_norm = float(plan.optim.max_grad_norm or 0.0)
        self.guard = NonFiniteGuard()  # no update on a NaN/inf gradient; stops a diverged run
        self._accumulating = False

    # --- training ---
    def accumulate(self, micro_batches: Sequence[T]) -> Iterator[T]:
        """Yield the micro-batches of one optimiser step; gradients are synchronised only after
        the last one (DDP ``no_sync``, DeepSpeed accumulation boundary)."""
        n = len(micro_batches)
        self._accumulating = True
        try:
            for i, item in enumerate(micro_batches):
                last = i == n - 1
                if self.kind == "ds":
                    self.model.set_gradient_accumulation_boundary(last)
                    yield item
                elif self.kind == "ddp" and not last:
                    with self.model.no_sync():
                        yield item
                else:
                    yield item
        finally:
            self._accumulating = False

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's loss; gradients end up averaged over ranks."""
        if self.kind != "ds":
            loss.backward()
            return
        if not self._accumulating:  # a single micro-batch per step
            self.model.set_gradient_accumulation_boundary(True)
        self.model.backward(loss, scale_wrt_gas=False)  # our losses are already step-normalised

    def step(self) -> float:
        """Clip (``max_grad_norm``), optimiser step, schedule step, zero grads; returns the global
        gradient norm before clipping. A non-finite norm skips the optimiser step
        (:class:`~simple_rlhf.infra.guard.NonFiniteGuard`; DeepSpeed ZeRO skips it itself)."""
        if self.kind == "ds":
            self.model.step()
            norm = self.model.get_global_grad_norm()
            if norm is None:  # not measured by DeepSpeed in this configuration
                return float("nan")
            self.guard.allow(float(norm))
            return float(norm)
        return guarded_step(
            self.module, self.optimizer, self.scheduler, self.max_grad_norm, self.guard
        )

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    # --- evaluation ---
    def gathered(self) -> contextlib.AbstractContextManager:
        """ZeRO-3: every parameter at full size on every rank inside the block (collective)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    def on_main(self, fn: Callable[[Any], dict[str, float]]) -> dict[str, float]:
        """``fn(module)`` for metrics reported by rank 0 (e.g. generation): run by rank 0 alone,
        or under ZeRO-3 by every rank on the same inputs with parameters gathered. Other ranks
        get ``{}`` (ZeRO-3: the same result)."""
        if self.zero_stage == 3:
            with self.gathered():
                return fn(self.module)
        return fn(self.module) if self.dist.is_main else {}

    # --- saving ---
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's state on CPU at rank 0 (``{}`` elsewhere); collective under ZeRO-3."""
        if self.zero_stage == 3:
            return zero.gather_state_dict(self.module, self.dist.is_main)
        if not self.dist.is_main:
            return {}
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def save_hf(
        self,
        tokenizer: Any,
        out_dir: str | Path,
        *,
        merge_lora: bool = True,
        extra_json: Mapping[str, Any] | None = None,
    ) -> None:
        """A loadable HF folder written by rank 0 (ZeRO-3: gathered first; LoRA merged or the
        adapter alone); every rank must call it."""
        from simple_rlhf.infra.checkpoint import save_hf_model

        model = self.module
        if self.zero_stage == 3 and any(is_4bit_param(p) for p in model.parameters()):
            self._save_qlora_gathered(tokenizer, out_dir, merge_lora, extra_json)
            return
        if self.zero_stage == 3:
            state = zero.gather_state_dict(self.module, self.dist.is_main)
            model = zero.plain_copy(self.module, state) if self.dist.is_main else None
        if self.dist.is_main:
            save_hf_model(model, tokenizer, out_dir, merge_lora=merge_lora, extra_json=extra_json)
        self.dist.barrier()

    def _save_qlora_gathered(
        self,
        tokenizer: Any,
        out_dir: str | Path,
        merge_lora: bool,
        extra_json: Mapping[str, Any] | None,
    ) -> None:
        """QLoRA under ZeRO-3: the packed 4-bit weights do not load into an unquantised skeleton
        (:func:`zero.plain_copy`), so the live model is gathered whole on every rank (at its
        4-bit size) and rank 0 saves it as one process would: merged, the NF4 base dequantised
        plus ``s * B @ A`` into a new plain model (``models/lora.py::dequantized_merged``, built
        with transformers' ZeRO-3 detection off), or the adapter alone with ``qlora.json``."""
        from simple_rlhf.infra.checkpoint import save_hf_model

        with self.gathered():
            if self.dist.is_main:
                with zero.zero3_detection_off():
                    save_hf_model(
                        self.module,
                        tokenizer,
                        out_dir,
                        merge_lora=merge_lora,
                        extra_json=extra_json,
                    )
        self.dist.barrier()

    # --- reporting ---
    def describe(self) -> str:
        """Parameters, trainable parameters and the model-state memory estimate per device."""
        n_all, n_train = count_parameters(self.module)
        d, stage = self.dist, self.zero_stage
        mem = zero.estimate_memory(
            n_all,
            n_train,
            stage=stage,
            world_size=d.world_size,
            dtype=self.plan.dtype,
            offload=d.args.offload if stage is not None else "none",
        )
        how = {"plain": "single process", "ddp": "DDP"}.get(self.kind, f"ZeRO-{stage}")
        return (
            f"{n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); {d.describe()}; "
            f"{how}, {self.plan.dtype}: {zero.describe_memory(mem)}"
        )
