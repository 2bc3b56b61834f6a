"""mambakit: Mamba-family language models on one GPU or a CPU, with no compilation."""
__version__ = "0.1.0"
