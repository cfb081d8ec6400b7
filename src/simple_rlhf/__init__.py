"""simple-rlhf: SFT, reward modelling, PPO and the wider RLHF family for any HF causal LM.

Importing the package is cheap: heavy libraries (torch, transformers, datasets) are imported by the
sub-modules that need them.
"""

__version__ = "0.1.0"
