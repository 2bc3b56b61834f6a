"""mamba_ssm's public Python API on mambakit: the same names, signatures, defaults and return types.

    from mambakit.compat import MambaLMHeadModel, Mamba, Mamba2, selective_scan_fn, mamba_inner_fn
    mambakit.compat.install()   # then `import mamba_ssm…` / `import causal_conv1d…` resolve here
    python -m mambakit.compat script.py args…   # the same, for a script left as it is

Module paths mirror mamba_ssm's (``mambakit.compat.models.mixer_seq_simple`` ~ ``mamba_ssm.models.
mixer_seq_simple``); ``mambakit.compat.causal_conv1d`` is the causal_conv1d package's API. What differs from
mamba_ssm is written in each module's docstring and in the README section "Coming from mamba_ssm".
"""
__version__ = "2.3.2"  # the mamba_ssm release whose API this follows

from mambakit.compat.models.mixer_seq_simple import MambaLMHeadModel
from mambakit.compat.modules.mamba2 import Mamba2
from mambakit.compat.modules.mamba_simple import Mamba
from mambakit.compat.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
from mambakit.compat.shim import install, uninstall

__all__ = ["Mamba", "Mamba2", "MambaLMHeadModel", "install", "mamba_inner_fn", "selective_scan_fn", "uninstall"]
