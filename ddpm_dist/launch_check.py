"""Pre-flight checks of ``launch/run_8p.sh``, before msrun starts anything (no MindSpore import).

    python -m ddpm_dist.launch_check --device-num 8 --nnodes 1 --node-rank 0 --master-addr 127.0.0.1 \
        --master-port 8118 --cluster-timeout 600 [--config CONFIG [key=value ...]]

Each mistake is one line ``error: ...`` on stderr and exit status 2 (3 when node 0's scheduler never answers), found
here in a second instead of as a traceback inside the workers or after CLUSTER_TIMEOUT: the launcher variables must
be integers in range and BIND_CORE True or False; with ``--config`` the config must load, ``train.global_batch``
must divide over all workers and each worker's share over ``train.grad_accum``; ``MASTER_ADDR`` must resolve, and
on node 0 (also with one node, which hosts the scheduler) be an address of this machine with ``MASTER_PORT`` free to
listen on; with several nodes it must be node 0's non-loopback address, and the other nodes wait (at most
CLUSTER_TIMEOUT seconds) until node 0's scheduler accepts connections. Prints nothing on success, except the line
saying a node waits for the scheduler.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from collections.abc import Sequence

from .cli_util import Parser, fail

# variable -> (lowest, highest) allowed value
_LIMITS = {
    "DEVICE_NUM": (1, 4096),
    "NNODES": (1, 65536),
    "MASTER_PORT": (1, 65535),
    "CLUSTER_TIMEOUT": (1, 7 * 24 * 3600),
}


class LaunchError(ValueError):
    """A launcher setting that cannot work; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def parse_int(name: str, text: str, low: int, high: int) -> int:
    """``text`` as an int in [low, high], or LaunchError naming the variable."""
    try:
        value = int(text.strip())
    except ValueError:
        raise LaunchError(f"{name}={text!r}: must be an integer in [{low}, {high}]") from None
    if not low <= value <= high:
        raise LaunchError(f"{name}={value}: must be in [{low}, {high}]")
    return value


def check_numbers(args) -> dict:
    """The launcher variables as ints; NODE_RANK must be in [0, NNODES)."""
    v = {name: parse_int(name, getattr(args, name.lower()), *limits) for name, limits in _LIMITS.items()}
    v["NODE_RANK"] = parse_int("NODE_RANK", args.node_rank, 0, v["NNODES"] - 1)
    return v


def check_bind_core(text: str) -> None:
    """BIND_CORE is msrun's ``--bind_core`` switch: True or False (msrun's own dict form is not offered here)."""
    if text not in ("True", "False"):
        raise LaunchError(f"BIND_CORE must be True or False (got {text!r})")


def check_config(path: str, overrides: Sequence[str], workers: int) -> None:
    """The config must load, its global batch divide over ``workers`` and each worker's share over
    ``train.grad_accum`` (the trainer's own check, found here before the workers start)."""
    from .config import ConfigError, load_config, per_worker_batch

    try:
        cfg = load_config(path, overrides)
        per_worker_batch(cfg.train.global_batch, workers, cfg.train.grad_accum)
    except ConfigError as err:
        raise LaunchError(str(err)) from None


def check_master(addr: str, port: int, node: int, nnodes: int) -> tuple:
    """Where node 0's scheduler listens (a socket address); LaunchError when MASTER_ADDR cannot be right."""
    addr = addr.strip("[]")
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:  # sends nothing: looks up the route (msrun's own test)
            s.connect(sockaddr)
            local = s.getsockname()[0] == sockaddr[0]
    except OSError as err:
        raise LaunchError(f"MASTER_ADDR={addr}: {err.strerror or err}") from None
    if nnodes > 1 and ipaddress.ip_address(sockaddr[0].split("%")[0]).is_loopback:
        if node == 0:
            raise LaunchError(
                f"MASTER_ADDR={addr} is a loopback address, but NNODES={nnodes}: the other nodes cannot reach it; "
                "give node 0's network address"
            )
        raise LaunchError(f"MASTER_ADDR={addr} is this node's own address, but NODE_RANK={node}: give node 0's address")
    if node == 0 and not local:
        raise LaunchError(f"NODE_RANK=0 runs the scheduler, but MASTER_ADDR={addr} is not an address of this node")
    if node != 0 and local:
        raise LaunchError(f"MASTER_ADDR={addr} is this node's own address, but NODE_RANK={node}: give node 0's address")
    return sockaddr


def check_port_free(sockaddr: tuple, addr: str, port: int) -> None:
    """Node 0's scheduler will listen on MASTER_ADDR:MASTER_PORT: it must be free to bind now (SO_REUSEADDR, as a
    server binds it: a port only in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as err:
            raise LaunchError(
                f"MASTER_PORT={port}: cannot listen on {addr}:{port} for msrun's scheduler ({err.strerror or err}); "
                "another job may be using it: choose another MASTER_PORT"
            ) from None


def wait_for_scheduler(sockaddr: tuple, addr: str, port: int, timeout: float) -> None:
    """Block until node 0's scheduler accepts a connection, or LaunchError (exit 3) after ``timeout`` seconds."""
    deadline, said = time.monotonic() + timeout, False
    while True:
        try:
            wait = max(0.5, min(5.0, deadline - time.monotonic()))
            socket.create_connection(sockaddr[:2], timeout=wait).close()
            return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"no scheduler answered at MASTER_ADDR={addr} MASTER_PORT={port} within CLUSTER_TIMEOUT="
                    f"{timeout:.0f}s ({err.strerror or err}): is it node 0's address, MASTER_PORT the same on every "
                    "node and open on node 0, and node 0 started?",
                    3,
                ) from None
            if not said:
                print(f"waiting up to {timeout:.0f}s for node 0's scheduler at {addr}:{port}", flush=True)
                said = True
            time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m ddpm_dist.launch_check", description=__doc__.splitlines()[0])
    for name in ("device-num", "nnodes", "node-rank", "master-port", "cluster-timeout"):
        p.add_argument(f"--{name}", required=True, help=f"{name.upper().replace('-', '_')} as given to the launcher")
    p.add_argument("--master-addr", required=True)
    p.add_argument("--bind-core", default="True", help="BIND_CORE as given to the launcher (True or False)")
    p.add_argument("--config", help="the training config (omit for ENTRY scripts)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = p.parse_args(argv)
    try:
        v = check_numbers(args)
        check_bind_core(args.bind_core)
        workers = v["DEVICE_NUM"] * v["NNODES"]
        if args.config is not None:
            check_config(args.config, args.overrides, workers)
        sockaddr = check_master(args.master_addr, v["MASTER_PORT"], v["NODE_RANK"], v["NNODES"])
        if v["NODE_RANK"] == 0:
            check_port_free(sockaddr, args.master_addr, v["MASTER_PORT"])
        else:
            wait_for_scheduler(sockaddr, args.master_addr, v["MASTER_PORT"], v["CLUSTER_TIMEOUT"])
    except LaunchError as err:
        return fail(str(err), err.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
