"""Choices and defaults shared by the library and the command line, in a module without torch (``gmdm --help``
stays fast): the command line's options take their choices and defaults from here, the library's functions and
classes too."""

from .kinds import KINDS

NOISE_MODELS = ("auto", "constant", "nlf", "map")
"""Blind noise models (:mod:`gmdm_cli.blind`): ``auto`` chooses one of the others by likelihood."""
METHODS = ("ebpa", "hqs")
"""Denoisers: empirical-Bayes patch averaging, half-quadratic splitting."""
BOUNDARIES = ("valid", "reflect")
"""Patches inside the image only, or the image mirrored first."""
COLOUR_SPACES = ("rgb", "opponent")
"""Where colour images are denoised (:mod:`gmdm_cli.colour`); the first is the default."""
ESTIMATORS = ("auto", "flat", "quiet", "mean-energy")
"""Global noise estimators (:mod:`gmdm_cli.noise`); ``auto`` combines two of the others."""
RAW_ESTIMATORS = ESTIMATORS[1:]
DEVICES = ("auto", "cpu", "cuda")
MODEL_TYPES = tuple(KINDS)
"""The kinds of model ``gmdm train`` trains (:data:`gmdm_cli.kinds.KINDS`)."""
LOSSES = ("norm", "squared", "noise")
"""Forms of the denoising score-matching loss (Eq. 4)."""
OPTIMIZERS = ("adam", "ipalm")
DOWNSAMPLERS = ("box", "bicubic")
"""How an image to upscale was made smaller (:func:`gmdm_cli.restoration.downsampling_matrix`)."""

TRAINING = {"patch_size": 7, "steps": 100_000, "batch_size": 3200, "learning_rate": 1e-2, "sigma_max": 0.4,
            "seed": 0, "loss": "norm", "optimizer": "adam", "model_type": "patch", "bands": 8}
"""Defaults of a training run (:class:`gmdm_cli.training.TrainingConfig` and ``gmdm train``)."""
