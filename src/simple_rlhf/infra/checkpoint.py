"""Saving: loadable HF model folders and resumable training checkpoints, both written atomically.

A folder is written under a temporary name beside its target and renamed into place, so an
interrupted save never leaves a half-written model where a finished one was (``os.replace`` of a
directory is atomic on POSIX when the target is absent; an existing target is moved aside first and
removed only after the new one is in place).

* :func:`save_hf_model` — what ``from_pretrained`` loads: safetensors weights, config, generation
  config, tokenizer and chat template; LoRA merged into the weights (default) or saved as an adapter.
* :func:`save_checkpoint` / :func:`load_latest_checkpoint` — model(s), optimiser(s), scheduler(s),
  RNG states, data position and step, under ``<output_dir>/checkpoints/step-N``; the last
  ``keep`` are kept.

Checkpoints hold tensors and plain data only: weights in safetensors, trainer state in JSON, and
optimiser / scheduler / RNG states in ``trainer.pt``, read back with :func:`safe_torch_load`
(torch's ``weights_only`` unpickler, which builds tensors, numbers, strings and containers and
nothing else). A checkpoint sits in a model folder that people share, and resume is on by
default: a file that would need any other Python object to load is refused with
:class:`CheckpointError`, never run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (the message names the file and what to do)."""


def safe_torch_load(path: str | Path, *, allowed: Sequence[Any] = (), map_location: Any = "cpu"):
    """``torch.load`` with ``weights_only=True`` (tensors and plain data only); ``allowed`` are
    extra classes the file may hold (DeepSpeed's loss-scaler and stage records). Anything else
    raises :class:`CheckpointError` naming the file and the objects it asked for."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not even a torch file
            found = []
        what = f" ({', '.join(found)})" if found else f" ({type(e).__name__}: {e})"
        raise CheckpointError(
            f"{path}: refusing to resume from this checkpoint: it holds Python objects other "
            f"than tensors and plain data{what}, which loading would have to run. simple-rlhf "
            "never writes such files (an older version or another program may have). Resume "
            "from a checkpoint you trust, or start afresh with another --output-dir or "
            "--no-resume."
        ) from None


def remove_orphans(folder: Path) -> None:
    """Remove the temporary folders an interrupted save left in ``folder`` (``.model.tmp-*``,
    ``.step-N.tmp-*``, ``.step-N.old-*``). One output folder has one writer at a time."""
    for p in folder.glob(".*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def atomic_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` then move ``tmp_dir`` to ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def unwrap(model: Any) -> Any:
    """The plain model under DDP/DeepSpeed/accelerate wrappers."""
    while hasattr(model, "module") and not hasattr(model, "peft_config"):
        model = model.module
    return model


def is_peft(model: Any) -> bool:
    return hasattr(unwrap(model), "peft_config")


QLORA_FILE = "qlora.json"


def _qlora_base(model: Any) -> dict[str, Any] | None:
    """For a peft model on a 4-bit base: {"base_model_name_or_path", "load_in_4bit", ...}."""
    from simple_rlhf.models.loading import is_quantized

    if not is_peft(model) or not is_quantized(model):
        return None
    hf = model.get_base_model()
    qcfg = getattr(hf.config, "quantization_config", None)
    quant = qcfg.to_dict() if hasattr(qcfg, "to_dict") else dict(qcfg or {})
    return {
        "base_model_name_or_path": hf.config._name_or_path,
        "load_in_4bit": True,
        "quantization_config": quant,
    }


def save_hf_model(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    merge_lora: bool = True,
    extra_json: Mapping[str, Any] | None = None,
) -> Path:
    """Write a loadable HF folder (safetensors). With LoRA: merged weights, or the adapter alone.

    The model goes into ``out_dir`` itself (beside logs and checkpoints): it is written to a
    temporary folder first and its files are renamed into place one by one, weights after the
    config and tokenizer, ``extra_json`` files (``summary.json``) last. Temporary folders that
    an interrupted save left behind are removed.
    Merging is done on the live model (``merge_and_unload``), so call it with ``merge_lora=True``
    only when training is over; mid-run saves keep the adapter.
    QLoRA (a 4-bit base): merging writes a plain full-precision model, the NF4 base dequantised
    plus the adapters (:func:`simple_rlhf.models.lora.dequantized_merged`); the adapter alone is
    saved with ``qlora.json`` naming the 4-bit base, which
    :func:`simple_rlhf.models.loading.load_causal_lm` uses to rebuild the same model.
    ``extra_json`` maps file names to JSON-serialisable objects written beside the weights.
    """
    model = unwrap(model)
    qlora = _qlora_base(model)
    if qlora is not None and merge_lora:
        from simple_rlhf.models.lora import dequantized_merged

        model = dequantized_merged(model)  # 4-bit base dequantised + adapters: plain weights
        qlora = None
    elif is_peft(model) and merge_lora:
        model = model.merge_and_unload()
    extra = dict(extra_json or {})
    if qlora is not None:  # adapter of a 4-bit base: how to rebuild the base it was trained on
        extra[QLORA_FILE] = qlora

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=out))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, obj in extra.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
        # Only renames from here on: the folder holds either the old or the new copy of each
        # file. Weights files of another kind (adapter vs merged) from an earlier save go away.
        stale_files = ("model.safetensors", "adapter_model.safetensors", "adapter_config.json")
        for stale in (*stale_files, QLORA_FILE):
            if (out / stale).exists() and not (tmp / stale).exists():
                (out / stale).unlink()

        # weights after config and tokenizer; the extra JSON (summary.json, ...) that describes
        # the weights last: a save killed half-way never shows a new summary beside old weights
        def order(p: Path) -> int:
            return 2 if p.name in extra else 1 if p.name.endswith(".safetensors") else 0

        for f in sorted(tmp.iterdir(), key=order):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    models: Mapping[str, Any],
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write a resumable checkpoint ``<output_dir>/checkpoints/step-<step>`` and prune old ones.

    ``models``/``optimizers``/``schedulers`` map a role name ("actor", "critic", ...) to an object
    with ``state_dict()``; ``state`` holds JSON-able trainer state (epoch, data position, metrics).
    RNG states are saved too.
    """
    import torch
    from safetensors.torch import save_file

    from simple_rlhf.infra.seed import rng_state

    root = Path(output_dir) / CHECKPOINTS

    def write(tmp: Path) -> None:
        for name, m in models.items():
            sd = {k: v.detach().contiguous().cpu() for k, v in _model_state(m).items()}
            save_file(_dedupe_shared(sd), str(tmp / f"{name}.safetensors"))
        torch.save(
            {
                "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
                "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
                "rng": rng_state(),
            },
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **dict(state or {})}, indent=2))

    path = atomic_dir(root / f"step-{step}", write)
    for old in sorted(_checkpoints(root), key=_step_of)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _model_state(model: Any) -> dict[str, Any]:
    """What a checkpoint keeps of a model: its whole state, or for a 4-bit (QLoRA) model only the
    trainable tensors: the frozen NF4 base is rebuilt exactly by loading the base again (NF4
    quantisation is deterministic), and its packed weights and quantisation state do not load
    back through ``load_state_dict``."""
    from simple_rlhf.models.loading import is_quantized

    model = unwrap(model)
    if is_quantized(model):
        return {k: p for k, p in model.named_parameters() if p.requires_grad}
    return model.state_dict()


