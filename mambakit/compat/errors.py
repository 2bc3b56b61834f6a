"""The one error class of the mamba_ssm compatibility layer."""
from mambakit.errors import UserError


class CompatError(UserError):
    """A mamba_ssm argument or feature that mambakit's drop-in does not support; the message names it."""
