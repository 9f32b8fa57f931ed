"""Test "hosts" on one machine: network namespaces on a bridge, for multi-host fault tests.

Each host is a network namespace (`ip netns`) with its own address on a veth pair whose
other end is on a bridge in the root namespace, and its own hostname (a UTS namespace per
process), so a worker started there is, to the network and to `steadyflow status`, another
machine. The services of this machine listen on 127.0.0.1 only, which a namespace cannot
reach: socat forwarders in the root namespace listen on the bridge's address and relay to
them. A network cut is an iptables rule INSIDE one host's namespace (DROP, the silent kind:
the peer never hears of it, as with a pulled cable), so the root namespace's own firewall
is never touched, and deleting the namespace deletes the rule.

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmarking test networks): a
/24 no route on this machine uses yet. Every name carries the creating process's pid and a
random tag, so runs side by side do not meet, and `sweep_stale` removes what a run killed
before its cleanup left behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from steadyflow.state.store import pid_alive

PREFIX = "sfmh"  # every namespace (sfmh-<pid>-<tag>-<host>) and bridge alias starts so
_NS = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]+)-\w+")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _kill_all_in(ns: str) -> None:
    """SIGKILL the processes of a namespace this module made (workers a test started)."""
    for _ in range(20):
        pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def sweep_stale() -> None:
    """Remove namespaces and bridges of runs whose process is gone (killed mid-test)."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS.match(name)
        if match and not pid_alive(int(match.group(1))):
            _kill_all_in(name)
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        parts = line.split()
        if "alias" in parts:
            alias = parts[parts.index("alias") + 1]
            match = re.fullmatch(rf"{PREFIX}-(\d+)-[0-9a-f]+", alias)
            if match and not pid_alive(int(match.group(1))):
                sh("ip", "link", "del", parts[1].rstrip(":").split("@")[0], check=False)


@dataclass
class Host:
    """One namespace on the lab's bridge."""

    lab: Lab
    name: str  # its hostname
    ns: str
    address: str
    cuts: list[list[str]] = field(default_factory=list)

    def popen(self, argv: Sequence[str], stdout: IO[str], env: dict[str, str]
              ) -> subprocess.Popen[bytes]:
        """Start a process in this host; its pid is the program's own (every step execs)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c",
             'hostname "$0" && exec "$@"', self.name, *argv],
            stdout=stdout, stderr=subprocess.STDOUT, env=env)

    def iptables(self, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns, "iptables", "-w", "5", *args)

    def cut(self, ports: Sequence[int], reset: bool = False) -> None:
        """Drop every packet between this host and the lab's gateway on `ports`, both
        ways: connections already open go silent (no RST, no FIN), new ones never open.
        With `reset`, this host's packets are answered by a TCP reset instead: every call
        fails at once, as when the peer's host is up but its port is closed."""
        gw = self.lab.gateway
        for port in ports:
            rules = [["OUTPUT", "-p", "tcp", "-d", gw, "--dport", str(port), "-j", "REJECT",
                      "--reject-with", "tcp-reset"]] if reset else [
                ["OUTPUT", "-p", "tcp", "-d", gw, "--dport", str(port), "-j", "DROP"],
                ["INPUT", "-p", "tcp", "-s", gw, "--sport", str(port), "-j", "DROP"]]
            for rule in rules:  # (a reset comes from the gateway's address: not dropped)
                self.iptables("-I", *rule)
                self.cuts.append(rule)

    def restore(self) -> None:
        while self.cuts:
            self.iptables("-D", *self.cuts.pop())


class Lab:
    """A bridge in the root namespace, hosts on it, and forwarders to local services."""

    def __init__(self) -> None:
        sh("iptables", "-V")  # the tool must exist before anything is made
        self.tag = uuid.uuid4().hex[:6]
        self.alias = f"{PREFIX}-{os.getpid()}-{self.tag}"
        self.bridge = f"sfb{self.tag}"
        self.hosts: list[Host] = []
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self._links: list[str] = []
        self._made_bridge = False
        self.gateway = ""
        self._prefix = ""
        try:
            self._make_bridge()
        except BaseException:
            self.close()
            raise

    def _free_subnet(self) -> str:
        used = sh("ip", "-4", "route", "show").stdout
        octets = list(range(256))
        random.shuffle(octets)
        for third in octets:
            if f"198.18.{third}." not in used:
                return f"198.18.{third}"
        raise RuntimeError("no free /24 in 198.18.0.0/16")

    def _make_bridge(self) -> None:
        self._prefix = self._free_subnet()
        self.gateway = f"{self._prefix}.1"
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        sh("ip", "link", "set", self.bridge, "alias", self.alias)
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        n = len(self.hosts)
        ns = f"{self.alias}-{name}"
        veth, peer = f"sfv{self.tag}{n}", f"sfp{self.tag}{n}"
        address = f"{self._prefix}.{10 + n}"
        sh("ip", "netns", "add", ns)
        host = Host(self, name, ns, address)
        self.hosts.append(host)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        self._links.append(veth)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "link", "set", peer, "netns", ns)
        inside = ["ip", "netns", "exec", ns, "ip"]
        sh(*inside, "link", "set", peer, "name", "eth0")
        sh(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        sh(*inside, "link", "set", "eth0", "up")
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "route", "add", "default", "via", self.gateway)
        return host

    def forward(self, port: int, to_port: int | None = None) -> None:
        """Relay gateway:port to 127.0.0.1:to_port (a socat process; one child per
        connection, all in one process group so `close` ends them together)."""
        proc = subprocess.Popen(
            ["socat", f"TCP-LISTEN:{port},bind={self.gateway},reuseaddr,fork,backlog=256",
             f"TCP:127.0.0.1:{to_port or port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.forwarders.append(proc)
        wait_port(self.gateway, port, 10, proc)

    def close(self) -> None:
        """Everything this lab made, whatever state the test left it in."""
        for host in self.hosts:
            _kill_all_in(host.ns)
            sh("ip", "netns", "del", host.ns, check=False)
        for proc in self.forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for link in self._links:  # gone with their namespace's end; a half-made one is not
            sh("ip", "link", "del", link, check=False)
        if self._made_bridge:
            sh("ip", "link", "del", self.bridge, check=False)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_port(host: str, port: int, timeout: float,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process for {host}:{port} exited "
                                   f"({proc.returncode})") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
