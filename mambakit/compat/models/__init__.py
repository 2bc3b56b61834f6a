"""mamba_ssm.models: ``MambaLMHeadModel`` and its ``MambaConfig``."""
