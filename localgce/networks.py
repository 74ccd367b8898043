"""VPC networks and subnetworks: `networks.get` and `subnetworks.get`, which `invoke doctor` reads.

Every project has the `default` network in auto mode, as a new GCE project does: one subnetwork
named `default` in every region, Private Google Access off. The `networks` knob adds networks in
custom mode, `{"my-net": {"subnetworks": {"us-central1": {"my-subnet":
{"privateIpGoogleAccess": true}}}}}`; a `default` entry replaces the auto-mode default network
(its subnetworks are then only those listed), and `"default": null` removes it, as in a project
whose organization skips default network creation. A name that is not there answers GCE's 404
(docs/gce-behaviour.md, "Networks, subnetworks and the way out"). The resources carry the fields
of the Compute discovery document's `Network` and `Subnetwork` schemas.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re

from localgce import links
from localgce.errors import invalid, not_found
from localgce.httpserver import Request
from localgce.state import Store

DEFAULT_NETWORK = "default"
DEFAULT_MTU_BYTES = 1460
CREATED = "1969-12-31T16:00:00.000-08:00"
# The auto-mode ranges GCE gives the default network's subnetworks in these regions; the
# network's `subnetworks` list names these and the regions of zones localgce has seen.
AUTO_MODE_RANGES = {
    "us-central1": "10.128.0.0/20",
    "europe-west1": "10.132.0.0/20",
    "us-west1": "10.138.0.0/20",
    "asia-east1": "10.140.0.0/20",
    "us-east1": "10.142.0.0/20",
    "us-east4": "10.150.0.0/20",
    "europe-west4": "10.164.0.0/20",
}
_REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SUBNET_KEYS = {"privateIpGoogleAccess", "ipCidrRange"}


def validate_networks(value) -> dict:
    """The `networks` knob: {network: {"subnetworks": {region: {name: {...}}}} or null};
    bad input → 400 saying what is wrong."""
    example = '{"my-net": {"subnetworks": {"us-central1": {"my-subnet": {}}}}}'
    if not isinstance(value, dict):
        raise invalid(f"networks must be a JSON object, e.g. {example}")
    clean: dict = {}
    owner: dict[tuple[str, str], str] = {}
    for network, spec in value.items():
        if not isinstance(network, str) or not links.NAME_RE.match(network):
            raise invalid(f"networks: {network!r} is not a valid network name (RFC 1035)")
        if spec is None:
            if network != DEFAULT_NETWORK:
                raise invalid(f"networks[{network!r}]: only 'default' can be null (removed)")
            clean[network] = None
            continue
        if not isinstance(spec, dict) or set(spec) - {"subnetworks"}:
            raise invalid(f"networks[{network!r}] must be an object with only 'subnetworks'")
        regions = spec.get("subnetworks", {})
        if not isinstance(regions, dict):
            raise invalid(f"networks[{network!r}].subnetworks must be {{region: {{name: {{}}}}}}")
        clean_regions: dict = {}
        for region, subnets in regions.items():
            if not isinstance(region, str) or not _REGION_RE.match(region):
                raise invalid(f"networks[{network!r}]: {region!r} is not a region (us-central1)")
            if not isinstance(subnets, dict):
                raise invalid(f"networks[{network!r}].subnetworks[{region!r}] must be an object")
            clean_regions[region] = {}
            for name, props in subnets.items():
                where = f"networks[{network!r}].subnetworks[{region!r}][{name!r}]"
                clean_regions[region][name] = _subnet_props(where, name, props)
                if (region, name) in owner:
                    raise invalid(
                        f"{where}: subnetwork {name} in {region} is already in network "
                        f"{owner[(region, name)]}; subnetwork names are unique per region"
                    )
                owner[(region, name)] = network
        clean[network] = {"subnetworks": clean_regions}
    if DEFAULT_NETWORK not in clean:
        clash = sorted(region for region, name in owner if name == DEFAULT_NETWORK)
        if clash:
            raise invalid(
                f"networks: a subnetwork named 'default' in {clash[0]} clashes with the default "
                "network's own; rename it, or replace or remove the default network"
            )
    return clean


def _subnet_props(where: str, name, props) -> dict:
    if not isinstance(name, str) or not links.NAME_RE.match(name):
        raise invalid(f"{where}: not a valid subnetwork name (RFC 1035)")
    if not isinstance(props, dict) or set(props) - _SUBNET_KEYS:
        raise invalid(f"{where} must be an object with only {sorted(_SUBNET_KEYS)}")
    access = props.get("privateIpGoogleAccess", False)
    if not isinstance(access, bool):
        raise invalid(f"{where}.privateIpGoogleAccess must be true or false")
    clean = {"privateIpGoogleAccess": access}
    if "ipCidrRange" in props:
        try:
            clean["ipCidrRange"] = str(ipaddress.IPv4Network(props["ipCidrRange"]))
        except (TypeError, ValueError):
            raise invalid(
                f"{where}.ipCidrRange must be an IPv4 range such as 10.0.0.0/24"
            ) from None
    return clean


def _numeric_id(text: str) -> str:
    return str(10**15 + int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) % 10**15)


def _auto_range(region: str) -> str:
    """GCE's auto-mode range where known, else a stable /20 of 10.192.0.0/11."""
    if region in AUTO_MODE_RANGES:
        return AUTO_MODE_RANGES[region]
    block = int(hashlib.sha256(region.encode()).hexdigest()[:8], 16) % 128
    return f"10.{192 + block // 16}.{(block % 16) * 16}.0/20"