def _load_model_state(model: Any, state: Mapping[str, Any]) -> None:
    from simple_rlhf.models.loading import is_quantized

    model = unwrap(model)
    if not is_quantized(model):
        model.load_state_dict(state)
        return
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise RuntimeError(
            "checkpoint of a 4-bit model does not match its trainable parameters: "
            f"missing {sorted(trainable - set(state))[:3]}, unexpected "
            f"{sorted(set(state) - trainable)[:3]}"
        )
    model.load_state_dict(state, strict=False)


def _dedupe_shared(sd: dict[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share memory (tied embeddings): clone the duplicates."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in sd.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def _checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")]


def _step_of(p: Path) -> int:
    try:
        return int(p.name.split("-", 1)[1])
    except ValueError:
        return -1


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    done = [p for p in _checkpoints(Path(output_dir) / CHECKPOINTS) if (p / "state.json").exists()]
    return max(done, key=_step_of) if done else None


def load_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, Any],
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into live objects; returns the trainer state."""
    from safetensors.torch import load_file

    from simple_rlhf.infra.seed import set_rng_state

    path = Path(path)
    for name, m in models.items():
        _load_model_state(m, load_file(str(path / f"{name}.safetensors")))
    blob = safe_torch_load(path / "trainer.pt")
    for k, o in (optimizers or {}).items():
        o.load_state_dict(blob["optimizers"][k])
    for k, s in (schedulers or {}).items():
        s.load_state_dict(blob["schedulers"][k])
    set_rng_state(blob["rng"])
    return json.loads((path / "state.json").read_text())
