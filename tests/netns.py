"""A second "node" on this machine: a network namespace joined to the root namespace by a veth pair.

msrun decides "I am the master" by whether MASTER_ADDR is one of this machine's addresses, so two msrun instances in
one network namespace cannot be two nodes (both start a scheduler). Inside its own namespace, node 1 has its own
interfaces and only reaches node 0 over the veth link, as it would over a real network:

    root namespace (node 0)  10.231.N.1/24  <-- veth -->  10.231.N.2/24  namespace ddpm-node1-<token> (node 1)

N is picked per run among the subnets not in use, and every name carries a random token, so concurrent runs and
leftovers of killed ones never collide. The namespace, the veth pair and every process still running inside are
removed on exit: normal, exception, pytest timeout or SIGTERM. Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SUBNET_PREFIX = "10.231"


@dataclass(frozen=True)
class SecondNode:
    """The namespace of node 1 and the addresses of both ends of its link."""

    name: str  # network namespace name
    host_ip: str  # node 0's address (root namespace end of the veth pair): the MASTER_ADDR to use
    node_ip: str  # node 1's address (inside the namespace)
    unused_ip: str  # an address in the same subnet that nobody has (a wrong MASTER_ADDR)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (same file system, user and environment; other network)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def pids(self) -> list[int]:
        """PIDs of the processes whose network namespace this is."""
        res = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []


def skip_reason() -> str | None:
    """Why a second node cannot be made here (a sentence for ``pytest.skip``), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the multi-node tests as root, e.g. in CI)"
    if shutil.which("ip") is None:
        return "the 'ip' command is missing: install iproute2 (apt-get install iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)} failed: {res.stderr.strip() or res.returncode}")
    return res


class NamespaceError(RuntimeError):
    """iproute2 refused to build the namespace (e.g. no CAP_SYS_ADMIN in this container)."""


def _free_subnet() -> int:
    used = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    candidates = [n for n in range(1, 255) if f"{SUBNET_PREFIX}.{n}." not in used]
    if not candidates:
        raise NamespaceError(f"no free {SUBNET_PREFIX}.N.0/24 subnet")
    return random.choice(candidates)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while inside: pytest then stops and runs the fixtures' clean-up (and
    ``finally`` blocks run) when CI terminates it, as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def second_node() -> Iterator[SecondNode]:
    """Create node 1's namespace and link; yield its description; always remove both (and kill what runs inside).

    Raises NamespaceError when iproute2 refuses (the caller decides whether that is a skip).
    """
    token = secrets.token_hex(3)
    name, host_if, node_if = f"ddpm-node1-{token}", f"ddpm{token}a", f"ddpm{token}b"
    with _sigterm_unwinds():
        subnet = _free_subnet()
        node = SecondNode(
            name=name,
            host_ip=f"{SUBNET_PREFIX}.{subnet}.1",
            node_ip=f"{SUBNET_PREFIX}.{subnet}.2",
            unused_ip=f"{SUBNET_PREFIX}.{subnet}.77",
        )
        try:
            _ip("netns", "add", name)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", node_if)
            _ip("link", "set", node_if, "netns", name)
            _ip("addr", "add", f"{node.host_ip}/24", "dev", host_if)
            _ip("link", "set", host_if, "up")
            _ip("-n", name, "addr", "add", f"{node.node_ip}/24", "dev", node_if)
            _ip("-n", name, "link", "set", node_if, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            yield node
        finally:
            # A namespace lives on while a process is inside it: end those (all started by this test run) first.
            _kill(node.pids())
            _ip("netns", "del", name, check=False)
            _ip("link", "del", host_if, check=False)  # normally gone with its peer; not if the namespace survived
