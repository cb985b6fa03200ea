"""Our engine's bridge on the host: a free /20 of engine.network, found from the routing table.

dockerd gets the bridge we make here (`--bridge`) and runs without touching the firewall, so
this is all the network plumbing a private engine has: the bridge, its first /24, and on stop
the bridges (ours and Compose networks' br-*) holding an address inside our block.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess

from tasks.libs.core.errors import UserError


def _routes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True, text=True)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for route in json.loads(out.stdout or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or ":" in dst:
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def make_bridge(name: str, network: str) -> tuple[str, str, str]:
    """Bridge `name` on the first free /20 of network (engine.network): (name, gateway/24, block)."""
    if link_exists(name):
        delete_link(name)  # ours (the name is derived from our dir), left by a dead engine
    taken = _routes()
    for block in ipaddress.IPv4Network(network).subnets(new_prefix=20):
        if any(block.overlaps(net) for net in taken):
            continue
        first: ipaddress.IPv4Network = next(iter(block.subnets(new_prefix=24)))
        gateway = f"{first.network_address + 1}/24"
        _ip("link", "add", "name", name, "type", "bridge")
        try:
            _ip("addr", "add", gateway, "dev", name)
            _ip("link", "set", name, "up")
        except UserError:
            delete_link(name)
            raise
        return name, gateway, str(block)
    raise UserError(f"no free /20 left in engine.network {network}; pick another range")


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "delete", name], capture_output=True)


def bridges_in(block: str) -> list[str]:
    """Bridges (ours or Compose networks' br-*) holding an address inside our block."""
    out = subprocess.run(["ip", "-4", "-j", "addr", "show", "type", "bridge"], capture_output=True, text=True)
    net = ipaddress.ip_network(block)
    found = []
    for link in json.loads(out.stdout or "[]"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(addr["local"]) in net:
                    found.append(link["ifname"])
    return sorted(set(found))
