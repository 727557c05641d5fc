"""Device specification: one schema for GPUs and multicore CPUs.

Data files keep datasheet units in their keys (`bandwidth_gb_per_s`, `capacity_mib`, `dense_tflops`); everything is
converted to SI once, here. Where a datasheet gives parts (cores x clock x FLOPs/cycle, channels x MT/s x bus width),
the file stores the parts and the product is computed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator, model_validator

from .model import Source
from .pcie import PCIE_GT_PER_S, pcie_bytes_per_s
from .provenance import Figure, resolve

COMPUTE_DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")
_CAPACITY_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "mb": 1e6, "gb": 1e9, "tb": 1e12}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Processor(_Strict):
    units: PositiveInt = Field(description="SMs / CUs for a GPU, cores for a CPU")
    unit_name: str = "core"
    clock_ghz: PositiveFloat | None = Field(None, description="clock of the quoted or derived peaks")
    threads: PositiveInt | None = None
    base_clock_ghz: PositiveFloat | None = None
    all_core_clock_ghz: PositiveFloat | None = None
    max_clock_ghz: PositiveFloat | None = None
    simd: str | None = None
    simd_width_bits: PositiveInt | None = None
    fma_units_per_core: PositiveInt | None = None
    tdp_w: PositiveFloat | None = None
    matrix_clock_ghz: PositiveFloat | None = Field(
        None, description="clock the matrix units hold under a dense GEMM (power management lowers it below the "
                          "clock the peaks are quoted at), where measured")

    @property
    def matrix_clock_ratio(self) -> float:
        """Sustained matrix-unit clock over the peaks' clock: 1 where no sustained clock is given."""
        if self.matrix_clock_ghz and self.peak_clock_hz:
            return min(self.matrix_clock_ghz * 1e9 / self.peak_clock_hz, 1.0)
        return 1.0

    @property
    def peak_clock_hz(self) -> float | None:
        """The clock peaks are derived at: the stated one, else all-core turbo, else base (sustained under load)."""
        ghz = self.clock_ghz or self.all_core_clock_ghz or self.base_clock_ghz
        return ghz * 1e9 if ghz else None


def _check_dtype_keys(table: dict[str, float]) -> dict[str, float]:
    for k, v in table.items():
        if k not in COMPUTE_DTYPES:
            raise ValueError(f"unknown precision {k!r}; allowed: {', '.join(COMPUTE_DTYPES)}")
        if not v > 0:
            raise ValueError(f"{k} must be > 0, got {v}")
    return table


class Ceilings(_Strict):
    """Peaks of one kind of unit (matrix/tensor units or vector/SIMD units), per precision."""

    dense_tflops: dict[str, float] = {}
    sparse_tflops: dict[str, float] = Field({}, description="2:4 structured sparsity; recorded, never used")
    flops_per_cycle_per_unit: dict[str, float] = {}
    half_accumulate_dense_tflops: dict[str, float] = Field(
        {}, description="dense rate with FP16 accumulation, only where it differs from dense_tflops (GeForce parts "
                        "run FP16/FP8 products with FP32 accumulation at half their FP16-accumulate rate)")

    _keys = field_validator("dense_tflops", "sparse_tflops", "flops_per_cycle_per_unit",
                            "half_accumulate_dense_tflops")(_check_dtype_keys)


class Compute(_Strict):
    matrix: Ceilings = Ceilings()
    vector: Ceilings = Ceilings()
    matrix_units: bool = Field(
        True, description="false: the device has no matrix/tensor units, so matmuls run on its vector units. A GPU "
                          "with matrix units but no sourced figure at a precision cannot fall back to its vector rate")
    async_mma: bool = Field(
        False, description="the matrix peak needs asynchronous warpgroup MMA (Hopper's wgmma); kernels written with "
                           "the older synchronous MMA instructions (llama.cpp, FlashAttention-2) reach less of it")
    special_function_tflops: PositiveFloat | None = Field(
        None, description="special-function (SFU/MUFU) throughput, tera-ops/s: the exponentials of attention's "
                          "softmax run there, not on the matrix units; when known, attention pays for them too")


