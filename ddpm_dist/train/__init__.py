"""Training: mixed precision (amp), EMA, optimizer schedule, the compiled step, the host loop and the CLI.

Run with ``python -m ddpm_dist.train --config CONFIG [key=value ...]`` (or through launch/*.sh). Importing this
package imports no MindSpore; the submodules do.
"""
