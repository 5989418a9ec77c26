"""The errors a user can act on (torch-free, so that the command line can catch them without importing torch)."""


class GmdmError(ValueError):
    """A bad input, file or setting: the message is one line that names the file (or option) and says why.
    The command line prints it as ``Error: message`` and exits with status 1."""
