"""mamba_ssm.ops: the functional API (selective scan, Mamba inner block, SSD chunk scan, state update)."""
