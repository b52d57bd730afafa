"""diffusers interop: ddpm-dist's U-Net and samplers against diffusers' own ``UNet2DModel``, ``DDPMScheduler`` and
``DDIMScheduler`` (run by tests/workers/diffusers_reference.py in its own process, so PyTorch and MindSpore never
share one), the export round trip, and the bad inputs of tools/import_weights.py and tools/export_weights.py.

The parity tests run when PyTorch and diffusers are installed (CI installs them); the config translation and
bad-input tests need neither.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
import yaml
from interop_helpers import (
    HAVE_DIFFUSERS,
    arrays_and_meta,
    assert_eps_parity,
    forward,
    needs_diffusers,
    no_data,
    random_weights,
    reference,
    run,
)
from mindspore import Tensor, nn
from safetensors.numpy import load_file, save_file
from train_helpers import ROOT, env

from ddpm_dist.checkpoint import CheckpointError
from ddpm_dist.checkpoint.convert import load_for_sampling, write_inference
from ddpm_dist.config import load_config, to_dict
from ddpm_dist.diffusion.sampling import DDIMStep, DDPMStep, sample_loop
from ddpm_dist.diffusion.schedule import make_schedule, respace
from ddpm_dist.interop import diffusers as fmt
from ddpm_dist.interop.transfer import export_diffusers, import_diffusers
from ddpm_dist.models import build_model, output_channels
from ddpm_dist.models.layers import GroupNorm32, norm_groups
from ddpm_dist.train.trainer import Trainer

IMPORT = str(ROOT / "tools" / "import_weights.py")
EXPORT = str(ROOT / "tools" / "export_weights.py")
SAMPLE = str(ROOT / "tools" / "sample.py")
# google/ddpm-cifar10-32's unet/config.json as published (no dropout/downsample_type keys: an older diffusers wrote it)
CIFAR10_32 = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


# ------------------------------------------------------------------------- the model options diffusers needs
def test_norm_groups_and_eps_reach_every_groupnorm():
    cfg = load_config(None, ["data.path=unused", "model.ch=16", "model.ch_mult=[1,3]", "model.attn_resolutions=[4]",
                             "model.norm_groups=8", "model.norm_eps=1e-6", "data.image_size=8"])  # fmt: skip
    norms = [c for _, c in build_model(cfg).cells_and_names() if isinstance(c, GroupNorm32)]
    assert len(norms) > 10 and all(n.eps == 1e-6 for n in norms)
    assert {(n.num_channels, n.num_groups) for n in norms} >= {(16, 8), (48, 8), (64, 8)}
    assert norm_groups(12, 8) == 4 and norm_groups(64, 32) == 32 and norm_groups(24, 24) == 24
    default = build_model(load_config(None, ["data.path=unused", "model.ch=32", "data.image_size=8",
                                             "model.ch_mult=[1,2]", "model.attn_resolutions=[4]"]))  # fmt: skip
    assert {(c.num_groups, c.eps) for _, c in default.cells_and_names() if isinstance(c, GroupNorm32)} == {(32, 1e-5)}


def test_a_checkpoint_from_before_the_norm_options_still_resumes():
    """Keys added to the model section later take their default when a checkpoint lacks them; a real difference
    is still refused."""
    cfg = load_config(None, ["data.path=unused"])
    old = to_dict(cfg)
    del old["model"]["norm_groups"], old["model"]["norm_eps"]
    trainer = SimpleNamespace(cfg=cfg)
    Trainer._check_compatible(trainer, Path("old.ckpt"), {"config": yaml.safe_dump(old)})
    old["model"]["norm_eps"] = 1e-6
    with pytest.raises(CheckpointError, match=r"model\.norm_eps"):
        Trainer._check_compatible(trainer, Path("old.ckpt"), {"config": yaml.safe_dump(old)})


# ------------------------------------------------------------------------------------------- configs (no torch)
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.ch=32", "model.ch_mult=[1,2,3]", "model.num_res_blocks=1", "model.attn_resolutions=[8,4]",
         "model.norm_groups=8", "model.norm_eps=1e-6", "model.dropout=0.0", "data.image_size=16", "data.channels=1",
         "diffusion.var_type=fixedsmall", "diffusion.objective=v", "diffusion.clip_x0=false",
         "diffusion.beta_schedule=cosine", "diffusion.timesteps=500"],
        ["model.attn_resolutions=[]", "diffusion.objective=x0", "diffusion.beta_start=2e-4", "diffusion.beta_end=0.01"],
        ["diffusion.var_type=learned_range", "data.channels=1"],
        ["model.num_classes=10"],
        ["model.num_classes=1", "diffusion.var_type=learned_range"],
    ],
)  # fmt: skip
def test_configs_translate_both_ways(overrides):
    loaded = load_config(None, ["data.path=unused", *overrides])
    cfg = to_dict(loaded)
    unet = fmt.unet_config(cfg["model"], cfg["data"], out_channels=output_channels(loaded))
    assert fmt.learns_variance(unet) == (cfg["diffusion"]["var_type"] == "learned_range")
    model, data, flip = fmt.unet_sections(json.loads(json.dumps(unet)), source="unet")
    # not in a diffusers config: the ConvNeXt U-Net's option and how training computes (model.recompute)
    assert model == {k: v for k, v in cfg["model"].items() if k not in ("convnext_mult", "recompute")}
    assert data == {"image_size": cfg["data"]["image_size"], "channels": cfg["data"]["channels"]} and not flip
    scheduler = fmt.scheduler_config(cfg["diffusion"])
    back = fmt.diffusion_section(json.loads(json.dumps(scheduler)), source="scheduler")
    training_only = ("loss_type", "loss_weight", "min_snr_gamma", "vlb_weight")  # a scheduler has no loss
    assert back == {k: v for k, v in cfg["diffusion"].items() if k not in training_only}
    fmt.check_variance_channels(unet, back, source="unet")
    classes = cfg["model"]["num_classes"]
    assert unet["num_class_embeds"] == (classes + 1 if classes else None) and unet["class_embed_type"] is None


def test_a_learned_variance_unet_needs_a_learned_range_scheduler_and_back():
    learned = CIFAR10_32 | {"out_channels": 6}
    fixed = fmt.diffusion_section({"variance_type": "fixed_large"}, source="s")
    with pytest.raises(fmt.InteropError, match="^config.json: out_channels 6 with in_channels 3 .* learned_range only"):
        fmt.check_variance_channels(learned, fixed, source="config.json")
    with pytest.raises(fmt.InteropError, match="out_channels 3 with in_channels 3"):
        fmt.check_variance_channels(CIFAR10_32, fmt.diffusion_section({"variance_type": "learned_range"}, source="s"),
                                    source="config.json")  # fmt: skip


def test_the_papers_cifar10_config_is_ddpm_dists_cifar_recipe():
    model, data, flip = fmt.unet_sections(CIFAR10_32, source="config.json")
    paper = load_config(str(ROOT / "configs" / "cifar.yaml"), ["data.path=unused"])
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv", "norm_groups"):
        assert model[key] == getattr(paper.model, key), key
    assert model["norm_eps"] == 1e-6 and not flip and data == {"image_size": 32, "channels": 3}
    assert fmt.diffusion_section(None, source="-")["var_type"] == "fixedsmall"  # DDPMScheduler's default


def test_every_parameter_has_its_own_diffusers_key():
    cfg = load_config(None, ["data.path=unused", "model.ch=16", "model.ch_mult=[1,2,2]", "model.num_res_blocks=2",
                             "model.attn_resolutions=[16,8]", "data.image_size=16"])  # fmt: skip
    names = [p.name for p in build_model(cfg).get_parameters()]
    keys = [fmt.diffusers_key(n, num_res_blocks=2) for n in names]
    assert len(set(keys)) == len(names)
    assert fmt.diffusers_key("up_blocks.4.res.shortcut.weight", num_res_blocks=2) == (
        "up_blocks.1.resnets.1.conv_shortcut.weight"
    )
    assert fmt.diffusers_key("down_blocks.3.attn.proj_out.bias", num_res_blocks=2) == (
        "down_blocks.1.attentions.1.to_out.0.bias"
    )


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("_class_name", "UNet2DConditionModel", "only diffusers' UNet2DModel"),
        ("freq_shift", 0, "freq_shift = 0"),
        ("attention_head_dim", 8, "attention_head_dim = 8"),
        ("downsample_padding", 1, "downsample_padding = 1"),
        ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
        ("time_embedding_type", "fourier", "time_embedding_type"),
        ("center_input_sample", True, "center_input_sample"),
        ("num_class_embeds", 1, "num_class_embeds = 1: ddpm-dist needs an int >= 2"),
        ("num_class_embeds", 10.0, "num_class_embeds = 10.0"),
        ("class_embed_type", "timestep", "class_embed_type = 'timestep'"),
        ("class_embed_type", "identity", "class_embed_type = 'identity'"),
        ("block_out_channels", [128, 192, 256, 256], "192 is not a multiple"),
        ("norm_num_groups", 24, "norm_num_groups = 24"),
        ("up_block_types", ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "does not mirror"),
        ("down_block_types", ["DownBlock2D", "SkipDownBlock2D", "DownBlock2D", "DownBlock2D"], "SkipDownBlock2D"),
        ("out_channels", 4, "out_channels 4 is neither in_channels 3 nor twice that"),
    ],
)
def test_unexpressible_unet_settings_are_refused_by_name(key, value, needle):
    with pytest.raises(fmt.InteropError, match="^config.json: ") as err:
        fmt.unet_sections(CIFAR10_32 | {key: value}, source="config.json")
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "key,value",
    [("variance_type", "learned"), ("beta_schedule", "scaled_linear"), ("thresholding", True),
     ("trained_betas", [0.1, 0.2]), ("prediction_type", "flow"), ("clip_sample_range", 2.0),
     ("_class_name", "EulerDiscreteScheduler")],
)  # fmt: skip
def test_unexpressible_scheduler_settings_are_refused_by_name(key, value):
    with pytest.raises(fmt.InteropError, match=key):
        fmt.diffusion_section({"_class_name": "DDPMScheduler", key: value}, source="scheduler_config.json")


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.arch=convnext_unet"], "only the DDPM U-Net"),
        (["model.resamp_with_conv=false"], "resamp_with_conv"),
        (["model.ch_mult=[2,2]", "data.image_size=16"], "ch_mult[0] = 2"),
        (["model.ch=48", "model.ch_mult=[1,2]", "data.image_size=16"], "norm_groups = 32 does not divide"),
    ],
)
def test_export_refuses_models_diffusers_cannot_express(overrides, needle):
    cfg = to_dict(load_config(None, ["data.path=unused", *overrides]))
    with pytest.raises(fmt.InteropError) as err:
        fmt.unet_config(cfg["model"], cfg["data"])
    assert needle in str(err.value)


# --------------------------------------------------------------------------------------- bad inputs (no torch)
def tiny_cfg(*extra: str):
    overrides = ["data.path=unused", "model.ch=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
                 "model.attn_resolutions=[4]", "model.norm_groups=8", "model.dropout=0.0", "data.image_size=8",
                 "data.channels=1", *extra]  # fmt: skip
    return no_data(load_config(None, overrides))


def diffusers_folder(path: Path, cfg, weights: dict) -> Path:
    """A diffusers model folder (config.json + safetensors), written without diffusers or PyTorch."""
    sections = to_dict(cfg)
    path.mkdir(parents=True)
    (path / fmt.CONFIG).write_text(json.dumps(fmt.unet_config(sections["model"], sections["data"])))
    save_file(fmt.to_diffusers(weights, num_res_blocks=cfg.model.num_res_blocks), str(path / fmt.SAFETENSORS))
    return path


def test_import_of_a_folder_written_without_diffusers(tmp_path):
    """The format's own round trip, exact: a model folder with cos-first embedding and old attention key names."""
    cfg = tiny_cfg()
    weights = random_weights(cfg)
    folder = diffusers_folder(tmp_path / "model", cfg, weights)
    config = json.loads((folder / fmt.CONFIG).read_text())
    tensors = load_file(str(folder / fmt.SAFETENSORS))
    w = tensors["time_embedding.linear_1.weight"]
    tensors["time_embedding.linear_1.weight"] = np.concatenate([w[:, 8:], w[:, :8]], axis=1)  # [cos, sin] inputs
    renamed = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in tensors.items()}
    save_file(renamed, str(folder / fmt.SAFETENSORS))
    (folder / fmt.CONFIG).write_text(json.dumps(config | {"flip_sin_to_cos": True}))
    out, imported = import_diffusers(folder, tmp_path / "m.safetensors")
    arrays, meta = arrays_and_meta(out)
    assert sorted(arrays) == sorted(weights) and all(np.array_equal(arrays[k], weights[k]) for k in weights)
    assert meta["kind"] == "ddpm-dist/inference" and meta["weights"] == "ema" and meta["source_format"] == "diffusers"
    assert to_dict(imported)["model"] == to_dict(cfg)["model"]


