"""The names a user may choose from, listed once; imports nothing (the CLIs build their flags before MindSpore).

``SAMPLERS`` are the samplers of ``diffusion/sampling.py`` (``run.sampler``, ``eval.sampler``, ``tools/sample.py
--sampler``); ``DEVICES`` the device targets in the order ``auto`` tries them (``device.py``), and ``DEVICE_CHOICES``
what ``run.device`` and every ``--device`` flag accept.
"""

from __future__ import annotations

SAMPLERS = ("ddpm", "ddim", "dpm++2m")  # ancestral DDPM, DDIM, DPM-Solver++(2M)
DEVICES = ("Ascend", "GPU", "CPU")  # auto's order of preference; CPU is always there
DEVICE_CHOICES = ("auto", *DEVICES)
