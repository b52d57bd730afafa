"""msrun worker for the restart and hang tests: trains like ``python -m ddpm_dist.train``, with one fault injected
by the environment (test-only; the package itself has no fault switch):

    DDPM_TEST_FAULT=kill:RANK:STEP     global rank RANK SIGKILLs itself when it draws the batch of global step STEP
    DDPM_TEST_FAULT=stall:RANK:STEP    ... sleeps there instead (alive, no progress: a read stuck on dead storage)
    DDPM_TEST_FAULT_ONCE=PATH          inject only if PATH does not exist yet, and create it (one fault per run)

"Global step" is the trainer's own (a resumed run meets the same step again), so a fault without _ONCE recurs on
every restart: a crash loop.

usage: fault_at_step.py --config CONFIG [key=value ...]
"""

import os
import signal
import sys
import time

from ddpm_dist.cli_util import reports_exit
from ddpm_dist.config import load_config
from ddpm_dist.train import trainer as trainer_module
from ddpm_dist.train.cli import run

TRAINERS = []


@reports_exit  # under the launcher: the exit record, as python -m ddpm_dist.train writes it
def main() -> int:
    kind, rank, step = os.environ["DDPM_TEST_FAULT"].split(":")
    rank, step = int(rank), int(step)
    once = os.environ.get("DDPM_TEST_FAULT_ONCE")
    cfg = load_config(sys.argv[2], sys.argv[3:])

    original = trainer_module.Trainer.train

    def train(self):  # the trainer's step counter tells the global step of the next batch
        TRAINERS.append(self)
        return original(self)

    trainer_module.Trainer.train = train

    def wrap(batches):
        from ddpm_dist import parallel

        for batch in batches:
            next_step = TRAINERS[-1].step + 1
            if next_step == step and parallel.rank() == rank and not (once and os.path.exists(once)):
                if once:
                    open(once, "w").close()
                print(f"fault_at_step: rank {rank} (pid {os.getpid()}) {kind} at step {step}", flush=True)
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                while True:  # stall: alive, never progressing
                    time.sleep(3600)
            yield batch

    return run(cfg, wrap_data=wrap)


if __name__ == "__main__":
    sys.exit(main())
