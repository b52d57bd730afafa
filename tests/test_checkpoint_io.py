"""ddpm_dist/checkpoint/io.py: the one reader, the strict loader, the embedded-config rule, the output check."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import nn
from safetensors.numpy import save_file

from ddpm_dist.checkpoint.io import (
    CheckpointError,
    check_output,
    embedded_config,
    embedded_value,
    load_into,
    read,
    write_weights,
)
from ddpm_dist.config import ConfigError, load_config, to_dict


class _Two(nn.Cell):
    def __init__(self):
        super().__init__()
        self.a = nn.Dense(3, 2)
        self.b = nn.Dense(2, 4)


def _arrays(net) -> dict:
    rng = np.random.default_rng(0)
    return {p.name: rng.standard_normal(p.shape).astype(np.float32) for p in net.get_parameters()}


# ---------------------------------------------------------------------------------------------- read
def test_read_gives_arrays_and_plain_meta_for_both_formats_and_checks_the_crc(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([7], np.int32)}
    meta = {"meta.kind": "k", "meta.step": 12, "meta.config": "model: {}\n"}
    for name in ("x.ckpt", "x.safetensors"):
        stored = read(write_weights(tmp_path / name, arrays, meta))
        assert stored.path == tmp_path / name and set(stored.arrays) == {"w", "n"}
        for key, value in arrays.items():
            assert stored.arrays[key].dtype == value.dtype
            np.testing.assert_array_equal(stored.arrays[key], value)
        assert stored.meta == {"kind": "k", "step": 12, "config": "model: {}\n"}
        only = read(tmp_path / name, meta_only=True)
        assert only.arrays == {} and only.meta == stored.meta
    data = bytearray((tmp_path / "x.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle: the CRC finds it
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    for meta_only in (False, True):
        with pytest.raises(CheckpointError, match="bad.ckpt: not a readable MindSpore checkpoint"):
            read(tmp_path / "bad.ckpt", meta_only=meta_only)


def test_read_names_the_file_it_cannot_use(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.ckpt"):
        read(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        read(tmp_path)
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="w.npz: expected a MindSpore .ckpt or a .safetensors file"):
        read(tmp_path / "w.npz")
    (tmp_path / "w.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="w.safetensors: not a readable safetensors file"):
        read(tmp_path / "w.safetensors")


# ---------------------------------------------------------------------------------------------- load_into
def test_load_into_sets_every_parameter_bitwise():
    net = _Two()
    arrays = _arrays(net)
    load_into(net, arrays, source="x.ckpt")
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), arrays[p.name])


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda a: a.pop("b.bias"), r"1 missing parameters \(e\.g\. b\.bias\)"),
        (lambda a: a.update({"c.weight": np.zeros(2, np.float32)}), r"1 unexpected entries \(e\.g\. c\.weight\)"),
        (lambda a: a.update({"a.weight": np.zeros((2, 4), np.float32)}), r"a\.weight \(2, 4\), the network's \(2, 3\)"),
    ],
)
def test_load_into_refuses_what_does_not_fit_and_loads_nothing(change, says):
    net = _Two()
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    arrays = _arrays(net)
    change(arrays)
    with pytest.raises(CheckpointError, match=r"^run/x\.ckpt: does not fit the network: .*" + says):
        load_into(net, arrays, source="run/x.ckpt")
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name])


def test_load_into_names_every_kind_of_mismatch_at_once():
    net = _Two()
    arrays = _arrays(net)
    del arrays["a.bias"]
    arrays["b.weight"] = arrays["b.weight"][:, :1]
    arrays["extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError, match="1 missing parameters.*; 1 unexpected entries.*; 1 other shapes"):
        load_into(net, arrays, source="x.ckpt")


# ---------------------------------------------------------------------------------------------- embedded config
def _meta(**changes) -> dict:
    sections = to_dict(load_config(None, ["data.path=d", "model.ch=64"]))
    for key, value in changes.items():
        section, name = key.split("__")
        if value is None:
            del sections[section][name]
        else:
            sections[section][name] = value
    return {"config": yaml.safe_dump(sections)}


def test_embedded_config_reads_model_diffusion_data_and_defaults_keys_the_checkpoint_lacks():
    cfg = embedded_config(_meta(model__norm_eps=None, train__lr=0.5), source="c.ckpt")
    assert cfg.model.ch == 64 and cfg.model.norm_eps == 1e-5 and cfg.data.path == "d"
    assert cfg.train.lr == 2e-4  # the train section is not read: how it was trained, not what the weights are
    assert embedded_value(_meta(train__global_batch=48), "train.global_batch", source="c.ckpt") == 48
    assert embedded_value(_meta(train__global_batch=None), "train.global_batch", source="c.ckpt") is None


@pytest.mark.parametrize(
    "meta, says",
    [
        (_meta(model__wavelets=True), r"c\.ckpt \(meta\.config\): unknown key model\.wavelets"),
        (_meta(diffusion__timesteps=0), r"c\.ckpt \(meta\.config\): diffusion\.timesteps"),
        ({"config": "model: [unclosed"}, r"c\.ckpt: unreadable embedded config"),
        ({"config": "just text"}, r"c\.ckpt: unreadable embedded config \(not a mapping"),
        ({}, r"c\.ckpt: no embedded config \(meta\.config\)"),
    ],
)
def test_embedded_config_errors_name_the_file_and_the_key(meta, says):
    with pytest.raises(CheckpointError, match=says):
        embedded_config(meta, source="c.ckpt")


def test_an_unknown_key_in_the_train_section_is_not_an_error():
    assert embedded_config(_meta(train__from_the_future=1), source="c.ckpt").model.ch == 64


def test_a_model_with_fewer_timesteps_than_the_default_grid_steps_loads():
    """run.sample_steps (default 50) <= T is a training rule; the embedded config's run section is defaults."""
    assert embedded_config(_meta(diffusion__timesteps=20), source="c.ckpt").diffusion.timesteps == 20
    with pytest.raises(ConfigError, match="run.sample_steps: 50 exceeds diffusion.timesteps 20"):
        load_config(None, ["data.path=d", "diffusion.timesteps=20"])