class MemoryLevelSpec(_Strict):
    name: str
    capacity_kib: PositiveFloat | None = None
    capacity_mib: PositiveFloat | None = None
    capacity_gib: PositiveFloat | None = None
    capacity_mb: PositiveFloat | None = None
    capacity_gb: PositiveFloat | None = None
    capacity_tb: PositiveFloat | None = None
    capacity_kib_per_unit: PositiveFloat | None = None
    capacity_mib_per_unit: PositiveFloat | None = None
    bandwidth_gb_per_s: PositiveFloat | None = None
    bytes_per_cycle_per_unit: PositiveFloat | None = None
    channels: PositiveInt | None = None
    transfer_rate_mt_per_s: PositiveFloat | None = None
    bus_width_bits: PositiveInt = 64
    measured: bool = Field(False, description="the bandwidth was measured on this machine (perfmodel._local): an "
                                              "attained rate, which no efficiency fraction discounts again")
    note: str = ""

    @model_validator(mode="after")
    def _one_capacity(self) -> "MemoryLevelSpec":
        given = [k for k in type(self).model_fields if k.startswith("capacity_") and getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"memory level {self.name!r} has more than one capacity key: {', '.join(given)}")
        return self

    def resolve(self, proc: Processor | None) -> "MemoryLevel":
        units = proc.units if proc else 1
        capacity = None
        for key, scale in _CAPACITY_UNITS.items():
            if getattr(self, f"capacity_{key}", None) is not None:
                capacity = getattr(self, f"capacity_{key}") * scale
            if getattr(self, f"capacity_{key}_per_unit", None) is not None:
                capacity = getattr(self, f"capacity_{key}_per_unit") * scale * units
        bw = None
        if self.bandwidth_gb_per_s is not None:
            bw = self.bandwidth_gb_per_s * 1e9
        elif self.bytes_per_cycle_per_unit is not None and proc is not None and proc.peak_clock_hz:
            bw = self.bytes_per_cycle_per_unit * units * proc.peak_clock_hz
        elif self.channels and self.transfer_rate_mt_per_s:
            # DRAM peak = channels x transfers/s x bytes per transfer
            bw = self.channels * self.transfer_rate_mt_per_s * 1e6 * self.bus_width_bits / 8
        return MemoryLevel(self.name, capacity, bw, self.measured)


@dataclass(frozen=True, slots=True)
class MemoryLevel:
    name: str
    capacity_bytes: float | None  # None: not sourced
    bandwidth_bytes_per_s: float | None  # None: not sourced; the level is then not used for residency
    measured: bool = False  # an attained bandwidth measured here, not a datasheet peak


class Interconnect(_Strict):
    name: str
    bandwidth_gb_per_s: PositiveFloat | None = Field(None, description="per direction, per device (all links)")
    link_bandwidth_gb_per_s: PositiveFloat | None = Field(None, description="per direction, per link")
    latency_us: PositiveFloat | None = None
    links: PositiveInt | None = None
    transfer_rate_gt_per_s: PositiveFloat | None = None
    pcie_generation: PositiveInt | None = Field(None, description="host link PCIe generation: with pcie_lanes, the "
                                                                  "bandwidth is derived from the PCI-SIG rate")
    pcie_lanes: PositiveInt | None = Field(None, description="host link PCIe lanes (e.g. 16)")

    @model_validator(mode="after")
    def _one_bandwidth(self) -> "Interconnect":
        if self.pcie_generation is not None and self.pcie_generation not in PCIE_GT_PER_S:
            raise ValueError(f"pcie_generation must be one of {', '.join(map(str, PCIE_GT_PER_S))}; got "
                             f"{self.pcie_generation}")
        if self.bandwidth_gb_per_s and self.link_bandwidth_gb_per_s:
            raise ValueError("give bandwidth_gb_per_s (per device) or link_bandwidth_gb_per_s with links, not both")
        if self.link_bandwidth_gb_per_s and not self.links:
            raise ValueError("link_bandwidth_gb_per_s needs links (the device's bandwidth is links x per-link)")
        return self

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        """Per direction, per device: as given, links x per-link bandwidth, or derived from the PCIe generation and
        lanes (stated, or read from a name like "PCIe 4.0 x16")."""
        if self.bandwidth_gb_per_s:
            return self.bandwidth_gb_per_s * 1e9
        if self.link_bandwidth_gb_per_s:
            return self.link_bandwidth_gb_per_s * self.links * 1e9
        gen_lanes = self.pcie
        return pcie_bytes_per_s(*gen_lanes) if gen_lanes else None

    @property
    def pcie(self) -> tuple[int, int] | None:
        """(generation, lanes) of a PCIe link: the stated keys, else parsed from the name ("PCIe 4.0 x16")."""
        if self.pcie_generation and self.pcie_lanes:
            return self.pcie_generation, self.pcie_lanes
        m = re.search(r"pci-?e(?:xpress)?\s*(?:gen\s*)?([1-6])(?:\.0)?\s*x\s*(\d+)", self.name, flags=re.I)
        return (int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) in PCIE_GT_PER_S else None


