"""ddpm-dist: data-parallel DDPM training on MindSpore.

Importing the package does not import MindSpore and does not touch the environment; entry points call
:func:`ddpm_dist.device.prepare_env` first, then import what they need.
"""

__version__ = "0.1.0"
