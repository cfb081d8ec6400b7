"""Several processes on torch.distributed: plain DDP, or DeepSpeed ZeRO 0-3 (with CPU offload).

Launch any trainer under ``torchrun --nproc_per_node N -m simple_rlhf <cmd> ...`` or
``deepspeed --num_gpus N --module simple_rlhf <cmd> ...`` (ranks from ``$RANK``/``$LOCAL_RANK``, or
``--local_rank``). One process with no launcher and no ``--zero-stage`` is exactly the plain loop:
no process group, nothing imported, nothing wrapped.

A trainer uses three objects::

    dist = init_distributed(cfg.dist)              # ranks, device, collectives, sharding
    plan = dist.plan(cfg.optim, cfg.model.dtype)   # before loading: ZeRO-3 partitions at load
    with plan.loading():
        model = load_causal_lm(...)
    model = apply_lora(model, ...); optimizer = ...; scheduler = ...
    engine = plan.wrap(model, optimizer, scheduler)
    for group in optimiser_steps:
        for batch in engine.accumulate(group):     # DDP no_sync / DeepSpeed boundary
            loss = ...forward through engine.model...
            engine.backward(loss)                  # gradients are averaged over ranks
        grad_norm = engine.step()                  # clip + optimiser + schedule + zero_grad

Global batch semantics: rank r takes its contiguous slice of each global batch
(``per_device_batch x world_size`` examples, :meth:`Dist.shard`), gradients are averaged over
ranks, so a loss normalised by a *global* count must be multiplied by ``world_size`` before
:meth:`Engine.backward` (see the SFT trainer). Under ZeRO-3 every forward gathers parameters from
all ranks, so every rank must run the same forwards (evaluation included: :meth:`Dist.shard_padded`,
:meth:`Engine.on_main`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from simple_rlhf.infra import zero

T = TypeVar("T")
_UNSET: Any = object()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_ranks(local_rank_flag: int) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) set by torchrun / the deepspeed launcher, else None."""
    if "WORLD_SIZE" not in os.environ and local_rank_flag < 0:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", max(local_rank_flag, 0)))
    rank = int(os.environ.get("RANK", local))
    return rank, world, local


@dataclasses.dataclass
class Dist:
    """This process's place in the job, and the collectives trainers need (no-ops alone)."""

    args: Any  # DistArgs
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def initialized(self) -> bool:
        return self.backend is not None

    @property
    def uses_deepspeed(self) -> bool:
        return self.args.zero_stage is not None or self.args.deepspeed_config is not None

    # --- collectives ---
    def barrier(self) -> None:
        if self.initialized:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self, local: bool = True) -> Iterator[None]:
        """The (local) main rank runs the block first, e.g. to build a data cache; the others
        wait at a barrier, then run it and find the cache."""
        first = self.is_local_main if local else self.is_main
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Elementwise sum over ranks (float64), e.g. token counts of the global batch."""
        if not self.initialized:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def mean_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Each metric averaged over ranks (same keys on every rank, in the same order)."""
        keys = list(metrics)
        sums = self.all_reduce_sum([float(metrics[k]) for k in keys])
        return {k: s / self.world_size for k, s in zip(keys, sums, strict=True)}

    def rank_seed(self, seed: int) -> int:
        """Seed for per-rank randomness (dropout, sampling): ``seed + rank``."""
        return seed + self.rank

    # --- data ---
    def _bounds(self, n: int) -> tuple[int, int]:
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, global_batch: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of a global batch; slices differ in size by at most one
        and are disjoint, their concatenation in rank order is the global batch."""
        start, end = self._bounds(len(global_batch))
        return list(global_batch[start:end])

    def shard_padded(self, items: Sequence[T]) -> tuple[list[T], int]:
        """(slice, n_real): ``items`` padded (with copies of the last item) to a multiple of the
        world size, so every rank gets the same count (same forwards under ZeRO-3); the first
        ``n_real`` of the slice are real, the rest must be given zero weight."""
        n, w = len(items), self.world_size
        if w == 1 or n == 0:
            return list(items), n
        per = -(-n // w)
        padded = list(items) + [items[-1]] * (per * w - n)
        start = self.rank * per
        return padded[start : start + per], max(0, min(per, n - start))

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Tensors of a collated batch on this rank's device (no-op on CPU)."""
        if self.device.type == "cpu":
            return dict(batch)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # --- engines ---
    def plan(
        self,
        optim: Any,
        dtype: str,
        *,
        zero_stage: int | None = _UNSET,
        offload: str | None = None,
    ) -> Plan:
        """Settle how a model will be wrapped; call before loading it. ``zero_stage`` and
        ``offload`` override ``--zero-stage``/``--offload`` (e.g. a critic's own stage, or
        ``offload="param"`` for a frozen reference model)."""
        stage = self.args.zero_stage if zero_stage is _UNSET else zero_stage
        use_ds = stage is not None or (zero_stage is _UNSET and self.args.deepspeed_config)
        if not use_ds:
            return Plan(self, optim, dtype, None, None)
        if not self.initialized:
            raise RuntimeError("DeepSpeed needs init_distributed(..., deepspeed=True) first")
        cfg = zero.deepspeed_config(
            zero_stage=stage,
            offload=offload or self.args.offload,
            optim=optim,
            dtype=dtype,
            world_size=self.world_size,
            user_config=self.args.deepspeed_config,
        )
        hf_ds = None
        if zero.config_stage(cfg) == 3:
            # alive while this plan (then its engine) lives: from_pretrained partitions at load
            # time, resize_token_embeddings and generate(synced_gpus) know about ZeRO-3
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds = HfDeepSpeedConfig(cfg)
        return Plan(self, optim, dtype, cfg, hf_ds)

    def describe(self) -> str:
        if not self.initialized:
            return "1 process"
        what = "DeepSpeed" if self.uses_deepspeed else "DDP"
        return f"{self.world_size} processes ({what} over {self.backend}, device {self.device})"

    def close(self) -> None:
        """Barrier and destroy the process group (also registered at exit)."""
        if self.initialized and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        self.backend = None


