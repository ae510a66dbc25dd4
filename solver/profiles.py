"""MIG profile names in the mig-parted grammar (spec §2.1) and the device plugin's resource names (spec §3).

Parsing is a pure function of the text and a plan reads the same few names once per pod and GPU, so the parsers
remember their recent answers (a bounded number: names come from user files).

`<G>g.<GB>gb` or `<C>c.<G>g.<GB>gb`, then optionally `+attr[,attr…]` (required attributes) or `-attr[,…]`
(excluded attributes), never both. `1g.5gb` is shorthand for `1c.1g.5gb`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from solver.errors import MigoptError

_PROFILE = re.compile(r"^(?:(?P<c>[1-9][0-9]*)c\.)?(?P<g>[1-9][0-9]*)g\.(?P<gb>[1-9][0-9]*)gb(?P<attrs>[+-].*)?$")
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*(?<!\.)$")
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


class ProfileName(BaseModel):
    """A parsed profile string; equality compares C, G, GB and the attribute set, as mig-parted matches them."""

    model_config = ConfigDict(frozen=True)

    compute_slices: int
    gpu_slices: int
    memory_gb: int
    attributes: tuple[str, ...] = ()
    excluded: bool = False

    @property
    def is_gpu_instance(self) -> bool:
        """True when one compute instance spans the whole GPU instance (the only kind the device plugin names)."""
        return self.compute_slices == self.gpu_slices

    def __str__(self) -> str:
        head = f"{self.gpu_slices}g.{self.memory_gb}gb"
        if not self.is_gpu_instance:
            head = f"{self.compute_slices}c.{head}"
        if self.attributes:
            head += ("-" if self.excluded else "+") + ",".join(self.attributes)
        return head


@lru_cache(maxsize=4096)
def parse_profile(text: str) -> ProfileName:
    """Parse a profile string, raising `MigoptError` that quotes it when it does not follow the grammar."""
    match = _PROFILE.match(text.strip())
    if match is None:
        raise MigoptError(f"malformed MIG profile {text!r}: expected <G>g.<GB>gb or <C>c.<G>g.<GB>gb, e.g. 1g.5gb")
    gpu_slices = int(match["g"])
    compute_slices = int(match["c"]) if match["c"] else gpu_slices
    if compute_slices > gpu_slices:
        raise MigoptError(f"malformed MIG profile {text!r}: {compute_slices} compute slices exceed {gpu_slices}")
    attributes: tuple[str, ...] = ()
    excluded = False
    if match["attrs"]:
        excluded = match["attrs"][0] == "-"
        parts = match["attrs"][1:].split(",")
        if any(not _ATTRIBUTE.match(part) for part in parts) or len(set(parts)) != len(parts):
            raise MigoptError(f"malformed MIG profile {text!r}: bad attribute list {match['attrs']!r}")
        attributes = tuple(sorted(parts))
    return ProfileName(
        compute_slices=compute_slices,
        gpu_slices=gpu_slices,
        memory_gb=int(match["gb"]),
        attributes=attributes,
        excluded=excluded,
    )


def resource_name(profile: str) -> str:
    """The extended resource the device plugin advertises under the `mixed` strategy: `+` becomes `.`."""
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


@lru_cache(maxsize=4096)
def profile_from_resource(resource: str) -> str:
    """Inverse of `resource_name`: `nvidia.com/mig-1g.10gb.me` → `1g.10gb+me`, validated against the grammar."""
    if not resource.startswith(MIG_RESOURCE_PREFIX):
        raise MigoptError(f"not a MIG resource: {resource!r} (expected {MIG_RESOURCE_PREFIX}<profile>)")
    body = resource[len(MIG_RESOURCE_PREFIX) :]
    match = re.match(r"^(\d+g\.\d+gb)(?:\.(.+))?$", body)
    if match is None:
        raise MigoptError(f"malformed MIG resource {resource!r}: expected {MIG_RESOURCE_PREFIX}<G>g.<GB>gb[.attr]")
    profile = match[1] + (f"+{match[2]}" if match[2] else "")
    parse_profile(profile)
    return profile