def test_num_class_embeds_n_is_n_minus_1_classes_and_the_last_row_is_no_label(tmp_path):
    """The convention both ways (docs/interop.md), exact, without diffusers: a conditional model folder of N = 4 rows
    imports as model.num_classes 3 with row 3 ("no label") = diffusers' last row; the export writes 4 rows back."""
    assert fmt.unet_sections(CIFAR10_32 | {"num_class_embeds": 11}, source="c")[0]["num_classes"] == 10
    assert fmt.unet_sections(CIFAR10_32, source="c")[0]["num_classes"] == 0
    cfg = tiny_cfg("model.num_classes=3")
    weights = random_weights(cfg)
    folder = diffusers_folder(tmp_path / "model", cfg, weights)
    config = json.loads((folder / fmt.CONFIG).read_text())
    assert (config["num_class_embeds"], config["class_embed_type"]) == (4, None)
    table = load_file(str(folder / fmt.SAFETENSORS))["class_embedding.weight"]
    assert table.shape == (4, 64) and np.array_equal(table, weights["class_embed.embedding_table"])
    out, imported = import_diffusers(folder, tmp_path / "m.safetensors")
    arrays, _ = arrays_and_meta(out)
    assert imported.model.num_classes == 3 and to_dict(imported)["model"] == to_dict(cfg)["model"]
    assert sorted(arrays) == sorted(weights) and all(np.array_equal(arrays[k], weights[k]) for k in weights)
    export_diffusers(out, tmp_path / "exported")
    again = load_file(str(tmp_path / "exported" / "unet" / fmt.SAFETENSORS))
    assert np.array_equal(again["class_embedding.weight"], table)
    assert json.loads((tmp_path / "exported" / "unet" / fmt.CONFIG).read_text())["num_class_embeds"] == 4
    # an unconditional export is unchanged: no class table, num_class_embeds null
    plain = to_dict(tiny_cfg())
    assert fmt.unet_config(plain["model"], plain["data"])["num_class_embeds"] is None