# ---------------------------------------------------------------------------------------------- check_output
def test_check_output_refuses_before_any_work_and_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"out\.bin: the output name must end in \.ckpt or \.safetensors"):
        check_output(tmp_path / "out.bin", overwrite=False)
    (tmp_path / "old.ckpt").write_bytes(b"keep")
    with pytest.raises(CheckpointError, match=r"old\.ckpt: exists; use --overwrite to replace it"):
        check_output(tmp_path / "old.ckpt", overwrite=False)
    assert check_output(str(tmp_path / "old.ckpt"), overwrite=True) == tmp_path / "old.ckpt"
    assert (tmp_path / "old.ckpt").read_bytes() == b"keep"
    with pytest.raises(CheckpointError, match=r"old\.ckpt: exists and is not a directory"):
        check_output(tmp_path / "old.ckpt", overwrite=True, directory=True)
    assert check_output(tmp_path / "new" / "dir", overwrite=False, directory=True) == tmp_path / "new" / "dir"
    with pytest.raises(CheckpointError, match=r"old\.ckpt/x\.ckpt: cannot write there \(Not a directory\)"):
        check_output(tmp_path / "old.ckpt" / "x.ckpt", overwrite=False)
    with pytest.raises(CheckpointError, match=r"/proc/x\.ckpt: cannot write there"):
        check_output("/proc/x.ckpt", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ckpt"]  # no probe left behind


def test_write_weights_leaves_nothing_on_an_error(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        (tmp_path / ".w.partial-1.ckpt").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", disk_full)
    monkeypatch.setattr("os.getpid", lambda: 1)
    with pytest.raises(CheckpointError, match=r"could not write .*w\.ckpt: .*No space left"):
        write_weights(tmp_path / "w.ckpt", {"w": np.zeros(2, np.float32)}, {})
    assert list(tmp_path.iterdir()) == []
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "ok.safetensors"))
    assert read(tmp_path / "ok.safetensors").meta == {}
