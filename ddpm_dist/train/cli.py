"""``python -m ddpm_dist.train --config configs/cifar.yaml [--dry-run] [key=value ...]``.

User errors (``errors.UserError``: config, data, checkpoint, ...; and ``OSError``) end with one line on stderr and
exit status 2, no traceback (``cli_util.run_main``). Under ``launch/run_8p.sh`` each worker also records its exit
status and that line for the launcher (``reports_exit``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ..cli_util import Parser, reports_exit, run_main
from ..config import load_config, to_yaml
from ..device import prepare_env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="python -m ddpm_dist.train", description="Train a DDPM (data-parallel).")
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true", help="keep MindSpore's own warnings (GLOG_v=2)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.ch=64")
    return parser.parse_args(argv)


@reports_exit
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: _load_and_run(args))


def _load_and_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    return run(cfg, verbose=args.verbose)


def run(cfg, *, verbose: bool = False, wrap_data: Callable | None = None, on_done: Callable | None = None) -> int:
    """Set up the device and the process group, then train; return the exit status (``cli_util.run_main``: a user
    error, e.g. a bad data set or checkpoint, a full disk or the non-finite loss stop, is one line and status 2).

    Test workers use the hooks: ``wrap_data(iterable) -> iterable`` alters the batch stream (e.g. injects a
    non-finite value); ``on_done(trainer)`` inspects the trainer after training.
    """
    prepare_env(verbose=verbose)
    from .trainer import ReplicasDrifted

    return run_main(lambda: _train(cfg, wrap_data=wrap_data, on_done=on_done), one_line_faults=(ReplicasDrifted,))


def _train(cfg, *, wrap_data: Callable | None, on_done: Callable | None) -> int:
    from .. import parallel
    from ..device import setup_device
    from .trainer import Trainer

    trainer = None
    try:
        device = setup_device(cfg.run.device, mode=cfg.run.mode)
        parallel.init()
        _compile_cache(cfg, world_size=parallel.world_size(), device=device)

        trainer = Trainer(cfg, device=device)
        if wrap_data is not None:
            trainer.data = wrap_data(trainer.data)
        trainer.train()
        if on_done is not None:
            on_done(trainer)
    finally:
        if trainer is not None:
            trainer.tb.close()  # never raises: a full disk is the one line of run_main, not a traceback at exit
    return 0


def _compile_cache(cfg, *, world_size: int, device: str) -> None:
    """Turn on MindSpore's compile cache in its keyed directory (``compile_cache.py``), before anything compiles."""
    from ..restarts import newest_checkpoint_step
    from .compile_cache import cache_dir, enable

    start = newest_checkpoint_step(cfg.run.out_dir) if cfg.train.resume == "auto" else cfg.train.resume
    enable(cache_dir(cfg, world_size=world_size, device=device, start_step=start))
