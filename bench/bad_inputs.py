"""Bad inputs and faults, tried as a hostile but realistic user would: what does each one cost?

    python bench/bad_inputs.py [--only SUBSTRING] [--skip-msrun] [--out bench/results/bad_inputs.json]

Each trial runs a real command (the train CLI, a tool, or the msrun launcher) against a bad config, data set,
checkpoint, flag or environment, in a fresh copy of a finished tiny run where it needs one, and records:

- ``rc``: the exit status; ``want``: what the contract says (``2``: the user's input is wrong; ``fault``: any other
  non-zero code; ``0``: the run goes on or stops cleanly after saving)
- ``one_line``: a failing trial printed exactly one ``error:`` line on stderr and no traceback
- ``traceback``: a Python traceback (or a msrun one) reached the console
- ``data_loss``: a checkpoint that existed before the trial was overwritten, or is gone while no newer checkpoint
  took its place (retention of older files is not a loss; files the trial damaged on purpose are not counted)
- ``seconds``: wall time

It prints one JSON document: the totals and every trial. Nothing here is timed against a bound: the figures are for
docs/failure_modes.md, and the tests (tests/test_store.py, tests/test_launch_faults.py, ...) check the behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import ROOT, env, free_port

from ddpm_dist.cli_util import run_main

TINY = str(ROOT / "configs" / "tiny.yaml")


def _hashes(run: Path) -> dict[str, str]:
    ckpts = run / "checkpoints"
    if not ckpts.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpts.glob("step_*.ckpt"))}


@dataclass
class Trial:
    name: str
    argv: list[str]  # {D}, {R}, {W} are replaced by the data set, the run copy and the work dir
    want: str = "2"  # "2" | "fault" | "0"
    needs_run: bool = False  # run in a fresh copy of the finished 6-step run R
    setup: str = ""  # a shell snippet run first (same placeholders)
    env: dict = field(default_factory=dict)
    damaged: tuple[str, ...] = ()  # checkpoint files this trial damages on purpose (not counted as lost)
    as_nobody: bool = False  # run without root's override of file modes (root reads everything)
    timeout: int = 240
    msrun: bool = False


T = [sys.executable, "-m", "ddpm_dist.train", "--config", TINY, "data.path={D}", "run.out_dir={R}"]
RUN6 = ["train.total_steps=6", "train.ckpt_every=3"]
SAMPLE = [sys.executable, str(ROOT / "tools" / "sample.py")]
EVAL = [sys.executable, str(ROOT / "tools" / "eval.py")]
PREP = [sys.executable, str(ROOT / "tools" / "prepare_data.py")]
CONV = [sys.executable, str(ROOT / "tools" / "convert_ckpt.py")]
L = ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, "data.path={D}", "run.out_dir={R}"]
LENV = {"DEVICE_NUM": "2", "CLUSTER_TIMEOUT": "60", "LOG_DIR": "{W}/msrun_logs"}


def trials() -> list[Trial]:
    out = []
    bad_overrides = [
        "model.ch=0", "model.ch=abc", "model.ch_mult=[1,2", "model.ch_mult=[]", "model.attn_resolutions=[3]",
        "model.dropout=1.5", "model.arch=transformer", "model.norm_groups=0", "data.image_size=7", "data.channels=2",
        "diffusion.timesteps=0", "diffusion.beta_end=2", "diffusion.beta_schedule=quadratic", "diffusion.objective=y",
        "train.lr=0", "train.lr=inf", "train.lr=nan", "train.lr=-1", "train.loss_scale_value=inf",
        "train.loss_scale_value=0.5", "train.global_batch=0", "train.grad_accum=3", "train.grad_accum=0",
        "train.total_steps=0", "train.ema_decay=1", "train.keep_last=0", "train.resume=/nonexistent.ckpt",
        "train.resume={D}/manifest.json", "run.seed=-1", "run.seed=99999999999999999999", "run.seed=1.5",
        "data.num_parallel_workers=64", "data.num_parallel_workers=0", "run.device=TPU", "run.mode=eager",
        "run.out_dir=", "run.profile=5:2", "run.profile=abc", "run.sampler=euler", "run.sample_steps=500",
        "nosuch.key=1", "model.nosuch=1", "model.ch", "=1",
        "data.path=/nonexistent", "data.path={W}/empty_dir", "data.path={W}/afile",
        "model.num_classes=-1", "model.num_classes=5", "train.label_dropout=1.5", "train.label_dropout=-0.1",
        "run.guidance=-1", "run.guidance=2", "diffusion.var_type=learned", "diffusion.loss=foo",
        "diffusion.vlb_weight=-1", "model.recompute=maybe", "eval.metric=bpd",
    ]  # fmt: skip
    for o in bad_overrides:
        out.append(Trial(f"override {o}", [*T, *RUN6, o], setup="mkdir -p {W}/empty_dir && touch {W}/afile"))
    out += [
        Trial("diffusion.timesteps=1 with a grid", want="0", argv=[*T, "diffusion.timesteps=1", "run.sample_steps=0",
                                                    "run.sample_every=3"]),
        Trial("eval.every without eval.inception", [*T, "eval.every=3", "eval.metric=fid"]),
        Trial("eval.ref missing", [*T, "eval.every=3", "eval.metric=digits", "eval.ref=/nonexistent"]),
        Trial("data.image_size mismatching the data", [*T, "data.image_size=16"]),
        Trial("data.channels mismatching the data", [*T, "data.channels=3"]),
    ]  # fmt: skip
    cfg = [sys.executable, "-m", "ddpm_dist.train", "--config"]
    files = {
        "config missing": ("", "{W}/nope.yaml"),
        "config empty": (": > {W}/c.yaml", "{W}/c.yaml"),
        "config UTF-16": ("printf 'model:\\n  ch: 16\\n' | iconv -t UTF-16 > {W}/c.yaml", "{W}/c.yaml"),
        "config invalid YAML": ("printf 'model: [\\n' > {W}/c.yaml", "{W}/c.yaml"),
        "config duplicate key": (f"cp {TINY} {{W}}/c.yaml && printf 'train:\\n  lr: 0.5\\n' >> {{W}}/c.yaml",
                                 "{W}/c.yaml"),
        "config a list": ("printf -- '- 1\\n- 2\\n' > {W}/c.yaml", "{W}/c.yaml"),
        "config binary": ("head -c 300 /bin/sh > {W}/c.yaml", "{W}/c.yaml"),
        "config a directory": ("mkdir -p {W}/cdir", "{W}/cdir"),
    }  # fmt: skip
    for name, (setup, path) in files.items():
        out.append(Trial(name, [*cfg, path, "data.path={D}", "run.out_dir={R}"], setup=setup))
    out.append(Trial("unknown CLI flag", [*T, "--nosuch"]))

    # data damage (each in its own copy of D)
    dd = [*T[:5], "data.path={W}/D", "run.out_dir={R}"]
    out += [
        Trial("manifest count edited", dd, setup="cp -r {D} {W}/D && sed -i 's/\"count\": [0-9]*/\"count\": 5/' "
              "{W}/D/manifest.json"),
        Trial("manifest missing", dd, setup="cp -r {D} {W}/D && rm {W}/D/manifest.json"),
        Trial("manifest not JSON", dd, setup="cp -r {D} {W}/D && echo '{' > {W}/D/manifest.json"),
        Trial("shard bytes flipped", dd, setup="cp -r {D} {W}/D && f=$(ls {W}/D/*.mindrecord | head -1) && "
              "printf 'XXXX' | dd of=$f bs=1 seek=2000 conv=notrunc status=none"),
        Trial("shard missing", dd, setup="cp -r {D} {W}/D && rm $(ls {W}/D/*.mindrecord | head -1)"),
        Trial("shard truncated", dd, setup="cp -r {D} {W}/D && f=$(ls {W}/D/*.mindrecord | head -1) && "
              "truncate -s 1000 $f"),
    ]  # fmt: skip

    # checkpoints of the finished run R (step 3 and 6)
    ck = "{R}/checkpoints"
    resume = [*T, "train.total_steps=9", "train.ckpt_every=3"]
    out += [
        Trial("index.json []", resume, want="0", needs_run=True, setup=f"echo '[]' > {ck}/index.json"),
        Trial("index.json garbage", resume, want="0", needs_run=True, setup=f"echo 'xx' > {ck}/index.json"),
        Trial("index.json deleted", resume, want="0", needs_run=True, setup=f"rm {ck}/index.json"),
        Trial("index step contradicts the file name", [*resume, "train.keep_last=1"], want="0", needs_run=True,
              setup=f"echo '[{{\"file\": \"step_00000003.ckpt\", \"step\": 999}}]' > {ck}/index.json"),
        Trial("index entry outside the directory", resume, want="0", needs_run=True,
              setup=f"echo '[{{\"file\": \"../../x.ckpt\", \"step\": 9}}]' > {ck}/index.json"),
        Trial("newest checkpoint truncated", resume, want="0", needs_run=True, damaged=("step_00000006.ckpt",),
              setup=f"truncate -s 5000 {ck}/step_00000006.ckpt"),
        Trial("every checkpoint truncated", resume, needs_run=True,
              damaged=("step_00000003.ckpt", "step_00000006.ckpt"),
              setup=f"truncate -s 5000 {ck}/step_00000006.ckpt {ck}/step_00000003.ckpt"),
        Trial("checkpoints unreadable (another user's)", resume, needs_run=True, as_nobody=True,
              setup=f"chmod 000 {ck}/step_*.ckpt"),
        Trial("train.resume=none in a used run dir", [*T, "train.total_steps=6", "train.ckpt_every=3",
                                                     "train.resume=none"], needs_run=True),
        Trial("resume with another global batch", [*resume, "train.global_batch=16"], want="any", needs_run=True),
        Trial("resume into another model", [*resume, "model.ch=8"], needs_run=True),
        Trial("train.resume=a truncated file", [*resume, f"train.resume={ck}/step_00000003.ckpt"], needs_run=True,
              damaged=("step_00000003.ckpt",), setup=f"truncate -s 100 {ck}/step_00000003.ckpt"),
        Trial("run dir not writable (a file)", [*T[:5], "data.path={D}", "run.out_dir={W}/afile"],
              setup="touch {W}/afile"),
    ]  # fmt: skip

    # tools
    out += [
        Trial("prepare_data digits with --input", [*PREP, "--source", "digits", "--input", "X", "--output", "{W}/o"]),
        Trial("prepare_data unknown source", [*PREP, "--source", "imagenet", "--output", "{W}/o"]),
        Trial("prepare_data --image-size 0", [*PREP, "--source", "digits", "--image-size", "0", "--output", "{W}/o"]),
        Trial("prepare_data cifar10 input missing", [*PREP, "--source", "cifar10", "--input", "{W}/no.tar.gz",
                                                     "--output", "{W}/o"]),
        Trial("prepare_data cifar10 input garbage", [*PREP, "--source", "cifar10", "--input", "{W}/g.tar.gz",
                                                     "--output", "{W}/o"], setup="head -c 999 /bin/sh > {W}/g.tar.gz"),
        Trial("prepare_data output exists", [*PREP, "--source", "digits", "--output", "{D}"]),
        Trial("convert_ckpt input missing", [*CONV, "--input", "{W}/no.ckpt", "--output", "{W}/o.ckpt"]),
        Trial("convert_ckpt input garbage", [*CONV, "--input", "{W}/g.ckpt", "--output", "{W}/o.ckpt"],
              setup="head -c 999 /bin/sh > {W}/g.ckpt"),
        Trial("convert_ckpt output suffix", [*CONV, "--input", f"{ck}/step_00000006.ckpt", "--output", "{W}/o.txt"],
              needs_run=True),
        Trial("sample garbage ckpt", [*SAMPLE, "--ckpt", "{W}/g.ckpt", "--out", "{W}/s"],
              setup="head -c 999 /bin/sh > {W}/g.ckpt"),
        Trial("sample --steps 0", [*SAMPLE, "--ckpt", f"{ck}/step_00000006.ckpt", "--out", "{W}/s", "--sampler",
                                   "ddim", "--steps", "0"], needs_run=True),
        Trial("sample --num-samples -1", [*SAMPLE, "--ckpt", f"{ck}/step_00000006.ckpt", "--out", "{W}/s",
                                          "--num-samples", "-1"], needs_run=True),
        Trial("sample --seed 2^32", [*SAMPLE, "--ckpt", f"{ck}/step_00000006.ckpt", "--out", "{W}/s",
                                     "--seed", "4294967296"], needs_run=True),
        Trial("sample --sampler foo", [*SAMPLE, "--ckpt", "{W}/x.ckpt", "--out", "{W}/s", "--sampler", "foo"]),
        Trial("eval samples missing", [*EVAL, "--metric", "digits", "--samples", "{W}/no.npz"]),
        Trial("eval samples garbage", [*EVAL, "--metric", "digits", "--samples", "{W}/g.npz"],
              setup="head -c 999 /bin/sh > {W}/g.npz"),
        Trial("sample --labels on an unconditional model", [*SAMPLE, "--ckpt", f"{ck}/step_00000006.ckpt", "--out",
                                                             "{W}/s", "--labels", "3"], needs_run=True),
        Trial("sample --guidance on an unconditional model", [*SAMPLE, "--ckpt", f"{ck}/step_00000006.ckpt",
                                                               "--out", "{W}/s", "--guidance", "2"], needs_run=True),
        Trial("sample --labels nonsense (conditional model)",
              [*SAMPLE, "--ckpt", "{W}/C/checkpoints/step_00000001.ckpt", "--out", "{W}/s", "--labels", "all-x"],
              setup=f"{sys.executable} -m ddpm_dist.train --config {TINY} data.path={{D}} run.out_dir={{W}}/C "
              "model.num_classes=10 train.total_steps=1 train.ckpt_every=1 > /dev/null 2>&1"),
        Trial("prepare_data lsun input missing", [*PREP, "--source", "lsun", "--input", "{W}/no_lmdb",
                                                  "--image-size", "8", "--output", "{W}/o"]),
        Trial("prepare_data lsun input not an LMDB",
              [*PREP, "--source", "lsun", "--input", "{W}/d", "--image-size", "8", "--output", "{W}/o"],
              setup="mkdir -p {W}/d && echo x > {W}/d/data.mdb"),
        Trial("prepare_data --shards 0", [*PREP, "--source", "digits", "--shards", "0", "--output", "{W}/o"]),
        Trial("prepare_data folder of no images",
              [*PREP, "--source", "folder", "--input", "{W}/d", "--image-size", "8", "--output", "{W}/o"],
              setup="mkdir -p {W}/d && echo x > {W}/d/a.txt"),
        Trial("prepare_data --split fit for cifar10", [*PREP, "--source", "cifar10", "--split", "fit", "--input",
                                                       "{W}/no.tar.gz", "--output", "{W}/o"]),
        Trial("eval nll without --data", [*EVAL, "--metric", "nll", "--ckpt", f"{ck}/step_00000006.ckpt"],
              needs_run=True),
        Trial("eval nll garbage ckpt", [*EVAL, "--metric", "nll", "--ckpt", "{W}/g.ckpt", "--data", "{D}"],
              setup="head -c 999 /bin/sh > {W}/g.ckpt"),
        Trial("eval nll --nll-steps 1", [*EVAL, "--metric", "nll", "--ckpt", f"{ck}/step_00000006.ckpt", "--data",
                                         "{D}", "--nll-steps", "1"], needs_run=True),
        Trial("eval nll data of another size", [*EVAL, "--metric", "nll", "--ckpt", f"{ck}/step_00000006.ckpt",
                                                "--data", "{W}/D16"], needs_run=True,
              setup=f"{sys.executable} {ROOT / 'tools' / 'prepare_data.py'} --source digits --output {{W}}/D16 "
              "> /dev/null 2>&1"),
        Trial("eval fid without inception", [*EVAL, "--samples", "{W}/s.npz", "--ref", "{D}"],
              setup=f"{sys.executable} -c \"import numpy as np; np.savez('{{W}}/s.npz', np.zeros((4, 8, 8, 1), "
              "np.uint8))\""),
    ]  # fmt: skip

    # the launcher (msrun, 2 workers)
    lt = dict(msrun=True, timeout=300)
    out += [
        Trial("L DEVICE_NUM=abc", L, env={**LENV, "DEVICE_NUM": "abc"}, **lt),
        Trial("L NNODES=0", L, env={**LENV, "NNODES": "0"}, **lt),
        Trial("L MASTER_PORT=70000", L, env={**LENV, "MASTER_PORT": "70000"}, **lt),
        Trial("L BIND_CORE=yes", L, env={**LENV, "BIND_CORE": "yes"}, **lt),
        Trial("L config missing", ["bash", str(ROOT / "launch" / "run_8p.sh"), "{W}/no.yaml"], env=LENV, **lt),
        Trial("L 3 workers for batch 8", L, env={**LENV, "DEVICE_NUM": "3"}, **lt),
        Trial("L data.path=/nonexistent", [*L, "data.path=/nonexistent"], env=LENV, **lt),
        Trial("L train.grad_accum=8", [*L, "train.grad_accum=8"], env=LENV, **lt),
        Trial("L MASTER_ADDR=no.such.host.invalid", L, env={**LENV, "MASTER_ADDR": "no.such.host.invalid"}, **lt),
        Trial("L MASTER_ADDR unroutable", L, env={**LENV, "MASTER_ADDR": "10.255.255.1"}, **lt),
        Trial("L MASTER_PORT taken", L, env={**LENV, "MASTER_PORT": "{TAKEN}"}, **lt),
        Trial("L ENTRY=sample.py garbage --ckpt", ["bash", str(ROOT / "launch" / "run_8p.sh"), "--ckpt", "{W}/g.ckpt",
                                                   "--out", "{W}/s"],
              env={**LENV, "ENTRY": str(ROOT / "tools" / "sample.py")}, setup="head -c 999 /bin/sh > {W}/g.ckpt",
              **lt),
        Trial("L train.resume=none in a used run dir", [*L, *RUN6, "train.resume=none"], env=LENV, needs_run=True,
              **lt),
        Trial("L every checkpoint truncated", [*L, "train.total_steps=9"], env=LENV, needs_run=True,
              damaged=("step_00000003.ckpt", "step_00000006.ckpt"),
              setup=f"truncate -s 5000 {ck}/step_00000006.ckpt {ck}/step_00000003.ckpt", **lt),
    ]  # fmt: skip
    return out


def _fill(s: str, ph: dict) -> str:
    for k, v in ph.items():
        s = s.replace("{" + k + "}", v)
    return s


def run_trial(trial: Trial, *, data: Path, base_run: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    run = work / "R"
    if trial.needs_run:
        shutil.copytree(base_run, run)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ph = {"D": str(data), "R": str(run), "W": str(work), "TAKEN": str(taken.getsockname()[1])}
    try:
        if trial.setup:
            subprocess.run(["bash", "-c", _fill(trial.setup, ph)], check=True)
        before = _hashes(run)
        argv = [_fill(a, ph) for a in trial.argv]
        child_env = env(**{k: _fill(v, ph) for k, v in trial.env.items()})
        if trial.msrun:
            child_env.setdefault("MASTER_PORT", str(free_port()))
        if trial.as_nobody:  # a user namespace: the same uid without root's power over others' file modes
            argv = ["unshare", "-U", *argv]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=work, start_new_session=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=trial.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's msrun and workers too
            out, err = proc.communicate()
            rc = "timeout"
        seconds = time.monotonic() - t0
    finally:
        taken.close()
    after = _hashes(run)
    # lost: a file changed in place, or gone while no newer checkpoint exists (retention of older files is fine)
    newest_after = max((int(n[5:13]) for n in after), default=-1)
    lost = sorted(
        n
        for n, h in before.items()
        if n not in trial.damaged and (n in after and after[n] != h or n not in after and int(n[5:13]) >= newest_after)
    )
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    traceback = "Traceback (most recent call last)" in err + out
    failed = rc != 0
    return {
        "name": trial.name,
        "want": trial.want,
        "rc": rc,
        "rc_ok": {"2": rc == 2, "fault": rc not in (0, 2), "0": rc == 0, "any": rc != "timeout"}[trial.want],
        "one_line": failed and len(errors) == 1 and not traceback,
        "traceback": traceback,
        "data_loss": lost,
        "seconds": round(seconds, 1),
        "stderr_tail": err.strip().splitlines()[-3:],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="run the trials whose name contains this")
    p.add_argument("--skip-msrun", action="store_true", help="leave out the launcher trials (they take minutes)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    return run_main(lambda: run(args))


def run(args) -> int:
    """Prepare the shared data set and run, run every chosen trial, print (and write) the JSON document; 0."""
    chosen = [t for t in trials() if (not args.only or args.only in t.name) and not (args.skip_msrun and t.msrun)]
    tmp = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    try:
        data = tmp / "D8"
        subprocess.run([*PREP, "--source", "digits", "--output", str(data), "--image-size", "8"], check=True,
                       env=env(), capture_output=True)  # fmt: skip
        base = tmp / "R"
        subprocess.run([*[_fill(a, {"D": str(data), "R": str(base)}) for a in T], *RUN6], check=True, env=env(),
                       capture_output=True, cwd=tmp)  # fmt: skip
        results = []
        for i, trial in enumerate(chosen):
            r = run_trial(trial, data=data, base_run=base, work=tmp / f"t{i:03d}")
            print(json.dumps(r), file=sys.stderr, flush=True)
            results.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [r for r in results if r["rc"] != 0]
    summary = {
        "trials": len(results),
        "rc_as_contract": sum(r["rc_ok"] for r in results),
        "failing_trials": len(failed),
        "one_line": sum(r["one_line"] for r in failed),
        "tracebacks": sum(r["traceback"] for r in results),
        "data_loss": sum(bool(r["data_loss"]) for r in results),
        "timeouts": sum(r["rc"] == "timeout" for r in results),
        "seconds_max": max((r["seconds"] for r in results), default=0),
    }
    doc = {"summary": summary, "trials": results}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