def test_a_class_table_without_num_class_embeds_is_refused(tmp_path):
    """Weights and config disagree: the table is named, nothing is written."""
    cfg = tiny_cfg("model.num_classes=3")
    folder = diffusers_folder(tmp_path / "model", cfg, random_weights(cfg))
    config = json.loads((folder / fmt.CONFIG).read_text())
    (folder / fmt.CONFIG).write_text(json.dumps(config | {"num_class_embeds": 6}))
    with pytest.raises(fmt.InteropError, match=r"class_embedding\.weight has shape \(4, 64\); the config needs \("):
        import_diffusers(folder, tmp_path / "a.ckpt")
    (folder / fmt.CONFIG).write_text(json.dumps(config | {"num_class_embeds": None}))
    with pytest.raises(fmt.InteropError, match="tensor class_embedding.weight .* is not part of the network"):
        import_diffusers(folder, tmp_path / "b.ckpt")
    assert not list(tmp_path.glob("*.ckpt"))


@pytest.mark.parametrize(
    "case",
    ["no_config", *(pytest.param(c, marks=pytest.mark.slow) for c in ("other_arch", "missing_tensor",
                                                                      "misshaped_tensor", "bin_no_torch",
                                                                      "extra_tensor", "bad_json"))],
)  # fmt: skip
def test_bad_imports_are_one_line_and_leave_nothing(case, tmp_path):
    cfg = tiny_cfg()
    folder = diffusers_folder(tmp_path / "model", cfg, random_weights(cfg))
    tensors = load_file(str(folder / fmt.SAFETENSORS))
    config = json.loads((folder / fmt.CONFIG).read_text())
    extra_env, needle = None, None
    if case == "no_config":
        (folder / fmt.CONFIG).unlink()
        needle = "no config.json"
    elif case == "other_arch":
        (folder / fmt.CONFIG).write_text(json.dumps(config | {"_class_name": "UNet2DConditionModel"}))
        needle = "only diffusers' UNet2DModel"
    elif case == "bad_json":
        (folder / fmt.CONFIG).write_text("{not json")
        needle = "not valid JSON"
    elif case == "missing_tensor":
        del tensors["mid_block.attentions.0.to_k.weight"]
        save_file(tensors, str(folder / fmt.SAFETENSORS))
        needle = "missing tensor mid_block.attentions.0.to_k.weight"
    elif case == "misshaped_tensor":
        tensors["up_blocks.0.resnets.1.conv1.weight"] = tensors["up_blocks.0.resnets.1.conv1.weight"][:, :-1]
        save_file(tensors, str(folder / fmt.SAFETENSORS))
        needle = "up_blocks.0.resnets.1.conv1.weight has shape"
    elif case == "extra_tensor":
        save_file(tensors | {"class_embedding.weight": np.zeros((10, 64), np.float32)}, str(folder / fmt.SAFETENSORS))
        needle = "class_embedding.weight"
    elif case == "bin_no_torch":
        (folder / fmt.SAFETENSORS).rename(folder / fmt.TORCH_BIN)
        blocker = tmp_path / "no_torch" / "torch"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('No module named torch')\n")
        extra_env = {"PYTHONPATH": f"{tmp_path / 'no_torch'}:{env()['PYTHONPATH']}"}
        needle = "PyTorch is needed to read"
    out = tmp_path / "out.ckpt"
    line = one_error_line(run(IMPORT, "--from", "diffusers", str(folder), "--output", str(out), extra_env=extra_env))
    assert needle in line, line
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_bad_exports_are_one_line_and_leave_nothing(tmp_path):
    cfg = tiny_cfg("model.ch_mult=[2,2]")
    ckpt = write_inference(tmp_path / "c.ckpt", random_weights(cfg), cfg, weights="ema", step=0, source="test")
    out = tmp_path / "exported"
    assert "ch_mult[0] = 2" in one_error_line(run(EXPORT, "--to", "diffusers", str(ckpt), str(out)))
    assert "checkpoint not found" in one_error_line(run(EXPORT, "--to", "diffusers", str(tmp_path / "no.ckpt"),
                                                        str(out)))  # fmt: skip
    assert "invalid choice" in one_error_line(run(EXPORT, "--to", "onnx", str(ckpt), str(out)))
    assert not out.exists() and not list(tmp_path.glob(".*"))
    out.mkdir()
    good = write_inference(tmp_path / "g.ckpt", random_weights(tiny_cfg()), tiny_cfg(), weights="ema", step=0,
                           source="test")  # fmt: skip
    with pytest.raises(CheckpointError, match="use --overwrite"):
        export_diffusers(good, out)
    assert export_diffusers(good, out, overwrite=True) == out and (out / "unet" / fmt.SAFETENSORS).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt", "exported", "g.ckpt"]


