"""simple-rlhf: SFT, reward modelling, PPO and the wider RLHF family for any HF causal LM.

Importing the package is cheap: heavy libraries (torch, transformers, datasets) are imported by the
sub-modules that need them.
"""

__version__ = "0.1.0"


def _quiet_optional_backends() -> None:
    """bitsandbytes (pulled in by peft/transformers when installed) warns on every import on a CPU
    with AVX512-BF16 that an optional Hub kernel package is missing; it has a built-in fallback, so
    the warning is noise here. Only that logger is lowered; real errors still show."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


_quiet_optional_backends()