def init_distributed(args: Any = None, *, deepspeed: bool = False) -> Dist:
    """Join the process group the launcher set up (idempotent), or stay a single process.

    No launcher and no DeepSpeed: nothing happens. DeepSpeed alone in one process gets a
    one-rank group (DeepSpeed needs one); ``deepspeed=True`` says a trainer will use it even
    though ``args`` does not (e.g. PPO's own per-model stages). On CPU: gloo and
    ``DS_ACCELERATOR=cpu``.
    """
    from simple_rlhf.config import DistArgs

    args = args if args is not None else DistArgs()
    ranks = _launcher_ranks(args.local_rank)
    use_ds = deepspeed or args.zero_stage is not None or args.deepspeed_config is not None
    if not torch.cuda.is_available():  # DeepSpeed would guess CPU anyway, with a warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if (ranks is None or ranks[1] == 1) and not use_ds:
        return Dist(args, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if ranks is None:  # DeepSpeed in a single process: a one-rank group of our own
        ranks = (0, 1, 0)
        for key, value in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            os.environ.setdefault(key, str(value))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world, local = ranks
    os.environ.setdefault("LOCAL_RANK", str(local))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    backend = args.dist_backend or ("nccl" if cuda else "gloo")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
        _leave_together_at_exit()
    if use_ds:
        import warnings

        import deepspeed as ds

        ds.init_distributed(dist_backend=backend)
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):  # DeepSpeed's, not ours
            warnings.filterwarnings("ignore", f".*{name}` is deprecated", FutureWarning)
    return Dist(args, rank, torch.distributed.get_world_size(), local, device, backend)


def _leave_together_at_exit() -> None:
    """At a normal exit, wait for every rank, then destroy the group (ZeRO-3 can abort at
    interpreter shutdown otherwise). After an uncaught exception, leave at once: the other ranks
    are stuck in a collective and the launcher stops them when this process dies."""
    import atexit
    import sys

    failed = []
    previous_hook = sys.excepthook

    def hook(*exc: Any) -> None:
        failed.append(True)
        previous_hook(*exc)

    def shutdown() -> None:
        if failed or not torch.distributed.is_initialized():
            return
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

    sys.excepthook = hook
    atexit.register(shutdown)


def is_4bit_param(p: torch.Tensor) -> bool:
    """A bitsandbytes 4-bit (QLoRA) weight: two values packed per byte, shape in its quant_state."""
    return type(p).__name__ == "Params4bit" and getattr(p, "quant_state", None) is not None


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
        one process writes (2-process SFT test in ``tests/infra/test_distributed.py``), but a
        trainer passes it only once its own path (e.g. generation, frozen copies) was checked."""
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
        gradient norm before clipping."""
        if self.kind == "ds":
            self.model.step()
            norm = self.model.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for p in self.module.parameters() if p.grad is not None]
        if not params:
            norm = 0.0
        elif self.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        else:
            norm = float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

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


def iterate_shards(dist: Dist, global_batches: Iterable[Sequence[T]]) -> Iterator[list[T]]:
    """This rank's slice of each global batch; a last batch with fewer examples than ranks is
    dropped (a rank would get nothing to run), identically on every rank."""
    for batch in global_batches:
        if len(batch) >= dist.world_size:
            yield dist.shard(batch)