# --------------------------------------------------------------------------------- parity with diffusers itself
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random small UNet2DModel pipeline (other multipliers, 8 groups, attention at one level, cos-first
    embedding, 1 channel), its reference outputs, single sampler steps, a 20-step DDIM trajectory, and its import."""
    if not HAVE_DIFFUSERS:
        pytest.skip("needs PyTorch and diffusers (pip install torch diffusers==0.42.1)")
    tmp = tmp_path_factory.mktemp("small")
    np.savez(tmp / "x_T.npz", x_T=np.random.default_rng(5).standard_normal((2, 1, 16, 16)).astype(np.float32))
    reference(tmp, [
        {"task": "make", "preset": "small", "dir": str(tmp / "pipe"), "seed": 0, "ref": str(tmp / "ref.npz")},
        {"task": "make", "preset": "small_learned", "variance": "learned_range", "dir": str(tmp / "learned"),
         "seed": 1, "ref": str(tmp / "learned_ref.npz")},
        {"task": "bin", "dir": str(tmp / "pipe"), "out": str(tmp / "bin_model")},
        {"task": "steps", "ref": str(tmp / "steps.npz")},
        {"task": "ddim", "dir": str(tmp / "pipe"), "inputs": str(tmp / "x_T.npz"), "ref": str(tmp / "ddim.npz")},
    ])  # fmt: skip
    for name in ("pipe", "learned"):
        out = tmp / ("small.ckpt" if name == "pipe" else "learned.ckpt")
        res = run(IMPORT, "--from", "diffusers", str(tmp / name), "--output", str(out))
        assert res.returncode == 0 and res.stdout.startswith("wrote "), res.stderr
    return tmp


@pytest.mark.slow
@needs_diffusers
def test_imported_small_unet_gives_diffusers_eps_in_eval_and_train_mode(small):
    ref = np.load(small / "ref.npz")
    cfg, net, _ = load_for_sampling(small / "small.ckpt")
    assert cfg.model.ch_mult == [1, 2, 2] and cfg.model.attn_resolutions == [8] and cfg.model.norm_groups == 8
    assert cfg.model.norm_eps == 1e-6 and (cfg.diffusion.var_type, cfg.diffusion.clip_x0) == ("fixedlarge", True)
    assert_eps_parity(forward(net, ref["x"], ref["t"]), ref)
    assert_eps_parity(forward(net, ref["x"], ref["t"], train=True), dict(ref) | {"eps32": ref["eps32_train"]})
    # the bound has teeth: the same weights without the cos-first -> sin-first column swap miss it by far
    w = {p.name: p for p in net.get_parameters()}["temb.1.weight"]
    value = w.asnumpy()
    w.set_data(Tensor(np.concatenate([value[:, 16:], value[:, :16]], axis=1)))
    wrong = forward(net, ref["x"], ref["t"])
    assert np.abs(wrong - ref["eps32"]).max() > 100 * 1e-4 * np.abs(ref["eps64"]).max()


@pytest.mark.slow
@needs_diffusers
def test_a_bin_model_folder_imports_the_same_weights(small, tmp_path):
    """diffusers' .bin serialisation (read with PyTorch) of the same U-Net, as a bare model folder."""
    assert (small / "bin_model" / fmt.TORCH_BIN).is_file() and not (small / "bin_model" / fmt.SAFETENSORS).exists()
    out = tmp_path / "from_bin.ckpt"  # through the tool: PyTorch stays out of this process
    res = run(IMPORT, "--from", "diffusers", str(small / "bin_model"), "--output", str(out))
    assert res.returncode == 0, res.stderr
    ours, meta = arrays_and_meta(out)
    safe, _ = arrays_and_meta(small / "small.ckpt")
    assert sorted(ours) == sorted(safe) and all(np.array_equal(ours[k], safe[k]) for k in safe)
    diffusion = yaml.safe_load(meta["config"])["diffusion"]
    assert diffusion["var_type"] == "fixedsmall"  # no scheduler in a bare model folder: DDPMScheduler's default


