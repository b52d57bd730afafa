"""Install ddpm-dist: `pip install -e .` (add `[dev]` for tests and lint, `[quickstart]` for the digits data set)."""

from setuptools import find_packages, setup

setup(
    name="ddpm-dist",
    version="0.1.0",
    description="Data-parallel DDPM training on MindSpore (Ascend, GPU, CPU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ddpm_dist", "ddpm_dist.*"]),
    install_requires=[
        "mindspore>=2.3",
        "numpy>=1.25,<2",
        "pyyaml",
        "omegaconf>=2.3",
        "tensorboardX",
        "tqdm",
        "pillow",
        "safetensors",
        "scipy",
        "lmdb",  # tools/prepare_data.py --source lsun (imported only there)
    ],
    extras_require={
        # scikit-learn: the embedded digits; tensorboard: the README's `tensorboard --logdir runs` after the quickstart
        "quickstart": ["scikit-learn", "tensorboard"],
        # tools/convert_inception.py reads pytorch-fid's weights file with PyTorch (any build; conversion only)
        "convert": ["torch"],
        # tests/test_eval.py compares the Inception port with pytorch-fid's own network, tests/test_interop.py the
        # U-Net and samplers with diffusers' own, when these are installed
        "parity": ["torch", "torchvision", "pytorch-fid", "diffusers==0.42.1"],
        # bench/unet_speed.py and bench/peer_digits.py measure against the PyTorch tools people already use
        "peers": ["torch", "diffusers==0.42.1", "denoising-diffusion-pytorch==2.3.4"],
        "dev": ["pytest>=7", "pytest-xdist", "ruff", "tensorboard", "scikit-learn"],
    },
    entry_points={"console_scripts": ["ddpm-train=ddpm_dist.train.cli:main"]},
)