class Device(_Strict):
    """A GPU, CPU or other accelerator. Memory levels are listed fastest to slowest; the last is main memory."""

    id: str
    name: str
    kind: Literal["gpu", "cpu", "accelerator"]
    vendor: str
    year: int | None = None
    aliases: tuple[str, ...] = ()
    processor: Processor | None = None
    compute: Compute = Compute()
    memory: tuple[MemoryLevelSpec, ...] = Field(min_length=1)
    interconnect: Interconnect | None = None
    family: str | None = Field(None, description="microarchitecture whose per-unit, per-cycle rates its members share "
                                                 "(e.g. nvidia-ga10x): a missing figure is estimated from siblings")
    variant_of: str | None = Field(None, description="the id of the file's own SKU, for a binned variant (set by the "
                                                     "catalog when it applies a [[variants]] entry)")
    inherited: dict[str, str] = Field({}, description="figures a variant derives from its parent, with how (set by "
                                                      "the catalog)")
    op_overhead_us: float | None = Field(None, ge=0, description="per-kernel overhead, if sourced")
    system: Any = Field(None, description="the system (perfmodel.system.System) this device was loaded as part of "
                                          "(`--hardware dgx-h100`): its fabric and network; set by the catalog")
    sources: tuple[Source, ...] = ()
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> "Device":
        for unit in ("matrix", "vector"):
            if getattr(self.compute, unit).flops_per_cycle_per_unit and self.processor is None:
                raise ValueError(f"compute.{unit}.flops_per_cycle_per_unit needs [processor] units (and a clock, "
                                 f"which is estimated from the family when not given)")
        if self.levels[-1].bandwidth_bytes_per_s is None:
            raise ValueError(f"main memory {self.memory[-1].name!r} needs a bandwidth (bandwidth_gb_per_s or channels)")
        return self

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "Device":
        """As pydantic's, without the cached resolved levels (an update may change the memory)."""
        out = super().model_copy(update=update, deep=deep)
        out.__dict__.pop("levels", None)
        return out

    @cached_property
    def levels(self) -> tuple[MemoryLevel, ...]:
        """Memory levels, fastest first, in SI units (resolved once per device; the spec is frozen)."""
        return tuple(m.resolve(self.processor) for m in self.memory)

    @property
    def main_memory(self) -> MemoryLevel:
        return self.levels[-1]

    def peak_flops_per_s(self, unit: Literal["matrix", "vector"], precision: str,
                         half_accumulate: bool = False) -> float | None:
        """Dense peak of one unit at one precision, from the provenance ladder (sourced, else derived from parts,
        else estimated by a stated rule; see perfmodel.provenance); None if no rule applies.
        `half_accumulate`: the FP16-accumulate rate where the device has a different one."""
        c: Ceilings = getattr(self.compute, unit)
        if half_accumulate and precision in c.half_accumulate_dense_tflops:
            return c.half_accumulate_dense_tflops[precision] * 1e12
        fig = self.figure(f"compute.{unit}.{precision}")
        return fig.value if fig else None

    def figure(self, key: str) -> Figure | None:
        """One figure with its rung (sourced, derived, estimated) and note: `compute.<unit>.<precision>`,
        `processor.clock`, `memory.<level>.bandwidth`, `memory.<level>.capacity`, `interconnect.bandwidth`,
        `compute.special_function` (operations/s)."""
        return self.figures.get(key)

    @cached_property
    def figures(self) -> dict[str, Figure]:
        """Every figure the ladder resolves for this device (perfmodel.provenance.resolve)."""
        return resolve(self)

    def quoted_vs_derived(self) -> list[tuple[str, float, float]]:
        """(unit.precision, quoted, derived) wherever a file gives both, for cross-checking."""
        out = []
        clock = self.processor.peak_clock_hz if self.processor else None
        for unit in ("matrix", "vector"):
            c: Ceilings = getattr(self.compute, unit)
            for p in c.flops_per_cycle_per_unit.keys() & c.dense_tflops.keys():
                if clock:
                    derived = self.processor.units * clock * c.flops_per_cycle_per_unit[p]
                    out.append((f"{unit}.{p}", c.dense_tflops[p] * 1e12, derived))
        return out
