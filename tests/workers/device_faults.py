"""Worker for the device self-check tests: trains like ``python -m ddpm_dist.train`` with one device fault emulated.

usage: device_faults.py FAULT --config CONFIG [key=value ...]

FAULT:
- ``always_finite``: the train step's overflow detector says "finite" whatever the gradients (a detector that cannot
  see overflows, as the norm cannot on a saturating device);
- ``broken_hash``: the keyed-noise hash disagrees with its numpy specification in one bit (a device whose int32
  kernels do not wrap as the hash needs);
- ``drift_at_save``: at its first checkpoint the last rank's first weight moves by 1e-3 (in the graph, as a real
  drift would), just before the cross-rank comparison.
Runs under msrun or as a single process.
"""

import sys

import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from ddpm_dist.config import load_config
from ddpm_dist.train.cli import run


def always_finite(self, grads):
    norm = self.global_norm(grads)
    return norm, Tensor(True, ms.bool_)


class Nudge(nn.Cell):
    def __init__(self, params):
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)

    def construct(self):
        return ops.assign_add(self.params[0], ops.ones_like(self.params[0]) * 1e-3)


def main() -> int:
    fault = sys.argv[1]
    args = sys.argv[2:]
    cfg = load_config(args[1], args[2:])
    if fault == "always_finite":
        from ddpm_dist.train import overflow

        overflow.FiniteCheck.construct = always_finite
    elif fault == "broken_hash":
        from ddpm_dist.diffusion import keyed_noise

        spec = keyed_noise.keyed_noise_words

        def flipped(*a, **k):
            words = spec(*a, **k)
            words.flat[0] ^= 1
            return words

        keyed_noise.keyed_noise_words = flipped
    elif fault == "drift_at_save":
        from ddpm_dist import parallel
        from ddpm_dist.train import trainer

        save = trainer.Trainer.save

        def drifting_save(self):
            if parallel.rank() == parallel.world_size() - 1 and not getattr(self, "_nudged", False):
                self._nudged = True
                Nudge(self.net.trainable_params()[:1])()
            return save(self)

        trainer.Trainer.save = drifting_save
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
