"""Interoperability with other frameworks' model formats (numpy only here; see :mod:`ddpm_dist.interop.diffusers`)."""
