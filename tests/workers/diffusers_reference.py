"""Reference outputs from diffusers itself (PyTorch), for tests/test_interop.py.

    python tests/workers/diffusers_reference.py JOB.json

JOB.json is a list of tasks, run in order in this one process (PyTorch and diffusers load once):

- ``{"task": "make", "preset": P, "dir": D, "seed": S, "ref": NPZ}`` (P one of PRESETS; optional ``"variance"``,
  default fixed_large): a randomly initialised ``UNet2DModel`` (GroupNorm affine parameters randomised too, so a
  gamma/beta mix-up shows) with a ``DDPMScheduler`` (T=1000 linear, that variance, clip), saved with
  ``DDPMPipeline.save_pretrained(D)``. NPZ gets ``x``, ``t`` and the network's eps in eval mode (``eps32``), train
  mode (``eps32_train``; dropout is 0) and float64 (``eps64``, the same weights and inputs in double precision: the
  exact value the float32 runs approximate); for a class-conditional preset also the ``class_labels`` given, ``y``
  (the last row, N - 1, among them).
- ``{"task": "shapes", "preset": P, "out": JSON}``: the shape of every tensor of a ``UNet2DModel`` built in the
  preset's configuration (``key -> shape``), nothing saved.
- ``{"task": "run", "dir": D, "inputs": NPZ_IN, "ref": NPZ}``: loads ``DDPMPipeline.from_pretrained(D)`` and
  ``UNet2DModel.from_pretrained(D, subfolder="unet")``; NPZ gets ``eps32``/``eps64`` of both on NPZ_IN's ``x``,
  ``t`` (and class labels ``y`` if NPZ_IN has them), ``pipeline_images`` of a 2-step run of the pipeline (empty for
  a class-conditional U-Net, which DDPMPipeline cannot call) and the loaded ``unet_config``.
- ``{"task": "bin", "dir": D, "out": D2}``: D's U-Net saved again with ``save_pretrained(D2,
  safe_serialization=False)``, i.e. as ``diffusion_pytorch_model.bin``.
- ``{"task": "steps", "ref": NPZ}``: single sampler steps. DDPMScheduler (T=1000 linear, clip) with fixed_large,
  fixed_small and learned_range (the model output then holds eps and v) at several t; DDIMScheduler (T=1000
  linear, 20 leading steps) with eta 0 and 1, clip on (with ``use_clipped_model_output``) and off. For each case
  ``<case>/x``, ``eps`` (the model output), ``noise`` and ``prev``; ``ddim_timesteps``.
- ``{"task": "ddim", "dir": D, "inputs": NPZ_IN, "ref": NPZ}``: a 20-step DDIM trajectory (eta 0, clip, clipped
  model output) of D's U-Net from NPZ_IN's ``x_T``, in float32 (``x0_32``) and float64 (``x0_64``), and the
  ``timesteps`` visited.
"""

import json
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

PRESETS = {
    # other channel multipliers, 8 groups, attention at the middle level only, cos-first embedding, 1 channel
    "small": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, norm_eps=1e-6,
                  flip_sin_to_cos=True, freq_shift=1, downsample_padding=0, attention_head_dim=None),
    # google/ddpm-cifar10-32's config.json
    "cifar": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                  layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
                  norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, attention_head_dim=None,
                  mid_block_scale_factor=1, center_input_sample=False, act_fn="silu", time_embedding_type="positional"),
    # google/ddpm-church-256's config.json: the paper's 256x256 U-Net (114M parameters)
    "church256": dict(sample_size=256, in_channels=3, out_channels=3, block_out_channels=(128, 128, 256, 256, 512, 512),
                      layers_per_block=2, down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4, norm_num_groups=32,
                      norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, attention_head_dim=None,
                      mid_block_scale_factor=1, center_input_sample=False, act_fn="silu",
                      time_embedding_type="positional"),
}  # fmt: skip
# the small U-Net with learned variances: 2 x in_channels outputs (prediction, variance), for variance learned_range
PRESETS["small_learned"] = PRESETS["small"] | dict(out_channels=2)
# the small U-Net, class-conditional: 11 rows = ddpm-dist's 10 classes + the "no label" row
PRESETS["small_cond"] = PRESETS["small"] | dict(num_class_embeds=11)
# its reduced-width twin: the same levels, block types and attention layout at 256x256, a quarter of the widths
PRESETS["church256_ch32"] = PRESETS["church256"] | dict(block_out_channels=(32, 32, 64, 64, 128, 128))
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


def eps(unet, x, t, *, double=False, train=False, y=None):
    net = unet.double() if double else unet.float()
    net.train(train)
    labels = None if y is None else torch.from_numpy(y).long()
    with torch.no_grad():
        dtype = torch.float64 if double else torch.float32
        out = net(torch.from_numpy(x).to(dtype), torch.from_numpy(t).long(), class_labels=labels).sample.numpy()
    unet.float().eval()
    return out


