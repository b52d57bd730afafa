"""The paper's 256x256 recipes (configs/celebahq256.yaml, lsun_church256.yaml, lsun_bedroom256.yaml): their settings,
the U-Net's parameter count and key layout against diffusers' ``UNet2DModel`` in google/ddpm-church-256's
configuration (built locally, never downloaded), import and export with output parity on that configuration's
reduced-width twin, and a two-step training run of each recipe on generated 256x256 images.

The reduced-width twin (block widths 32, 32, 64, 64, 128, 128 instead of 128, 128, 256, 256, 512, 512, still
256x256) keeps everything the translation depends on: six levels, two res blocks per level, attention at the 16x16
level only (down level 4, up level 1), 32 groups dividing every width, the mid block, so its diffusers keys are the
full model's keys with narrower tensors. The full model's keys and shapes are compared separately, without weights.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import yaml
from interop_helpers import (
    arrays_and_meta,
    assert_eps_parity,
    forward,
    needs_diffusers,
    no_data,
    random_weights,
    reference,
)
from mindspore import Tensor
from train_helpers import ROOT, env, run_train

from ddpm_dist import checkpoint
from ddpm_dist.checkpoint.convert import load_for_sampling, write_inference
from ddpm_dist.config import load_config, to_dict
from ddpm_dist.interop import diffusers as fmt
from ddpm_dist.interop.transfer import export_diffusers, import_diffusers
from ddpm_dist.models import build_model

RECIPES = ("celebahq256", "lsun_church256", "lsun_bedroom256")
PAPER_PARAMETERS = 113_673_219  # "114 million" in the paper's Appendix B; diffusers' count of google/ddpm-church-256
# google/ddpm-church-256's unet/config.json settings (the architecture keys; the rest are UNet2DModel's defaults)
CHURCH_256 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}  # fmt: skip


def recipe(name: str, *overrides: str):
    return load_config(str(ROOT / "configs" / f"{name}.yaml"), list(overrides))


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


# --------------------------------------------------------------------------------------- the settings (no torch)
@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_holds_the_papers_256_settings(name):
    cfg = to_dict(recipe(name))
    assert cfg["model"] == {"arch": "ddpm_unet", "ch": 128, "ch_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2,
                            "attn_resolutions": [16], "dropout": 0.0, "resamp_with_conv": True, "norm_groups": 32,
                            "norm_eps": 1e-6, "convnext_mult": 2, "recompute": False, "num_classes": 0}  # fmt: skip
    d, t = cfg["diffusion"], cfg["train"]
    assert (d["timesteps"], d["beta_schedule"], d["beta_start"], d["beta_end"]) == (1000, "linear", 1e-4, 0.02)
    assert (d["objective"], d["loss_type"], d["loss_weight"], d["var_type"]) == ("eps", "mse", "none", "fixedsmall")
    assert (t["global_batch"], t["grad_accum"], t["lr"], t["warmup_steps"], t["lr_decay"]) == (64, 1, 2e-5, 5000,
                                                                                                "none")  # fmt: skip
    assert (t["grad_clip"], t["ema_decay"], t["ema_warmup"], t["weight_decay"]) == (1.0, 0.9999, False, 0.0)
    paper = {"celebahq256": (500_000, True), "lsun_church256": (1_200_000, True), "lsun_bedroom256": (2_400_000, False)}
    assert (t["total_steps"], cfg["data"]["random_flip"]) == paper[name]  # Appendix B: flips except LSUN bedroom
    assert (cfg["data"]["image_size"], cfg["data"]["channels"]) == (256, 3)
    assert cfg["data"]["path"] == f"data/{name}" and cfg["run"]["out_dir"] == f"runs/{name}"


@pytest.mark.parametrize("name", RECIPES)
def test_the_header_prepares_the_recipes_data_set(name):
    """The 'Prepare the data first:' command in the header writes data.path at 256x256 from the right source."""
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    line = next(line for line in text.splitlines() if "Prepare the data first:" in line)
    argv = shlex.split(line.split("Prepare the data first:", 1)[1])
    assert argv[:2] == ["python", "tools/prepare_data.py"]
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    source = {"celebahq256": "folder", "lsun_church256": "lsun", "lsun_bedroom256": "lsun"}[name]
    lmdb = {"lsun_church256": "church_outdoor_train_lmdb", "lsun_bedroom256": "bedroom_train_lmdb"}
    assert opts["--source"] == source and opts["--output"] == recipe(name).data.path
    assert opts["--image-size"] == "256" and opts["--input"] == lmdb.get(name, opts["--input"])


def test_the_recipes_model_is_google_ddpm_church_256_both_ways():
    """import: google/ddpm-church-256's config.json -> exactly the recipes' model section; export: the recipe ->
    the same architecture keys (6 levels, attention at down level 4 / up level 1 only)."""
    model, data, flip = fmt.unet_sections(CHURCH_256, source="config.json")
    for name in RECIPES:
        sections = to_dict(recipe(name))
        assert model == {k: v for k, v in sections["model"].items() if k not in ("convnext_mult", "recompute")}, name
        assert data == {"image_size": 256, "channels": 3} and not flip
        exported = fmt.unet_config(sections["model"], sections["data"])
        assert {k: exported[k] for k in CHURCH_256 if k in exported} == {
            k: v for k, v in CHURCH_256.items() if k in exported
        }


# ----------------------------------------------------------------------- parameter count and keys against diffusers
@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """(our parameter shapes, diffusers' UNet2DModel state_dict shapes) of the full 256x256 U-Net, each built once."""
    tmp = tmp_path_factory.mktemp("full")
    models = [to_dict(recipe(name))["model"] for name in RECIPES]
    assert models[0] == models[1] == models[2]  # one network for the three recipes: build it once
    ours = {p.name: tuple(p.shape) for p in build_model(recipe(RECIPES[0])).trainable_params()}
    reference(tmp, [{"task": "shapes", "preset": "church256", "out": str(tmp / "shapes.json")}])
    theirs = {k: tuple(v) for k, v in json.loads((tmp / "shapes.json").read_text()).items()}
    return ours, theirs


@needs_diffusers
def test_the_256_unet_has_diffusers_parameter_count_and_keys(full_size):
    ours, theirs = full_size
    assert sum(int(np.prod(s)) for s in ours.values()) == PAPER_PARAMETERS
    assert sum(int(np.prod(s)) for s in theirs.values()) == PAPER_PARAMETERS
    mapped = {}
    for name, shape in ours.items():
        key = fmt.diffusers_key(name, num_res_blocks=2)
        mapped[key] = shape[:2] if fmt._is_linear_attn(key) else shape  # 1x1 conv here, Linear there
    assert mapped == theirs  # every tensor, one to one, same shape
    # 6 attention blocks (down level 4: 2, up level 1: 3, mid: 1) of 10 tensors each (norm, q, k, v, out; w + b)
    assert sum(".attentions." in k for k in theirs) == 6 * 10


# -------------------------------------------------------------------- parity on the reduced-width twin (slow)
@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """One diffusers worker run: a random church256_ch32 pipeline made by diffusers (imported here), and diffusers'
    eps of our own random recipe network at that width (exported here)."""
    tmp = tmp_path_factory.mktemp("twin")
    cfg = no_data(recipe("lsun_church256", "model.ch=32"))
    ours = write_inference(tmp / "ours.ckpt", random_weights(cfg, seed=4), cfg, weights="ema", step=0, source="test")
    export_diffusers(ours, tmp / "exported")
    x = np.random.default_rng(6).standard_normal((2, 3, 256, 256)).astype(np.float32)
    np.savez(tmp / "inputs.npz", x=x, t=np.array([7, 999]))
    reference(tmp, [
        {"task": "make", "preset": "church256_ch32", "dir": str(tmp / "pipe"), "seed": 2, "ref": str(tmp / "made.npz")},
        {"task": "run", "dir": str(tmp / "exported"), "inputs": str(tmp / "inputs.npz"), "ref": str(tmp / "ran.npz")},
    ])  # fmt: skip
    import_diffusers(tmp / "pipe", tmp / "imported.ckpt")
    return tmp


@pytest.mark.slow
@needs_diffusers
def test_imported_256_twin_gives_diffusers_eps(twin):
    ref = np.load(twin / "made.npz")
    cfg, net, _ = load_for_sampling(twin / "imported.ckpt")
    expected = to_dict(recipe("lsun_church256", "model.ch=32"))["model"]
    assert to_dict(cfg)["model"] == expected and cfg.data.image_size == 256
    ours = forward(net, ref["x"], ref["t"])
    assert_eps_parity(ours, ref)
    assert_eps_parity(forward(net, ref["x"], ref["t"], train=True), dict(ref) | {"eps32": ref["eps32_train"]})
    print(f"import parity: max |ours - diffusers f32| = {np.abs(ours - ref['eps32']).max():.3g}, "
          f"max |eps| = {np.abs(ref['eps64']).max():.3g}")  # fmt: skip
    # the bound has teeth: the two up-level-1 attention blocks' weights swapped (a block numbering slip) miss it
    params = {p.name: p for p in net.get_parameters()}
    for leaf in ("q.weight", "k.weight", "v.weight", "proj_out.weight"):
        a, b = params[f"up_blocks.3.attn.{leaf}"], params[f"up_blocks.4.attn.{leaf}"]
        va, vb = a.asnumpy(), b.asnumpy()
        a.set_data(Tensor(vb))
        b.set_data(Tensor(va))
    wrong = forward(net, ref["x"], ref["t"])
    assert np.abs(wrong - ref["eps32"]).max() > 100 * 1e-4 * np.abs(ref["eps64"]).max()


@pytest.mark.slow
@needs_diffusers
def test_exported_256_twin_runs_in_diffusers_and_imports_back_bitwise(twin, tmp_path):
    ref = dict(np.load(twin / "ran.npz")) | {"t": np.array([7, 999])}
    x = np.load(twin / "inputs.npz")["x"]
    _, net, _ = load_for_sampling(twin / "ours.ckpt")
    ours = forward(net, x, ref["t"])
    assert_eps_parity(ours, ref)
    assert np.array_equal(ref["unet_eps32"], ref["eps32"])  # UNet2DModel.from_pretrained == the pipeline's unet
    assert ref["pipeline_images"].shape == (1, 256, 256, 3) and np.isfinite(ref["pipeline_images"]).all()
    assert json.loads(str(ref["scheduler"]))["variance_type"] == "fixed_small"  # the recipes' fixedsmall
    print(f"export parity: max |ours - diffusers f32| = {np.abs(ours - ref['eps32']).max():.3g}, "
          f"max |eps| = {np.abs(ref['eps64']).max():.3g}")  # fmt: skip
    _, back_cfg = import_diffusers(twin / "exported", tmp_path / "back.ckpt")
    before, _ = arrays_and_meta(twin / "ours.ckpt")
    after, _ = arrays_and_meta(tmp_path / "back.ckpt")
    assert sorted(before) == sorted(after) and all(np.array_equal(before[k], after[k]) for k in before)
    assert to_dict(back_cfg)["model"] == to_dict(recipe("lsun_church256", "model.ch=32"))["model"]


# ------------------------------------------------------------------ a two-step run of each recipe (slow)
@pytest.fixture(scope="module")
def images256(tmp_path_factory):
    """Six generated 256x256 RGB PNGs written as a MindRecord data set by tools/prepare_data.py --source folder."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("images256")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    (tmp / "png").mkdir()
    for i in range(6):
        a, b, c = rng.uniform(0, 1, 3)
        img = np.stack([a * xx + (1 - a) * yy, b * (1 - xx), c * yy * xx], axis=-1) * 255
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp / "png" / f"{i}.png")
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", "folder", "--input",
                          str(tmp / "png"), "--output", str(tmp / "data"), "--image-size", "256"],
                         env=env(), capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp / "data" / "manifest.json").read_text())["image_size"] == 256
    return tmp / "data"


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_a_two_step_run_of_each_recipe_saves_a_checkpoint(name, images256, tmp_path):
    """The recipe as written (batch, lr, warm-up, flips, eps 1e-6, EMA) at width 16 on 256x256 images, 2 steps.
    The church run also draws its last EMA grid at 256x256 (2 images, 2 DDIM steps; the recipe's 16 x 50 steps
    take minutes on a CPU); the others skip it (~25 s of CPU each)."""
    overrides = [f"data.path={images256}", f"run.out_dir={tmp_path / 'run'}", "model.ch=16", "train.global_batch=2",
                 "train.total_steps=2"]  # fmt: skip
    grid = name == "lsun_church256"
    overrides += ["run.num_samples=2", "run.sample_steps=2"] if grid else ["run.sample_every=0"]
    res = run_train("--config", str(ROOT / "configs" / f"{name}.yaml"), *overrides, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: step 2" in res.stdout, res.stdout
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == (
        ["ema_step_00000002.png"] if grid else []
    )
    stored = checkpoint.latest(tmp_path / "run" / "checkpoints")
    state = stored.arrays
    assert int(stored.meta["step"]) == 2
    assert yaml.safe_load(stored.meta["config"]) == to_dict(recipe(name, *overrides))
    assert state["conv_in.weight"].shape == (16, 3, 3, 3) and state["down_blocks.11.res.conv2.weight"].shape[0] == 64
    attn = sorted({k.split(".attn.")[0] for k in state if ".attn." in k and not k.startswith(("ema.", "moment"))})
    assert attn == ["down_blocks.8", "down_blocks.9", "up_blocks.3", "up_blocks.4", "up_blocks.5"]  # 16x16 only
    assert all(np.isfinite(v).all() for v in state.values())