@pytest.mark.slow
@needs_diffusers
def test_imported_google_ddpm_cifar10_32_unet_gives_diffusers_eps(tmp_path):
    """The full 35.7M-parameter configuration of google/ddpm-cifar10-32, random weights."""
    reference(tmp_path, [{"task": "make", "preset": "cifar", "dir": str(tmp_path / "pipe"), "seed": 1,
                          "ref": str(tmp_path / "ref.npz")}])  # fmt: skip
    out, cfg = import_diffusers(tmp_path / "pipe", tmp_path / "cifar.ckpt")
    paper = load_config(str(ROOT / "configs" / "cifar.yaml"), ["data.path=unused"])
    assert {k: v for k, v in to_dict(cfg)["model"].items() if k not in ("dropout", "norm_eps")} == {
        k: v for k, v in to_dict(paper)["model"].items() if k not in ("dropout", "norm_eps")
    }
    ref = np.load(tmp_path / "ref.npz")
    _, net, _ = load_for_sampling(out)
    assert sum(int(np.prod(p.shape)) for p in net.trainable_params()) == 35_746_307
    assert_eps_parity(forward(net, ref["x"], ref["t"]), ref)


@pytest.mark.slow
@needs_diffusers
def test_export_loads_in_diffusers_and_imports_back_bitwise(tmp_path):
    """A ddpm-dist model (its own defaults: 32 groups, eps 1e-5, sin-first) -> DDPMPipeline / UNet2DModel
    .from_pretrained -> the same eps; import(export(ckpt)) == ckpt."""
    cfg = load_config(None, ["data.path=unused", "model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
                             "model.attn_resolutions=[8]", "data.image_size=16", "data.channels=3",
                             "diffusion.var_type=fixedsmall", "diffusion.timesteps=200"])  # fmt: skip
    cfg = no_data(cfg)
    ckpt = write_inference(tmp_path / "ours.ckpt", random_weights(cfg, seed=3), cfg, weights="ema", step=7,
                           source="test")  # fmt: skip
    res = run(EXPORT, "--to", "diffusers", str(ckpt), str(tmp_path / "exported"))
    assert res.returncode == 0, res.stderr
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x, t=np.array([0, 5, 199]))
    reference(tmp_path, [{"task": "run", "dir": str(tmp_path / "exported"), "inputs": str(tmp_path / "inputs.npz"),
                          "ref": str(tmp_path / "ref.npz")}])  # fmt: skip
    ref = np.load(tmp_path / "ref.npz")
    _, net, _ = load_for_sampling(ckpt)
    assert_eps_parity(forward(net, x, ref_t := np.array([0, 5, 199])), dict(ref) | {"t": ref_t})
    assert np.array_equal(ref["unet_eps32"], ref["eps32"])  # UNet2DModel.from_pretrained == the pipeline's unet
    images = ref["pipeline_images"]
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    scheduler = json.loads(str(ref["scheduler"]))
    assert (scheduler["num_train_timesteps"], scheduler["variance_type"]) == (200, "fixed_small")

    back, back_cfg = import_diffusers(tmp_path / "exported", tmp_path / "back.ckpt")
    ours, _ = arrays_and_meta(ckpt)
    theirs, meta = arrays_and_meta(back)
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        assert value.dtype == theirs[name].dtype and np.array_equal(value, theirs[name]), name
    before, after = to_dict(cfg), to_dict(back_cfg)
    assert after["model"] == before["model"] and after["data"] == before["data"]
    assert after["diffusion"] == before["diffusion"]
    assert yaml.safe_load(meta["config"])["model"] == before["model"]