def _custom_range(network: str, region: str, name: str) -> str:
    block = int(hashlib.sha256(f"{network}/{region}/{name}".encode()).hexdigest()[:8], 16)
    return f"172.{16 + block % 16}.{(block // 16) % 256}.0/24"


class Networks:
    def __init__(self, store: Store):
        self.store = store

    # --- the model --------------------------------------------------------------------------
    def _spec(self, network: str) -> tuple[bool, dict] | None:
        """(auto mode, {region: {subnet: props}}) of `network`, or None when it does not exist
        (the knob is replaced, never mutated: no lock needed)."""
        knob = self.store.knobs.networks
        if network in knob:
            spec = knob[network]
            return None if spec is None else (False, spec["subnetworks"])
        if network == DEFAULT_NETWORK:
            return True, {}
        return None

    def _seen_regions(self) -> list[str]:
        with self.store.lock:
            zones = set(self.store.knobs.zone_accelerators) | {k.zone for k in self.store.instances}
            quota_regions = set(self.store.knobs.quotas) - {"global"}
        regions = {z.rsplit("-", 1)[0] for z in zones} | quota_regions | set(AUTO_MODE_RANGES)
        return sorted(r for r in regions if _REGION_RE.match(r))

    def _subnet(self, network: str, region: str, name: str) -> dict | None:
        spec = self._spec(network)
        if spec is None:
            return None
        auto, regions = spec
        if auto:
            if name != network:
                return None
            return {"privateIpGoogleAccess": False, "ipCidrRange": _auto_range(region)}
        props = regions.get(region, {}).get(name)
        if props is None:
            return None
        return {"ipCidrRange": _custom_range(network, region, name), **props}

    def _owner(self, region: str, name: str) -> str | None:
        """The network that has subnetwork `name` in `region`, if any."""
        for network, spec in self.store.knobs.networks.items():
            if spec is not None and name in spec["subnetworks"].get(region, {}):
                return network
        if self._subnet(DEFAULT_NETWORK, region, name) is not None:
            return DEFAULT_NETWORK
        return None

    # --- resources --------------------------------------------------------------------------
    def _network_resource(self, project: str, network: str, auto: bool, regions: dict) -> dict:
        if auto:
            names = [(region, network) for region in self._seen_regions()]
        else:
            names = [(r, n) for r in sorted(regions) for n in sorted(regions[r])]
        path = f"projects/{project}/global/networks/{network}"
        number = _numeric_id(path)
        return {
            "kind": "compute#network",
            "id": number,
            "creationTimestamp": CREATED,
            "name": network,
            "description": "Default network for the project" if auto else "",
            "selfLink": links.url(path),
            "selfLinkWithId": links.url(f"projects/{project}/global/networks/{number}"),
            "autoCreateSubnetworks": auto,
            "subnetworks": [
                links.url(f"projects/{project}/regions/{r}/subnetworks/{n}") for r, n in names
            ],
            "routingConfig": {"routingMode": "REGIONAL"},
            "mtu": DEFAULT_MTU_BYTES,
            "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
        }

    def get(self, req: Request, project: str, network: str) -> dict:
        spec = self._spec(network)
        if spec is None:
            raise not_found(f"projects/{project}/global/networks/{network}")
        return self._network_resource(project, network, *spec)

    def get_subnetwork(self, req: Request, project: str, region: str, subnetwork: str) -> dict:
        missing = not_found(f"projects/{project}/regions/{region}/subnetworks/{subnetwork}")
        network = self._owner(region, subnetwork)
        props = self._subnet(network, region, subnetwork) if network else None
        if network is None or props is None:
            raise missing
        cidr = ipaddress.IPv4Network(props["ipCidrRange"])
        path = f"projects/{project}/regions/{region}/subnetworks/{subnetwork}"
        return {
            "kind": "compute#subnetwork",
            "id": _numeric_id(path),
            "creationTimestamp": CREATED,
            "name": subnetwork,
            "description": "",
            "network": links.url(f"projects/{project}/global/networks/{network}"),
            "ipCidrRange": str(cidr),
            "gatewayAddress": str(cidr.network_address + 1),
            "region": links.url(f"projects/{project}/regions/{region}"),
            "selfLink": links.url(path),
            "privateIpGoogleAccess": props["privateIpGoogleAccess"],
            "fingerprint": base64.urlsafe_b64encode(
                hashlib.sha256(repr(sorted(props.items())).encode()).digest()[:8]
            ).decode(),
            "purpose": "PRIVATE",
            "stackType": "IPV4_ONLY",
        }
