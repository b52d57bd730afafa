"""msrun worker for the fault tests: trains like ``python -m ddpm_dist.train``, but global rank RANK kills itself
with SIGKILL (no clean-up, no exit handler: like the OOM killer or a lost machine) when batch STEP is drawn.

usage: die_at_step.py STEP RANK --config CONFIG [key=value ...]
"""

import os
import signal
import sys

from ddpm_dist.config import load_config
from ddpm_dist.train.cli import run


def main() -> int:
    die_step, die_rank = int(sys.argv[1]), int(sys.argv[2])
    args = sys.argv[3:]
    cfg = load_config(args[1], args[2:])

    def wrap(batches):
        from ddpm_dist import parallel

        for step, batch in enumerate(batches, start=1):
            if step == die_step and parallel.rank() == die_rank:
                print(f"die_at_step: rank {die_rank} (pid {os.getpid()}) kills itself at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

    return run(cfg, wrap_data=wrap)


if __name__ == "__main__":
    sys.exit(main())