class Constant(nn.Cell):
    """A stand-in network whose output (the eps prediction) is fixed: the same model output for both samplers."""

    def __init__(self, value: np.ndarray):
        super().__init__()
        self.value = Tensor(value)

    def construct(self, x, t):
        return self.value


@pytest.mark.slow
@needs_diffusers
def test_a_learned_variance_model_imports_and_exports_with_diffusers_parity(small, tmp_path):
    """UNet2DModel(out_channels=2C) + DDPMScheduler(variance_type=learned_range) -> var_type learned_range and all
    2C outputs equal diffusers'; exported again, diffusers loads it (pipeline included) and gives them too."""
    ref = np.load(small / "learned_ref.npz")
    cfg, net, _ = load_for_sampling(small / "learned.ckpt")
    assert cfg.diffusion.var_type == "learned_range" and ref["eps32"].shape[1] == 2 * cfg.data.channels == 2
    assert_eps_parity(forward(net, ref["x"], ref["t"]), ref)
    res = run(EXPORT, "--to", "diffusers", str(small / "learned.ckpt"), str(tmp_path / "exported"))
    assert res.returncode == 0, res.stderr
    np.savez(tmp_path / "inputs.npz", x=ref["x"], t=ref["t"])
    reference(tmp_path, [{"task": "run", "dir": str(tmp_path / "exported"), "inputs": str(tmp_path / "inputs.npz"),
                          "ref": str(tmp_path / "back.npz")}])  # fmt: skip
    back = np.load(tmp_path / "back.npz")
    assert_eps_parity(back["eps32"], ref)  # sin-first now (the embedding's columns permuted): rounding differs
    assert json.loads(str(back["scheduler"]))["variance_type"] == "learned_range"
    assert np.isfinite(back["pipeline_images"]).all()  # DDPMPipeline sampled with the learned variances