def make(job):
    torch.manual_seed(job["seed"])
    unet = UNet2DModel(**PRESETS[job["preset"]])
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    scheduler = DDPMScheduler(**SCHEDULER, variance_type=job.get("variance", "fixed_large"), clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(job["dir"])
    rng = np.random.default_rng(job["seed"])
    c, s = unet.config.in_channels, unet.config.sample_size
    x = rng.standard_normal((4 if job["preset"] in ("small", "small_cond") else 2, c, s, s)).astype(np.float32)
    t = np.array([0, 999, 500, 17] if len(x) == 4 else [3, 780], np.int64)
    y, labelled = None, {}
    if unet.config.num_class_embeds:  # one label per row, the last row ("no label") among them
        y = (np.arange(len(x)) * 3 + unet.config.num_class_embeds - 1) % unet.config.num_class_embeds
        labelled = dict(y=y)
    np.savez(job["ref"], x=x, t=t, eps32=eps(unet, x, t, y=y), eps32_train=eps(unet, x, t, train=True, y=y),
             eps64=eps(unet, x, t, double=True, y=y), **labelled)  # fmt: skip


def shapes(job):
    unet = UNet2DModel(**PRESETS[job["preset"]])
    with open(job["out"], "w") as f:
        json.dump({k: list(v.shape) for k, v in unet.state_dict().items()}, f)


def run(job):
    inputs = np.load(job["inputs"])
    x, t, y = inputs["x"], inputs["t"], inputs["y"] if "y" in inputs.files else None
    pipe = DDPMPipeline.from_pretrained(job["dir"])
    unet = UNet2DModel.from_pretrained(job["dir"], subfolder="unet")
    images = np.zeros((0,))  # DDPMPipeline calls its U-Net without class labels: only unconditional ones run
    if unet.config.num_class_embeds is None:
        gen = torch.Generator().manual_seed(0)
        images = np.asarray(pipe(batch_size=1, num_inference_steps=2, generator=gen, output_type="np").images)
    np.savez(job["ref"], eps32=eps(pipe.unet, x, t, y=y), eps64=eps(pipe.unet, x, t, double=True, y=y),
             unet_eps32=eps(unet, x, t, y=y), pipeline_images=images,
             scheduler=json.dumps(dict(pipe.scheduler.config)), unet_config=json.dumps(dict(unet.config)))  # fmt: skip


def to_bin(job):
    UNet2DModel.from_pretrained(job["dir"], subfolder="unet").save_pretrained(job["out"], safe_serialization=False)


def steps(job):
    rng = np.random.default_rng(0)
    out = {}

    def case(shape=(2, 3, 8, 8)):
        x = (rng.standard_normal(shape) * 1.5).astype(np.float32)  # wide enough that the x0 clip acts
        return x, rng.standard_normal(shape).astype(np.float32)

    for variance in ("fixed_large", "fixed_small", "learned_range"):
        sched = DDPMScheduler(**SCHEDULER, variance_type=variance, clip_sample=True)
        for t in (999, 500, 100, 1, 0):
            x, e = case()
            if variance == "learned_range":  # the model output: eps and the variance output v in (-1, 1)
                e = np.concatenate([e, np.tanh(rng.standard_normal(x.shape)).astype(np.float32)], axis=1)
            gen_seed = 1000 + t
            prev = sched.step(
                torch.from_numpy(e), t, torch.from_numpy(x), generator=torch.Generator().manual_seed(gen_seed)
            )
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(gen_seed))  # what step drew
            key = f"ddpm/{variance}/{t}"
            out |= {
                f"{key}/x": x,
                f"{key}/eps": e,
                f"{key}/noise": noise.numpy(),
                f"{key}/prev": prev.prev_sample.numpy(),
            }
    for clip in (True, False):
        sched = DDIMScheduler(**SCHEDULER, clip_sample=clip, set_alpha_to_one=True, steps_offset=0)
        sched.set_timesteps(20)
        out["ddim_timesteps"] = sched.timesteps.numpy()
        for eta in (0.0, 1.0):
            for t in (950, 500, 50, 0):
                x, e = case()
                noise = rng.standard_normal(x.shape).astype(np.float32)
                prev = sched.step(torch.from_numpy(e), t, torch.from_numpy(x), eta=eta, use_clipped_model_output=True,
                                  variance_noise=torch.from_numpy(noise))  # fmt: skip
                key = f"ddim/{int(clip)}/{eta}/{t}"
                out |= {f"{key}/x": x, f"{key}/eps": e, f"{key}/noise": noise, f"{key}/prev": prev.prev_sample.numpy()}
    np.savez(job["ref"], **out)


def ddim(job):
    x_T = np.load(job["inputs"])["x_T"]
    unet = UNet2DModel.from_pretrained(job["dir"], subfolder="unet").eval()
    sched = DDIMScheduler(**SCHEDULER, clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    sched.set_timesteps(20)
    results = {}
    for dtype, name in ((torch.float32, "x0_32"), (torch.float64, "x0_64")):
        net = unet.to(dtype)
        x = torch.from_numpy(x_T).to(dtype)
        with torch.no_grad():
            for t in sched.timesteps:
                e = net(x, t).sample
                x = sched.step(e, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        results[name] = x.numpy()
    np.savez(job["ref"], timesteps=sched.timesteps.numpy(), **results)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for task in json.loads(open(sys.argv[1]).read()):
        {"make": make, "shapes": shapes, "run": run, "bin": to_bin, "steps": steps, "ddim": ddim}[task["task"]](task)
