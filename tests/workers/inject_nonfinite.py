"""Worker for the non-finite tests: trains like ``python -m ddpm_dist.train`` but puts an inf into the last rank's
batch at step STEP (or at every step from STEP on, with ``STEP+``), then writes this rank's final weights fingerprint
and optimizer step next to the run. Runs under msrun or as a single process.

usage: inject_nonfinite.py STEP[+] --config CONFIG [key=value ...]
"""

import sys
from pathlib import Path

import numpy as np

from ddpm_dist.cli_util import reports_exit
from ddpm_dist.config import load_config
from ddpm_dist.train.cli import run


@reports_exit  # under the launcher: the exit record, as python -m ddpm_dist.train writes it
def main() -> int:
    bad_step = int(sys.argv[1].rstrip("+"))
    onwards = sys.argv[1].endswith("+")
    args = sys.argv[2:]
    cfg = load_config(args[1], args[2:])

    def wrap(batches):
        from ddpm_dist import parallel

        for step, (x0, t, noise) in enumerate(batches, start=1):
            hit = step >= bad_step if onwards else step == bad_step
            if hit and parallel.rank() == parallel.world_size() - 1:
                x0 = x0.copy()
                x0[0, 0, 0, 0] = np.inf
            yield x0, t, noise

    holder = {}

    def keep(trainer):
        holder["trainer"] = trainer

    code = run(cfg, wrap_data=wrap, on_done=keep)
    if code:
        return code
    from ddpm_dist import parallel
    from ddpm_dist.train.trainer import weight_fingerprint

    trainer = holder["trainer"]
    out = Path(cfg.run.out_dir) / f"rank{parallel.rank()}.npz"
    np.savez(
        out,
        fingerprint=weight_fingerprint(trainer.net.trainable_params()),
        ema=weight_fingerprint(trainer.ema.ema_params),
        global_step=trainer.optimizer.global_step.asnumpy(),
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
