"""Model layers: the Mamba-1 and Mamba-2 mixers and the RMSNorm modules."""
