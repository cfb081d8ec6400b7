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

The model side (:class:`Plan`, :class:`Engine`) is in ``infra/engine.py``.

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
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from simple_rlhf.infra import zero
from simple_rlhf.infra.engine import Engine, Plan, count_parameters, is_4bit_param

__all__ = [  # Engine, Plan and the parameter helpers live in infra/engine.py
    "Dist",
    "Engine",
    "Plan",
    "count_parameters",
    "init_distributed",
    "is_4bit_param",
    "iterate_shards",
]

T = TypeVar("T")
SAMPLING_SEED_STRIDE = 1_000_003
_UNSET: Any = object()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_stack_dumps() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack (find where a rank waits); with
    ``SIMPLE_RLHF_RUN_TIMEOUT_S`` set, the process prints its stacks and exits after that many
    seconds (a watchdog for tests and CI: a hang fails with the rank's stack)."""
    import faulthandler
    import signal

    err = sys.__stderr__  # the real stream (a captured sys.stderr may have no file descriptor)
    try:
        if hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, file=err, all_threads=True)
        limit = float(os.environ.get("SIMPLE_RLHF_RUN_TIMEOUT_S") or 0)
        if limit > 0:
            faulthandler.dump_traceback_later(limit, exit=True, file=err)
    except (AttributeError, OSError, ValueError):  # no usable stderr, or a bad value: no dumps
        pass


def _single_process_store() -> str:
    """A ``file://`` rendezvous for a one-rank group (DeepSpeed in one process): a TCP store would
    listen on every interface. Gloo's own sockets are kept on the loopback interface."""
    import atexit
    import tempfile

    fd, path = tempfile.mkstemp(prefix="simple-rlhf-pg-")
    os.close(fd)
    os.unlink(path)  # the store creates it; removed again at exit
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    loopback = [name for _, name in socket.if_nameindex() if name in ("lo", "lo0")]
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
    return f"file://{path}"


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

    def sampling_seed(self, seed: int) -> int:
        """Seed of this rank's generation when ``seed`` itself moves by small steps (``base +
        step``): ``seed + 1_000_003 x rank``, so ranks never reuse another step's seed."""
        return seed + SAMPLING_SEED_STRIDE * self.rank

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
    _install_stack_dumps()
    ranks = _launcher_ranks(args.local_rank)
    use_ds = deepspeed or args.zero_stage is not None or args.deepspeed_config is not None
    if not torch.cuda.is_available():  # DeepSpeed would guess CPU anyway, with a warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if (ranks is None or ranks[1] == 1) and not use_ds:
        return Dist(args, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    init_method = None
    if ranks is None:  # DeepSpeed in a single process: a one-rank group of our own
        ranks = (0, 1, 0)
        for key, value in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            os.environ.setdefault(key, str(value))
        # DeepSpeed reads these, but the group meets through a file: no port is opened
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        init_method = _single_process_store()
    rank, world, local = ranks
    os.environ.setdefault("LOCAL_RANK", str(local))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    backend = args.dist_backend or ("nccl" if cuda else "gloo")
    if not torch.distributed.is_initialized():
        if init_method is not None:
            torch.distributed.init_process_group(
                backend=backend, init_method=init_method, rank=0, world_size=1
            )
        else:
            torch.distributed.init_process_group(backend=backend)
        _leave_together_at_exit()
    if use_ds:
        import warnings

        import deepspeed as ds

        from simple_rlhf.infra.build_locks import recover_stale_build_locks

        recover_stale_build_locks()  # DeepSpeed JIT-builds ops: an abandoned lock hangs forever
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


def iterate_shards(dist: Dist, global_batches: Iterable[Sequence[T]]) -> Iterator[list[T]]:
    """This rank's slice of each global batch; a last batch with fewer examples than ranks is
    dropped (a rank would get nothing to run), identically on every rank."""
    for batch in global_batches:
        if len(batch) >= dist.world_size:
            yield dist.shard(batch)
