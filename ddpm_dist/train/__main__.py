"""Entry point for ``python -m ddpm_dist.train`` and for launchers that need a script path (msrun, mpirun)."""

import sys

from ddpm_dist.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
