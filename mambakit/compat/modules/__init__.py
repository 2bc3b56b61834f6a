"""mamba_ssm.modules: the ``Mamba`` (Mamba-1) and ``Mamba2`` blocks, trainable inside any network."""