@pytest.mark.slow
@needs_diffusers
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned_range"])
def test_ddpm_step_equals_ddpmscheduler_step(small, variance):
    """T=1000 linear, clip on; the same model output and the same noise (drawn by diffusers' step itself).
    Bound 2e-5 * (1 + max |x|): ddpm-dist rounds float64 coefficients to float32 once; diffusers derives them in
    float32 from a float32 cumprod, and near t = 0 from differences like 1 - 0.9999 (1 - abar_t), which keep only
    ~4 significant digits there: at t = 1 its variance and posterior coefficients are ~1e-4 off in relative terms
    (measured: 5.5e-5 at t = 1, <= 3e-6 elsewhere, for |x| <= 6). Without the same noise the results differ by
    > 1e-2."""
    ref = np.load(small / "steps.npz")
    base = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    var_type = {"fixed_large": "fixedlarge", "fixed_small": "fixedsmall", "learned_range": "learned_range"}[variance]
    for t in (999, 500, 100, 1, 0):
        key = f"ddpm/{variance}/{t}"
        x, e, noise, prev = (ref[f"{key}/{k}"] for k in ("x", "eps", "noise", "prev"))
        step = DDPMStep(model=Constant(e), schedule=base, objective="eps", clip_x0=True, var_type=var_type)
        ours = step(Tensor(x), Tensor(t, ms.int32), Tensor(noise)).asnumpy()
        assert np.abs(ours - prev).max() <= 2e-5 * (1 + np.abs(x).max()), (t, np.abs(ours - prev).max())
    assert not np.allclose(ref[f"ddpm/{variance}/500/prev"], ref[f"ddpm/{variance}/500/x"])


@pytest.mark.slow
@needs_diffusers
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_step_equals_ddimscheduler_step(small, eta, clip):
    """20 leading timesteps of T=1000 linear (diffusers' sequence 950, 900, ..., 0, respaced in ddpm-dist), the
    same model output and noise; with clipping, diffusers' ``use_clipped_model_output=True`` (ddpm-dist always
    re-derives eps from the clipped x0; DDIMPipeline's default does not). Bound as for the DDPM step."""
    ref = np.load(small / "steps.npz")
    timesteps = ref["ddim_timesteps"]
    assert list(timesteps) == list(range(950, -1, -50))
    schedule = respace(make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02), timesteps)
    for t in (950, 500, 50, 0):
        key = f"ddim/{int(clip)}/{eta}/{t}"
        x, e, noise, prev = (ref[f"{key}/{k}"] for k in ("x", "eps", "noise", "prev"))
        step = DDIMStep(model=Constant(e), schedule=schedule, objective="eps", clip_x0=clip, eta=eta)
        i = int(np.flatnonzero(schedule.timestep_map == t)[0])
        ours = step(Tensor(x), Tensor(i, ms.int32), Tensor(noise)).asnumpy()
        assert np.abs(ours - prev).max() <= 2e-5 * (1 + np.abs(x).max()), (t, np.abs(ours - prev).max())


@pytest.mark.slow
@needs_diffusers
def test_20_step_ddim_trajectory_ends_at_diffusers_image(small):
    """The imported small U-Net, 20 DDIM steps (eta 0, clip) from the same x_T. Bound: 2e-4 of the image range,
    and within 5x (+1e-5) of diffusers' own float32-vs-float64 difference: each step carries the network's ~1e-5
    eps difference (the timestep embedding's rounding, see assert_eps_parity) scaled by sqrt(1/abar - 1) (up to ~12
    at t = 950), and DDIM's deterministic map neither amplifies nor damps it much over 20 steps."""
    ref = np.load(small / "ddim.npz")
    x_T = np.load(small / "x_T.npz")["x_T"]
    cfg, net, _ = load_for_sampling(small / "small.ckpt")
    schedule = respace(make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02), ref["timesteps"])
    step = DDIMStep(model=net, schedule=schedule, objective="eps", clip_x0=cfg.diffusion.clip_x0, eta=0.0)
    ours = sample_loop(step, Tensor(x_T), noise_fn=lambda shape: Tensor(np.zeros(shape, np.float32))).asnumpy()
    theirs, exact = ref["x0_32"], ref["x0_64"]
    diff = np.abs(ours - theirs).max()
    assert diff <= 2e-4 * 2.0 and diff <= 5 * np.abs(theirs - exact).max() + 1e-5, diff
    assert np.abs(theirs - x_T).max() > 0.5  # the trajectory moved


