"""Hosts on one machine: network namespaces on one switch, for the multi-host test.

Every host is a network namespace with one veth link into a bridge (the
switch) inside the services namespace; each process started on a host also
gets the host's name (its own UTS namespace), so Celery node names, heartbeats
and the beat's lock read ``host-a``, not this machine's name. This process
reaches the switch over a link of its own (the observer), to read Redis and
PostgreSQL as an operator would.

    net = Network.create(tmp_path)                 # the services namespace, its switch, the observer link
    a = net.add_host("host-a")                     # a namespace, its link, its data folder
    proc = a.spawn(["worker", "scans"], env)       # `omni worker scans` on host-a
    net.cut(a); net.mend(a)                        # its link down (cable pulled), up again
    net.close()                                    # every process, link and namespace gone

Needs root (``ip netns add``); :func:`netns_unavailable` says why it cannot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT, OmniProcess

#: The block subnets are drawn from; a /24 already routed on this machine is never used.
_BLOCK = ipaddress.IPv4Network("10.213.0.0/16")
_SET_HOSTNAME = 'hostname "$0" && exec "$@"'


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)  # fixed argv
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can), found by making and removing one."""
    probe = f"omni-probe-{uuid.uuid4().hex[:8]}"
    try:
        done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False, timeout=30)  # fixed argv
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip() or done.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False, timeout=30)  # fixed argv
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the block that no route or address on this machine uses (another session's observer link shows here)."""
    routes = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
    candidates = [ipaddress.IPv4Network(f"{_BLOCK.network_address + 256 * i}/24") for i in range(1, 255)]
    random.shuffle(candidates)
    for subnet in candidates:
        if str(subnet.network_address).rsplit(".", 1)[0] + "." not in routes:
            return subnet
    raise RuntimeError(f"no free /24 left in {_BLOCK}")


@dataclass
class Host:
    """One host: a network namespace, its address on the switch, its link, its name and its own data folder."""

    name: str
    netns: str
    address: str
    link: str
    data_dir: Path
    processes: list[OmniProcess] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host (its network, its hostname)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c", _SET_HOSTNAME, self.name]

    def spawn(self, argv: list[str], env: dict[str, str], log_name: str | None = None) -> OmniProcess:
        """Start ``omni ARGV`` on this host in its own process group (stopped by :meth:`Network.close` at the latest)."""
        log = self.data_dir / "logs" / f"{log_name or '-'.join(argv)}.log"
        proc = OmniProcess(argv, env, log, prefix=self.prefix()).start()
        self.processes.append(proc)
        return proc

    def omni(self, env: dict[str, str], *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``omni ARGV`` on this host to its end (a command an operator types there)."""
        return subprocess.run(  # fixed argv
            [*self.prefix(), sys.executable, "-m", "omni_tasks", *argv],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip

    def pids(self) -> list[int]:
        """Every process inside this host's network namespace (all started by the test)."""
        done = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False, timeout=30)  # fixed argv
        return [int(p) for p in done.stdout.split()]


@dataclass
class Network:
    """The services namespace with its switch, the hosts linked to it, and this process's own link."""

    tag: str
    subnet: ipaddress.IPv4Network
    folder: Path
    services: Host
    observer_link: str
    hosts: list[Host] = field(default_factory=list)

    @classmethod
    def create(cls, folder: Path) -> Network:
        """The services namespace (address .1 on its switch) and a link from here (.254); hosts come with :meth:`add_host`."""
        tag = f"omh{os.getpid() % 100000}{uuid.uuid4().hex[:2]}"
        subnet = _free_subnet()
        services_ns = f"{tag}-services"
        _ip("netns", "add", services_ns)
        services = Host("services", services_ns, str(subnet[1]), "switch", folder / "services")
        network = cls(tag, subnet, folder, services, f"{tag}o")
        try:
            _ip("link", "set", "lo", "up", netns=services_ns)
            _ip("link", "add", "switch", "type", "bridge", netns=services_ns)
            _ip("addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", "switch", netns=services_ns)
            _ip("link", "set", "switch", "up", netns=services_ns)
            # This process's link onto the switch: the test reads Redis and PostgreSQL as an operator would.
            _ip("link", "add", network.observer_link, "type", "veth", "peer", "name", "observer", "netns", services_ns)
            _ip("link", "set", "observer", "master", "switch", "up", netns=services_ns)
            _ip("addr", "add", f"{subnet[254]}/{subnet.prefixlen}", "dev", network.observer_link)
            _ip("link", "set", network.observer_link, "up")
        except Exception:
            network.close()
            raise
        return network

    def add_host(self, name: str) -> Host:
        """A new host on the switch: its namespace, its link (``eth0`` inside it) and its data folder."""
        index = len(self.hosts) + 2
        host = Host(name, f"{self.tag}-{name}", str(self.subnet[index]), "eth0", self.folder / name)
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        port = f"{self.tag}p{index}"
        _ip("link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name", port, "netns", self.services.netns)
        _ip("link", "set", port, "master", "switch", "up", netns=self.services.netns)
        _ip("link", "set", "lo", "up", netns=host.netns)
        _ip("addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)
        host.data_dir.mkdir(parents=True, exist_ok=True)
        return host

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its link goes down inside its namespace; nothing reaches it or leaves it."""
        _ip("link", "set", host.link, "down", netns=host.netns)

    def mend(self, host: Host) -> None:
        """Plug it back in."""
        _ip("link", "set", host.link, "up", netns=host.netns)

    def close(self) -> None:
        """Stop every process on every host, remove the links and the namespaces. Safe to call twice, and after a failure."""
        everyone = [*self.hosts, self.services]
        procs = [proc for host in everyone for proc in reversed(host.processes)]
        for proc in procs:  # all asked at once: their warm shutdowns overlap
            proc.kill_group(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop(timeout_s=5)
        for host in everyone:
            # Whatever is left inside our namespaces was started by this test (a worker's pool child, a server).
            for pid in host.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        _ip("link", "del", self.observer_link, check=False)
        for host in everyone:
            _ip("netns", "del", host.netns, check=False)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this network still present (empty after :meth:`close`)."""
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30).stdout  # fixed argv
        links = _ip("-o", "link", "show").stdout
        found = [line.split()[0] for line in names.splitlines() if line.startswith(self.tag)]
        return found + ([self.observer_link] if f" {self.observer_link}@" in links or f" {self.observer_link}:" in links else [])
