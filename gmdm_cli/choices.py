"""Choices shared by the library and the command line, in a module without torch (``gmdm --help`` stays fast)."""

NOISE_MODELS = ("auto", "constant", "nlf", "map")
"""Blind noise models (:mod:`gmdm_cli.blind`): ``auto`` chooses one of the others by likelihood."""
