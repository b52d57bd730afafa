"""Worker for the error-exit tests: trains like ``python -m ddpm_dist.train``, but the data read of batch STEP fails
with an I/O error (as a read from dead shared storage does), which the CLI reports as one line and exit 2.

usage: fail_at_step.py STEP --config CONFIG [key=value ...]
"""

import errno
import sys

from ddpm_dist.config import load_config
from ddpm_dist.train.cli import run


def main() -> int:
    fail_step = int(sys.argv[1])
    args = sys.argv[2:]
    cfg = load_config(args[1], args[2:])

    def wrap(batches):
        for step, batch in enumerate(batches, start=1):
            if step == fail_step:
                raise OSError(errno.EIO, f"Input/output error (injected by fail_at_step at step {step})")
            yield batch

    return run(cfg, wrap_data=wrap)


if __name__ == "__main__":
    sys.exit(main())
