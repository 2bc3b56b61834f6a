"""mamba_ssm.ops.triton: the Mamba-2 SSD scan and the decoding state update."""
