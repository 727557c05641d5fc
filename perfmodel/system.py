"""Systems: devices composed into nodes, with the fabric inside a node and the network between nodes.

A system file (hardware_specs/systems/<id>.toml) names its device (a catalog id), how many sit in a node, how they are
connected (an NVSwitch, a full xGMI mesh, a PCIe tree, a TPU torus: bandwidth per device and direction, in-switch
reduction) and the node's network (NICs x rate). `--hardware dgx-h100` costs the device of the system with the
system's fabric (perfmodel.collectives.fabric_of reads it); a bare device gets its fabric by rule there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from .model import Source


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FabricSpec(_Strict):
    kind: Literal["switch", "mesh", "pcie", "torus"] = Field(
        description="switch: every device reaches every other at full bandwidth (NVSwitch); mesh: a direct link to "
                    "each peer (xGMI); pcie: through the host's PCIe switches; torus: TPU ICI")
    name: str
    bandwidth_gb_per_s: PositiveFloat = Field(description="per device, per direction, within the node")
    in_switch_reduction: bool = Field(False, description="the switch reduces (NVLink SHARP, NVSwitch gen 3 on)")
    note: str = ""


class NetworkSpec(_Strict):
    name: str
    nics: PositiveInt = Field(description="NICs of the compute fabric per node")
    nic_gb_per_s: PositiveFloat = Field(description="per NIC, per direction (400 Gb/s = 50 GB/s)")
    note: str = ""

    @property
    def bytes_per_s(self) -> float:
        return self.nics * self.nic_gb_per_s * 1e9


class System(_Strict):
    id: str
    name: str
    device: str = Field(description="catalog id of the device")
    devices_per_node: PositiveInt
    year: int | None = None
    aliases: tuple[str, ...] = ()
    fabric: FabricSpec
    network: NetworkSpec | None = None
    sources: tuple[Source, ...] = ()
    notes: str = ""
