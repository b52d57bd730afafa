"""The PyTorch peer on the quickstart's data, for a wall-clock budget, scored with the same digits metric.

    python bench/peer_digits.py --data data/digits                  # 600 s budget, 2 x 1000 DDIM-100 samples
    python bench/peer_digits.py --data data/digits --budget 0 --steps 874

The peer is what a PyTorch user would run on this data set: lucidrains' denoising-diffusion-pytorch (``pip install
denoising-diffusion-pytorch``, optional, never used by the framework) with the settings its README and ``Trainer``
use by default - ``Unet(dim=32, dim_mults=(1, 2, 2), channels=1)``, ``GaussianDiffusion`` with v-prediction and the
sigmoid beta schedule, 1000 steps, Adam (lr ``--lr``, betas 0.9/0.99), gradient-norm clip 1.0, EMA 0.995 updated
every 10 steps after step 100 (``ema_pytorch.EMA``), fp32 - on the images of a prepared quickstart data set
(``tools/prepare_data.py --source digits --upsample nearest``), batch ``--batch``, without horizontal flips (digits
are not mirror-symmetric; the same as the quickstart). The training loop is written here instead of using its
``Trainer`` only because that one reads an image folder; the step it runs is the same.

1. The clock starts when this script starts (PyTorch import, data, model: start-up counts, as in
   ``bench/time_to_quality.py``); training runs until ``--budget`` seconds have passed (or ``--steps`` steps).
2. ``--num-samples`` images for each of ``--seeds`` from the EMA model with its own DDIM sampler (``--sample-steps``).
3. The digits metric (ddpm_dist/eval/digits.py) against the data set's training images and the held-out digits.

Prints one JSON object. ``bench/time_to_quality.py --peer`` runs this in a child process after the quickstart and
reports both side by side. Errors print one line, ``error: <message>``, on stderr and exit non-zero.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from benchlib import BenchError, result_json, score_both, seed_means  # noqa: E402

from ddpm_dist.cli_util import run_main  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a prepared quickstart data set (prepare_data.py --source digits)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds from start to the end of training (0: none)")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: only the budget)")
    p.add_argument("--batch", type=int, default=64, help="batch (default 64, the quickstart's global batch)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    p.add_argument("--dim", type=int, default=32, help="Unet dim (default 32)")
    p.add_argument("--dim-mults", default="1,2,2", help="Unet dim_mults (default 1,2,2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per seed (default 1000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps (default 100)")
    p.add_argument("--sample-batch", type=int, default=250, help="sampler batch (default 250)")
    p.add_argument("--train-seed", type=int, default=0, help="seed of initialisation and batches (default 0)")
    args = p.parse_args(argv)
    if args.budget <= 0 and args.steps <= 0:
        p.error("give a --budget or --steps")
    try:
        args.dim_mults = tuple(int(m) for m in args.dim_mults.split(","))
    except ValueError:
        p.error(f"--dim-mults must be integers separated by commas, e.g. 1,2,2 (got {args.dim_mults!r})")
    if not args.dim_mults or min(args.dim_mults) < 1:
        p.error(f"--dim-mults must be positive integers (got {args.dim_mults})")
    for name in ("batch", "num_samples", "sample_steps", "sample_batch", "threads", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    return args


class PeerError(RuntimeError):
    """The peer cannot run (not installed, bad data); the message is one line."""


def _import_peer():
    os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's sampler draws a progress bar per batch on stderr
    try:
        import torch
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA
    except ImportError as err:
        raise PeerError(
            f"the peer needs torch and denoising-diffusion-pytorch ({err}); pip install -e '.[peers]'"
        ) from None
    return torch, GaussianDiffusion, Unet, EMA


def train(args, images: np.ndarray) -> tuple[object, dict]:
    """Train the peer on uint8 [N, H, W] images; return (EMA wrapper, what it reached)."""
    torch, GaussianDiffusion, Unet, EMA = _import_peer()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.train_seed)
    net = Unet(dim=args.dim, dim_mults=args.dim_mults, channels=1)
    diffusion = GaussianDiffusion(net, image_size=images.shape[1], timesteps=1000, sampling_timesteps=args.sample_steps)
    opt = torch.optim.Adam(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10)
    data = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N, 1, H, W] in [0, 1]
    rng = np.random.default_rng(args.train_seed)
    order, pos, step, first_step_s = rng.permutation(len(data)), 0, 0, None
    t_train = time.perf_counter()
    while True:
        if pos + args.batch > len(order):
            order, pos = rng.permutation(len(data)), 0
        batch = data[torch.from_numpy(order[pos : pos + args.batch])]
        pos += args.batch
        loss = diffusion(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.update()
        step += 1
        if first_step_s is None:
            first_step_s = time.perf_counter() - T_START
        elapsed = time.perf_counter() - T_START
        if (args.steps and step >= args.steps) or (args.budget and elapsed >= args.budget):
            break
    train_s = time.perf_counter() - t_train
    reached = {
        "steps": step,
        "wall_s": round(time.perf_counter() - T_START, 1),
        "first_step_s": round(first_step_s, 2),
        "images_per_s": round(step * args.batch / train_s, 2),
        "params": sum(p.numel() for p in net.parameters()),
        "final_loss": round(float(loss.detach()), 5),
    }
    return ema, reached


def sample(args, ema, seed: int) -> tuple[np.ndarray, float]:
    import torch

    model = ema.ema_model.eval()
    torch.manual_seed(seed)
    t0, out = time.perf_counter(), []
    with torch.no_grad():
        for start in range(0, args.num_samples, args.sample_batch):
            n = min(args.sample_batch, args.num_samples - start)
            x = model.sample(batch_size=n)  # [n, 1, H, W] in [0, 1]
            out.append(np.clip(np.rint(x[:, 0].numpy() * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(out), time.perf_counter() - t0


def run(args) -> dict:
    from ddpm_dist.eval.digits import PROTOCOL, resolve_reference

    images = np.asarray(resolve_reference(str(Path(args.data).absolute())))
    if images.ndim == 4:
        images = images[..., 0]
    ema, reached = train(args, images)
    seeds = []
    for seed in args.seeds:
        samples, wall = sample(args, ema, seed)
        seeds.append({"seed": seed, "sample_wall_s": round(wall, 1), **score_both(samples, images)})
    import torch

    return {
        "peer": f"denoising-diffusion-pytorch {_version()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "budget_s": args.budget,
        "batch": args.batch,
        "lr": args.lr,
        "train": reached,
        "sampler": f"ddim-{args.sample_steps}",
        "num_samples": args.num_samples,
        "seeds": seeds,
        "mean": seed_means(seeds),
        "total_wall_s": round(time.perf_counter() - T_START, 1),
        "protocol": PROTOCOL,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("denoising-diffusion-pytorch")


def main(argv=None) -> int:
    args = parse_args(argv)
    from ddpm_dist.eval import EvalError

    return run_main(lambda: print(result_json(run(args))), one_line_faults=(BenchError, PeerError, EvalError))


if __name__ == "__main__":
    sys.exit(main())
