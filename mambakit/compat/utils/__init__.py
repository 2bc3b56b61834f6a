"""mamba_ssm.utils: generation (``InferenceParams``, ``decode``, ``GenerationMixin``) and checkpoint reading."""
