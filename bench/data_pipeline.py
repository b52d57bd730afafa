"""Images/s of the training input pipeline alone (no model), printed as JSON.

    python bench/data_pipeline.py [--batch 128] [--steps 100] [--workers 2] [--cifar-count 20000]

Data sets: the embedded digits (16x16x1; skipped without scikit-learn) and a synthetic CIFAR-size set (32x32x3,
random pixels), converted into a temporary directory. For each: ``pipeline`` is TrainData end to end (MindRecord read,
decode, flip, t and noise; one rank with the whole batch), ``read_only`` the MindDataset read + batch stage alone.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time

from benchlib import result_json

from ddpm_dist.cli_util import run_main


def measure(it, steps: int, batch: int) -> dict:
    start = time.perf_counter()
    next(it)  # start-up: MindSpore import on first use, the first MindDataset, the first batch
    first = time.perf_counter()
    for _ in itertools.islice(it, steps):
        pass
    end = time.perf_counter()
    return {"images_per_s": round(steps * batch / (end - first), 1), "first_batch_s": round(first - start, 3)}


def bench_set(path: str, *, size: int, channels: int, batch: int, steps: int, workers: int) -> dict:
    import mindspore.dataset as ds
    import numpy as np

    from ddpm_dist.data.pipeline import TrainData

    td = TrainData(
        path=path,
        global_batch=batch,
        rank=0,
        world_size=1,
        seed=0,
        timesteps=1000,
        random_flip=True,
        image_size=size,
        channels=channels,
        num_parallel_workers=workers,
    )
    result = {"image_size": size, "channels": channels, "num_samples": td.num_samples, "batch": batch}
    result["pipeline"] = measure(iter(td), steps, batch)

    def read_only():
        while True:
            order = np.random.default_rng(0).permutation(td.num_samples).tolist()
            dataset = ds.MindDataset(
                td.files, columns_list=["image", "index"], sampler=ds.SubsetSampler(order), num_parallel_workers=workers
            ).batch(batch, drop_remainder=True)
            yield from dataset.create_tuple_iterator(output_numpy=True, num_epochs=1, do_copy=False)

    result["read_only"] = measure(read_only(), steps, batch)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="images/s of the data pipeline alone")
    p.add_argument("--batch", type=int, default=128, help="per-rank batch")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="data.num_parallel_workers")
    p.add_argument("--cifar-count", type=int, default=20000, help="images in the synthetic CIFAR-size set")
    args = p.parse_args(argv)
    return run_main(lambda: run(args), quiet_mindspore=True)


def run(args) -> int:
    """Measure both data sets and print the JSON document; 0."""
    import numpy as np

    from ddpm_dist.data import DataError
    from ddpm_dist.data.convert import convert, write_arrays

    report = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "batch": args.batch,
        "steps": args.steps,
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            convert(source="digits", input_path=None, output=os.path.join(tmp, "digits"))
            report["digits"] = bench_set(
                os.path.join(tmp, "digits"),
                size=16,
                channels=1,
                batch=args.batch,
                steps=args.steps,
                workers=args.workers,
            )
        except DataError as err:  # no scikit-learn
            report["digits"] = {"skipped": str(err)}
        images = np.random.default_rng(0).integers(0, 256, (args.cifar_count, 32, 32, 3), dtype=np.uint8)
        write_arrays(os.path.join(tmp, "cifar"), images, source="synthetic")
        report["cifar_synthetic"] = bench_set(
            os.path.join(tmp, "cifar"), size=32, channels=3, batch=args.batch, steps=args.steps, workers=args.workers
        )
    print(result_json(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
