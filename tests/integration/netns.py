"""More than one machine on one machine: Linux network namespaces on a bridge, made and removed here.

    reason = permitted()                  # None, or why namespaces cannot be made here
    with network(["a", "b"]) as net:      # namespaces fleet-<token>-a, -b on bridge fl<token>b
        net.gateway                       # the bridge's address in the root namespace: serve there
        child = net.spawn("a", "worker-a", argv, env=env, log_file=path)  # a fleet Child inside "a"
        net.cut("a")                      # its link down: packets dropped both ways, no RST
        net.restore("a")

Each host is a namespace joined to a bridge in the root namespace by a veth pair; the bridge holds the
gateway address (``10.231.<n>.1/24``, a /24 no other interface of this machine uses), host i gets
``.<i + 2>``. Nothing else is routed: a host reaches the root namespace's sockets bound to the
gateway address (or 0.0.0.0), and nothing else. A host shares the machine's hostname, pids and files
(only the network is its own).

Names are short and unique per run (interface names have 15 characters at most): ``fl<token>b`` for
the bridge, ``fl<token><i>h`` / ``fl<token><i>n`` for host i's veth ends (root side / host side),
``fleet-<token>-<host>`` for the namespaces. :func:`network` always removes what it made: the
processes left in its namespaces (SIGKILL), the veths, the bridge, the namespaces. What a run killed
before its cleanup (SIGKILL of pytest) left is removed by the next run: each run registers its token
and pid under ``/run/fleet-netns/``, and a token whose pid is gone is swept.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fleet.procs import Child, pid_alive

__all__ = ["Host", "NetnsError", "Network", "network", "permitted"]

#: Host addresses are taken from 10.231.<n>.0/24, the first <n> no interface of this machine uses.
BASE = ipaddress.IPv4Network("10.231.0.0/16")
#: Where runs register their token (and pid), and the lock that serialises making networks.
STATE_DIR = Path("/run/fleet-netns")
_PREFIX = "fl"
_NS_PREFIX = "fleet-"


class NetnsError(RuntimeError):
    """An ``ip`` command failed (its argv and stderr are in the message)."""


def _ip() -> str:
    for candidate in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NetnsError("no `ip` command (iproute2) on PATH or in /usr/sbin, /sbin")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [_ip(), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


@functools.cache
def permitted() -> str | None:
    """None when this process may make network namespaces, veth pairs and bridges; else a sentence
    saying why not (for ``pytest.skip``). Probes by making (and removing) one of each."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    try:
        _ip()
    except NetnsError as exc:
        return str(exc)
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): `ip netns add` needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
    token = _token()
    ns, bridge, veth = f"{_NS_PREFIX}{token}-probe", f"{_PREFIX}{token}b", f"{_PREFIX}{token}0h"
    steps = [
        ("netns", "add", ns),
        ("link", "add", bridge, "type", "bridge"),
        ("link", "add", veth, "type", "veth", "peer", "name", f"{_PREFIX}{token}0n"),
        ("link", "set", f"{_PREFIX}{token}0n", "netns", ns),
        ("netns", "exec", ns, _ip(), "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            _run(*step)
    except NetnsError as exc:
        return f"network namespaces are not permitted here: {exc}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces are not permitted here: {type(exc).__name__}: {exc}"
    finally:
        _run("link", "del", veth, check=False)
        _run("link", "del", bridge, check=False)
        _run("netns", "del", ns, check=False)
    return None


def _token() -> str:
    return secrets.token_hex(3)[:5]


@dataclass(frozen=True)
class Host:
    """One "machine": a network namespace with one address on the bridge."""

    name: str
    netns: str
    address: str
    #: The veth end in the root namespace (on the bridge): what :meth:`Network.cut` takes down.
    link: str
    #: The veth end inside the namespace.
    peer: str


@dataclass
class Network:
    """A bridge in the root namespace and the hosts on it (made by :func:`network`)."""

    token: str
    bridge: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, Host] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """The bridge's address, in the root namespace: bind servers the hosts must reach here."""
        return str(self.subnet.network_address + 1)

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        return [_ip(), "netns", "exec", self.hosts[host].netns, *argv]

    def spawn(
        self, host: str, name: str, argv: Sequence[str], *, env: dict[str, str], log_file: Path
    ) -> Child:
        """Start ``argv`` inside ``host`` as a :class:`fleet.procs.Child` (its own session, dies with
        this process, output in ``log_file``). Stopped by the caller; :func:`network` kills whatever
        is left on the way out."""
        child = Child(name, self.argv(host, argv), env=env, log_file=log_file)
        child.start()
        self.children.append(child)
        return child

    def run(self, host: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end inside ``host``."""
        return subprocess.run(
            self.argv(host, argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def pids(self, host: str) -> list[int]:
        """Pids of every process inside ``host``'s namespace."""
        done = _run("netns", "pids", self.hosts[host].netns, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def cut(self, host: str) -> None:
        """Take ``host``'s link down (its bridge-side veth): from now on every packet between it and
        the rest is dropped, both ways, and nobody is told (no RST, no FIN: a pulled cable)."""
        _run("link", "set", self.hosts[host].link, "down")

    def restore(self, host: str) -> None:
        """Bring ``host``'s link back up (the bridge forwards at once: no STP)."""
        _run("link", "set", self.hosts[host].link, "up")

    def is_cut(self, host: str) -> bool:
        done = _run("-o", "link", "show", self.hosts[host].link)
        return "state DOWN" in done.stdout or ",UP" not in done.stdout


# -- making and removing -------------------------------------------------------------------------------


@contextmanager
def _locked() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (STATE_DIR / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    """Every IPv4 network this machine's root namespace has an address or a route in."""
    used: set[ipaddress.IPv4Network] = set()
    for line in _run("-o", "-4", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.add(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for line in _run("-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word[:1].isdigit():
                used.add(ipaddress.IPv4Network(word, strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_subnets()
    for candidate in BASE.subnets(new_prefix=24):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NetnsError(f"no free /24 left in {BASE}")


def _kill_inside(netns: str) -> None:
    pids = [int(p) for p in _run("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _remove(token: str) -> list[str]:
    """Remove every namespace, veth and bridge of ``token``; what failed (empty when all went)."""
    errors: list[str] = []
    namespaces = [
        line.split()[0]
        for line in _run("netns", "list", check=False).stdout.splitlines()
        if line.startswith(f"{_NS_PREFIX}{token}-")
    ]
    for ns in namespaces:
        _kill_inside(ns)
    links = [
        name
        for name in (p.name for p in Path("/sys/class/net").iterdir())
        if name.startswith(f"{_PREFIX}{token}") and name.endswith("h")
    ]
    for name in [*links, f"{_PREFIX}{token}b"]:
        if Path("/sys/class/net", name).exists():
            done = _run("link", "del", name, check=False)
            if done.returncode != 0 and Path("/sys/class/net", name).exists():
                errors.append(f"link {name}: {done.stderr.strip()}")
    for ns in namespaces:
        done = _run("netns", "del", ns, check=False)
        if done.returncode != 0:
            errors.append(f"netns {ns}: {done.stderr.strip()}")
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / token).unlink()
    return errors


def _sweep_stale() -> None:
    """Remove what runs that died before their cleanup left (their pid is gone)."""
    if not STATE_DIR.is_dir():
        return
    for entry in STATE_DIR.iterdir():
        if entry.name == "lock":
            continue
        try:
            pid = int(entry.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if not pid or not pid_alive(pid):
            _remove(entry.name)


@contextmanager
def network(hosts: Sequence[str]) -> Iterator[Network]:
    """A bridge with a gateway address in the root namespace and one namespace per name in ``hosts``
    on it, each with its address and ``lo`` up; all of it removed on the way out, even on error.

    Raises:
        NetnsError: an ``ip`` command failed (what was made is removed first).
    """
    if len(set(hosts)) != len(hosts) or not hosts or len(hosts) > 200:
        raise ValueError(f"expected 1-200 distinct host names, got {list(hosts)}")
    with _locked():
        _sweep_stale()
        token = _token()
        while (STATE_DIR / token).exists():
            token = _token()
        (STATE_DIR / token).write_text(str(os.getpid()))
        net = Network(token, f"{_PREFIX}{token}b", _free_subnet())
        try:
            _run("link", "add", net.bridge, "type", "bridge")
            _run("addr", "add", f"{net.gateway}/{net.subnet.prefixlen}", "dev", net.bridge)
            _run("link", "set", net.bridge, "up")
        except BaseException:
            _remove(token)
            raise
    failed = True
    try:
        for i, name in enumerate(hosts):
            host = Host(
                name=name,
                netns=f"{_NS_PREFIX}{token}-{name}",
                address=str(net.subnet.network_address + 2 + i),
                link=f"{_PREFIX}{token}{i}h",
                peer=f"{_PREFIX}{token}{i}n",
            )
            _run("netns", "add", host.netns)
            _run("link", "add", host.link, "type", "veth", "peer", "name", host.peer)
            _run("link", "set", host.peer, "netns", host.netns)
            _run("link", "set", host.link, "master", net.bridge)
            _run("link", "set", host.link, "up")
            inside = ("netns", "exec", host.netns, _ip())
            _run(*inside, "addr", "add", f"{host.address}/{net.subnet.prefixlen}", "dev", host.peer)
            _run(*inside, "link", "set", host.peer, "up")
            _run(*inside, "link", "set", "lo", "up")
            net.hosts[name] = host
        yield net
        failed = False
    finally:
        for child in net.children:
            with contextlib.suppress(Exception):
                child.stop(0.5)
        errors = _remove(token)
        if errors and not failed:
            raise NetnsError("could not remove all of network " + token + ": " + "; ".join(errors))