@pytest.mark.slow
@needs_diffusers
def test_imported_checkpoint_samples_with_tools_sample(small, tmp_path):
    out = tmp_path / "samples"
    res = run(SAMPLE, "--ckpt", str(small / "small.ckpt"), "--out", str(out), "--sampler", "ddim", "--steps", "3",
              "--num-samples", "2", "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stderr
    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (2, 16, 16, 1) and images.dtype == np.uint8


# ------------------------------------------------------------------- class-conditional: num_class_embeds, labels
@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """Both directions in one diffusers worker run: a random class-conditional small UNet2DModel (num_class_embeds
    11) with its reference eps for given class labels, imported with tools/import_weights.py; and a ddpm-dist
    class-conditional model (its own defaults: 32 groups, eps 1e-5, sin first; 4 classes) exported, then loaded and
    run by diffusers on the same labels."""
    if not HAVE_DIFFUSERS:
        pytest.skip("needs PyTorch and diffusers (pip install torch diffusers==0.42.1)")
    tmp = tmp_path_factory.mktemp("conditional")
    cfg = no_data(load_config(None, ["data.path=unused", "model.ch=32", "model.ch_mult=[1,2]",
                                     "model.num_res_blocks=1", "model.attn_resolutions=[8]", "data.image_size=16",
                                     "data.channels=3", "diffusion.timesteps=200", "model.num_classes=4"]))  # fmt: skip
    ours = write_inference(tmp / "ours.ckpt", random_weights(cfg, seed=4), cfg, weights="ema", step=3, source="test")
    res = run(EXPORT, "--to", "diffusers", str(ours), str(tmp / "exported"))
    assert res.returncode == 0, res.stderr
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp / "inputs.npz", x=x, t=np.array([0, 7, 120, 199]), y=np.array([0, 3, 4, 1]))  # 4: "no label"
    reference(tmp, [
        {"task": "make", "preset": "small_cond", "dir": str(tmp / "pipe"), "seed": 2, "ref": str(tmp / "ref.npz")},
        {"task": "run", "dir": str(tmp / "exported"), "inputs": str(tmp / "inputs.npz"),
         "ref": str(tmp / "export_ref.npz")},
    ])  # fmt: skip
    res = run(IMPORT, "--from", "diffusers", str(tmp / "pipe"), "--output", str(tmp / "imported.ckpt"))
    assert res.returncode == 0 and "10 classes" in res.stdout, res.stderr
    return tmp


@pytest.mark.slow
@needs_diffusers
def test_a_class_conditional_unet_imports_with_diffusers_parity_given_class_labels(conditional):
    """UNet2DModel(num_class_embeds=11) -> model.num_classes 10; eps(x, t, y) equals diffusers' eps(x, t,
    class_labels=y) for labels including the last ("no label") row, in eval and train mode, same bound as above."""
    ref = np.load(conditional / "ref.npz")
    cfg, net, _ = load_for_sampling(conditional / "imported.ckpt")
    y = ref["y"]
    assert cfg.model.num_classes == 10 and 10 in y and len(set(y.tolist())) == len(y)
    assert_eps_parity(forward(net, ref["x"], ref["t"], y=y), ref)
    assert_eps_parity(forward(net, ref["x"], ref["t"], y=y, train=True), dict(ref) | {"eps32": ref["eps32_train"]})
    # the bound has teeth: other labels (every row moved to the next class) miss it by far
    wrong = forward(net, ref["x"], ref["t"], y=(y + 1) % 11)
    assert np.abs(wrong - ref["eps32"]).max() > 100 * 1e-4 * np.abs(ref["eps64"]).max()


@pytest.mark.slow
@needs_diffusers
def test_a_class_conditional_export_loads_in_diffusers_with_parity_and_imports_back_bitwise(conditional, tmp_path):
    """model.num_classes 4 -> num_class_embeds 5 (row 4 "no label"); UNet2DModel.from_pretrained and the pipeline's
    U-Net give ddpm-dist's eps for the same class labels; import(export(ckpt)) == ckpt."""
    ref, inputs = np.load(conditional / "export_ref.npz"), np.load(conditional / "inputs.npz")
    unet = json.loads(str(ref["unet_config"]))
    assert (unet["num_class_embeds"], unet["class_embed_type"]) == (5, None)
    cfg, net, _ = load_for_sampling(conditional / "ours.ckpt")
    assert_eps_parity(forward(net, inputs["x"], inputs["t"], y=inputs["y"]), dict(ref) | {"t": inputs["t"]})
    assert np.array_equal(ref["unet_eps32"], ref["eps32"])
    back, back_cfg = import_diffusers(conditional / "exported", tmp_path / "back.ckpt")
    ours, _ = arrays_and_meta(conditional / "ours.ckpt")
    theirs, _ = arrays_and_meta(back)
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert to_dict(back_cfg)["model"] == to_dict(cfg)["model"] and back_cfg.model.num_classes == 4
