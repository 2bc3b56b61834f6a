"""The one base class of errors a user can cause (bad path, config, argument, request or data row).

The CLI prints such an error as one line naming the problem and the fix; anything else is a bug and
keeps its traceback. Each room defines its own subclass (ConfigError, CheckpointError, SamplingError, …).
"""


class UserError(ValueError):
    """A problem in what the user gave us; the message says what is wrong and how to fix it."""
