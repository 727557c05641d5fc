"""The provenance ladder: every device figure is sourced, derived or estimated, and says which and how.

- **sourced**: the spec file gives the figure itself (datasheet, whitepaper, vendor page; its [[sources]] cite it).
- **derived**: computed from sourced parts by a stated formula: units x clock x FLOPs per cycle per unit, channels
  x transfer rate x bus width, PCIe lanes x rate x encoding, a binned variant's parent rate at its own units and
  clock, a CPU's SIMD lanes x 2 (FMA) x FMA pipes.
- **estimated**: a stated rule from siblings or the family, used only where no sourced or derived figure exists:
  1. family ratio: a sibling of the same microarchitecture (`family`) gives both this precision and one this device
     has; the device's own figure is scaled by the siblings' median ratio (e.g. bf16 from fp4 on GB20x parts);
  2. family rate: the siblings' median FLOPs per cycle per unit, at this device's units and clock (and so for the
     special-function units' exponentials, `compute.special_function`);
  3. clock: a missing clock is the family's median clock (or a CPU's max turbo, an upper bound);
  4. CPU FMA pipes: two per core when the file does not say (x86 cores since Haswell, recent Arm cores);
  5. kind ratio: a device with matrix peaks and no vector figure gets the median vector/matrix ratio of the
     catalog's devices of its kind;
  6. matrix lower bound: a device with matrix units but no matrix figure at a precision runs at its vector rate
     there, a lower bound, said as such;
  7. host link: a device that states no interconnect is given the PCIe generation current at its launch, x16;
  8. CPU caches: a cache level with no bandwidth gets its family's bytes per cycle per core at that tier, else a
     stated number of SIMD registers per cycle per core (CACHE_REGISTERS_PER_CYCLE);
  9. CPU cache size: a cache level with no capacity (a bin whose L3 no source gives) gets its family's median
     capacity per core at that tier, at its own cores; with no sibling to ask, the level holds nothing (the cost
     model never places data in a cache of unknown size).
Only when no rule applies is a figure missing, and the estimate that needs it stops with a message naming it and
the keys that would supply it.

An estimated figure widens the error band of the metrics it bounds (perfmodel.bands): both ends move out by
(1 + u) ** share, u the rule's uncertainty (RULE_UNCERTAINTY) and share the part of the phase's time the figure
bounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .pcie import PCIE_FIRST_YEAR, PCIE_GT_PER_S, pcie_bytes_per_s

if TYPE_CHECKING:
    from .device import Device

RUNGS = ("sourced", "derived", "estimated")
SFU = "compute.special_function"  # special-function (SFU/MUFU) operations per second
COMPUTE_KEYS = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")
# Bits per element of the SIMD lane for a CPU's vector peak: lanes = SIMD width / bits.
_LANE_BITS = {"fp64": 64, "fp32": 32}
# SIMD register width of an ISA extension named in `processor.simd` (Intel SDM vol. 1 ch. 10-15; Arm NEON: 128-bit
# registers, Arm ARM A1.4). SVE widths vary by core and must be stated.
SIMD_WIDTH_BITS = {"avx-512": 512, "avx512": 512, "avx10": 512, "avx2": 256, "avx": 256, "sse": 128, "neon": 128,
                   "asimd": 128}
# FMA pipes per core when a CPU file does not say: two where the ISA has FMA (AVX2/AVX-512: Intel since Haswell,
# "two FMA units" in the optimization reference manual, AMD since Zen 2; Arm v8 NEON/SVE cores: Neoverse N1 2 x
# 128-bit, V1/V2 4 x 128-bit count as two of the stated width), else one add and one multiply pipe, which peak like
# one FMA pipe (SSE/AVX cores before 2013). Older SSE cores with 64-bit datapaths reach half that: an estimate.
FMA_ISAS = ("avx2", "avx-512", "avx512", "avx10", "neon", "asimd", "sve")
# Relative uncertainty u of each estimation rule, a fraction of the figure (bounds 0 to 1; 1 means "could be off by
# 2x"), used to widen error bands. Measured by benchmarks/ladder_accuracy.py: each rule re-estimates catalog figures
# that are sourced or derived, left out one at a time; u is the 80th percentile of |estimate / figure - 1|, rounded
# up to the next 0.05 (the printout gives the figures). The matrix lower bound and the host-link rule are said to be
# off by 2x or more, so u = 1.
RULE_UNCERTAINTY = {"family-ratio": 0.05, "family-rate": 0.05, "family-clock": 0.2, "max-turbo-clock": 0.3,
                    "cpu-fma": 1.0, "kind-ratio": 1.0, "matrix-lower-bound": 1.0, "host-link": 1.0,
                    "cpu-cache": 1.0, "family-cache-size": 0.2}
# SIMD registers a core's cache tier moves per cycle, for a CPU whose family states no cache bandwidth (rule 8):
# L1 two loads of a full register (two load ports of the SIMD width), L2 one register, L3 three quarters of one:
# the medians, per tier, of bytes per cycle per core over SIMD register bytes of the 18 catalog families whose guides
# (or secondary sources quoting them) state it, in the CPU files (L1 12 families: 1-4 registers, median 2; L2 11:
# 0.5-4, median 1; L3 8: 0.25-1, median 0.75). They spread by 2x either way, so u = 1.
CACHE_REGISTERS_PER_CYCLE = {1: 2.0, 2: 1.0, 3: 0.75}


@dataclass(frozen=True, slots=True)
class Figure:
    """One device figure in SI units, with its rung on the ladder, how it was obtained, and for an estimate the rule
    (a key of RULE_UNCERTAINTY; an estimate that rests on an estimated clock names the clock's rule)."""

    key: str
    value: float
    rung: str
    note: str
    rule: str = ""

    @property
    def uncertainty(self) -> float:
        """The relative uncertainty u of an estimated figure (0 for sourced and derived ones)."""
        return RULE_UNCERTAINTY.get(self.rule, 0.0) if self.rung == "estimated" else 0.0


def resolve(device: "Device") -> dict[str, Figure]:
    """Every figure of `device`: its own (sourced and derived), then the estimation rules for what is missing."""
    figs = own_figures(device, use_family=True)
    _family_rules(device, figs)
    _cache_rules(device, figs)
    _cache_size_rule(device, figs)
    _kind_vector_rule(device, figs)
    _matrix_lower_bound(device, figs)
    _interconnect_rule(device, figs)
    return figs


def own_figures(device: "Device", use_family: bool = False) -> dict[str, Figure]:
    """The figures a device file gives or derives by itself (no sibling or catalog rule; `use_family`: a missing
    clock may be the family's)."""
    figs: dict[str, Figure] = {}
    proc = device.processor
    clock = _clock(device, use_family)
    if clock:
        figs["processor.clock"] = clock
    if device.processor is not None and device.processor.matrix_clock_ghz:
        cite = _cite(device, "matrix_clock")
        figs["processor.matrix_clock"] = Figure("processor.matrix_clock", device.processor.matrix_clock_ghz * 1e9,
                                                "sourced", f"measured under a dense GEMM: {cite}")
    for unit in ("matrix", "vector"):
        c = getattr(device.compute, unit)
        for p in COMPUTE_KEYS:
            key = f"compute.{unit}.{p}"
            quoted = c.dense_tflops.get(p)
            per_cycle = c.flops_per_cycle_per_unit.get(p)
            if per_cycle is not None and proc is not None and clock is not None:
                value = proc.units * clock.value * per_cycle
                formula = (f"{proc.units} {proc.unit_name}s x {clock.value / 1e9:g} GHz x {per_cycle:g} FLOPs/cycle "
                           f"= {value / 1e12:.4g} TFLOPS")
                if quoted is not None:
                    figs[key] = Figure(key, value, "sourced", f"{_cite(device, 'compute')}: {quoted:g} TFLOPS quoted; "
                                                              f"{formula}")
                elif key in device.inherited:
                    figs[key] = Figure(key, value, _worst("derived", clock.rung), device.inherited[key], clock.rule)
                else:
                    figs[key] = Figure(key, value, _worst("derived", clock.rung), f"{formula} ({clock.rung} clock)",
                                       clock.rule)
            elif quoted is not None:
                figs[key] = Figure(key, quoted * 1e12, "sourced", _cite(device, "compute"))
    if device.kind == "cpu" and proc is not None and clock is not None:
        width = proc.simd_width_bits or _simd_width(proc.simd)
        for p, bits in _LANE_BITS.items():
            key = f"compute.vector.{p}"
            if key in figs or not width:
                continue
            has_fma = any(isa in (proc.simd or "").lower().replace(" ", "") for isa in FMA_ISAS) or width >= 512
            fma = proc.fma_units_per_core or (2 if has_fma else 1)
            value = proc.units * clock.value * fma * (width // bits) * 2
            rung = "derived" if proc.fma_units_per_core else "estimated"
            assumed = (" (assumed: two FMA pipes per core on an FMA ISA)" if has_fma else
                       " (assumed: one add and one multiply pipe, no FMA in the ISA)")
            how = (f"{proc.units} cores x {clock.value / 1e9:g} GHz x {fma} FMA pipes"
                   f"{'' if proc.fma_units_per_core else assumed} x {width // bits} {p} lanes ({width}-bit SIMD) x 2 "
                   f"FLOPs")
            rule = "cpu-fma" if not proc.fma_units_per_core else clock.rule
            figs[key] = Figure(key, value, _worst(rung, clock.rung), how, rule if rung == "estimated" else clock.rule)
    if device.compute.special_function_tflops:
        figs[SFU] = Figure(SFU, device.compute.special_function_tflops * 1e12, "sourced",
                           _cite(device, "special_function"))
    for spec, lv in zip(device.memory, device.levels):
        if lv.bandwidth_bytes_per_s is not None:
            key = f"memory.{lv.name}.bandwidth"
            if spec.bandwidth_gb_per_s is not None:
                figs[key] = Figure(key, lv.bandwidth_bytes_per_s, "sourced", _cite(device, "memory"))
            elif spec.bytes_per_cycle_per_unit is not None:
                figs[key] = Figure(key, lv.bandwidth_bytes_per_s, _worst("derived", clock.rung if clock else "derived"),
                                   f"{spec.bytes_per_cycle_per_unit:g} B/cycle x {proc.units} units x clock",
                                   clock.rule if clock else "")
            else:
                figs[key] = Figure(key, lv.bandwidth_bytes_per_s, "derived",
                                   f"{spec.channels} channel(s) x {spec.transfer_rate_mt_per_s:g} MT/s x "
                                   f"{spec.bus_width_bits} bits / 8 = {lv.bandwidth_bytes_per_s / 1e9:.4g} GB/s")
        if lv.capacity_bytes is not None:
            key = f"memory.{lv.name}.capacity"
            figs[key] = Figure(key, lv.capacity_bytes, "sourced", _cite(device, "memory"))
    link = device.interconnect
    if link is not None and link.bandwidth_bytes_per_s is not None:
        key = "interconnect.bandwidth"
        if link.bandwidth_gb_per_s or link.link_bandwidth_gb_per_s:
            figs[key] = Figure(key, link.bandwidth_bytes_per_s, "sourced", _cite(device, "interconnect"))
        else:
            gen, lanes = link.pcie
            figs[key] = Figure(key, link.bandwidth_bytes_per_s, "derived",
                               f"PCIe {gen}.0 x{lanes}: {lanes} lanes x {_gt(gen):g} GT/s x encoding / 8 = "
                               f"{link.bandwidth_bytes_per_s / 1e9:.3g} GB/s per direction (PCI-SIG rates)")
    return figs


def _clock(device: "Device", use_family: bool) -> Figure | None:
    p = device.processor
    if p is None:
        return None
    if p.peak_clock_hz:
        which = "clock_ghz" if p.clock_ghz else ("all-core turbo" if p.all_core_clock_ghz else "base clock")
        return Figure("processor.clock", p.peak_clock_hz, "sourced", f"{which}: {_cite(device, 'processor')}")
    if p.max_clock_ghz:
        return Figure("processor.clock", p.max_clock_ghz * 1e9, "estimated",
                      "max turbo clock (no all-core or base clock given): an upper bound under load", "max-turbo-clock")
    sib = _siblings(device) if use_family else []
    clocks = [f["processor.clock"].value for _, f in sib if "processor.clock" in f
              and f["processor.clock"].rung != "estimated"]
    if clocks:
        v = statistics.median(clocks)
        return Figure("processor.clock", v, "estimated",
                      f"median clock of {len(clocks)} {device.family} sibling(s): {v / 1e9:.4g} GHz", "family-clock")
    return None


def _family_rules(device: "Device", figs: dict[str, Figure]) -> None:
    everyone = _siblings(device)
    if not everyone:
        return
    # GeForce parts run FP16/FP8 products with FP32 accumulation at half their FP16-accumulate rate (and list that
    # rate apart); professional and datacentre parts of the same die do not: siblings of the device's own kind first
    half = bool(device.compute.matrix.half_accumulate_dense_tflops)
    alike = [(d, f) for d, f in everyone if bool(d.compute.matrix.half_accumulate_dense_tflops) == half]
    clock = figs.get("processor.clock")
    for unit in ("matrix", "vector"):
        for p in COMPUTE_KEYS:
            key = f"compute.{unit}.{p}"
            if key in figs and (figs[key].rung != "estimated" or figs[key].uncertainty <= RULE_UNCERTAINTY[
                    "family-rate"]):
                continue  # an estimate from a looser rule (a CPU's assumed FMA pipes) gives way to the family's
            sib = alike if any(key in f for _, f in alike) else everyone
            # 1. ratio to a figure this device has, as its siblings have both
            best = None
            for q in ("bf16", "fp16", "fp32", "fp8", "int8", "fp4", "tf32"):
                own = figs.get(f"compute.{unit}.{q}")
                if own is None or own.rung == "estimated":
                    continue
                ratios = [f[key].value / f[f"compute.{unit}.{q}"].value for _, f in sib
                          if key in f and f"compute.{unit}.{q}" in f]
                if ratios:
                    r = statistics.median(ratios)
                    best = Figure(key, own.value * r, "estimated",
                                  f"{q} x {r:.3g}: the {p}/{q} ratio of {len(ratios)} {device.family} sibling(s)",
                                  "family-ratio")
                    break
            # 2. the siblings' rate per unit per cycle, at this device's units and clock
            if best is None:
                best = _family_rate(device, key, sib, clock, "FLOPs")
            if best is not None and (key not in figs or best.uncertainty < figs[key].uncertainty):
                figs[key] = best
    # the special-function units (softmax's exponentials), by rule 2: a die's SFU count per SM does not change between
    # its SKUs (an H200 is an H100's GH100)
    if SFU not in figs:
        fig = _family_rate(device, SFU, everyone, clock, "exponentials")
        if fig is not None:
            figs[SFU] = fig


def _family_rate(device: "Device", key: str, sib: list, clock: Figure | None, what: str) -> Figure | None:
    """Rule 2: the siblings' median `key` per unit per cycle, at this device's units and clock; None where the device
    has no units or clock, or no sibling gives the figure with its own."""
    proc = device.processor
    if proc is None or clock is None:
        return None
    rates = [f[key].value / (d.processor.units * f["processor.clock"].value) for d, f in sib
             if key in f and d.processor is not None and "processor.clock" in f]
    if not rates:
        return None
    r = statistics.median(rates)
    rule = max("family-rate", clock.rule or "family-rate", key=RULE_UNCERTAINTY.get)
    return Figure(key, r * proc.units * clock.value, "estimated",
                  f"{r:.4g} {what}/cycle/{proc.unit_name} (median of {len(rates)} {device.family} sibling(s)) x "
                  f"{proc.units} x {clock.value / 1e9:.4g} GHz ({clock.rung} clock)", rule)


def cache_tier(name: str) -> int | None:
    """1, 2 or 3 for a CPU cache level's name (L1, L1d, L2, L3, LLC, SLC); None for anything else."""
    n = name.lower().replace(" ", "")
    if n.startswith("l1"):
        return 1
    if n.startswith("l2"):
        return 2
    if n.startswith(("l3", "llc", "slc")):
        return 3
    return None


def _cache_size_rule(device: "Device", figs: dict[str, Figure]) -> None:
    """Rule 9, a CPU cache level with no capacity: the family's median capacity per core at the same tier (L1, L2,
    L3), at this device's cores."""
    proc = device.processor
    if device.kind != "cpu" or proc is None or not proc.units:
        return
    sib = _siblings(device)
    for lv in device.levels[:-1]:
        key, tier = f"memory.{lv.name}.capacity", cache_tier(lv.name)
        if key in figs or tier is None:
            continue
        sizes = [f[k].value / d.processor.units for d, f in sib if d.processor is not None and d.processor.units
                 for k in f if k.startswith("memory.") and k.endswith(".capacity")
                 and cache_tier(k[len("memory."):-len(".capacity")]) == tier]
        if sizes:
            per_core = statistics.median(sizes)
            figs[key] = Figure(key, per_core * proc.units, "estimated",
                               f"{per_core / 2**20:.4g} MiB a core (median of {len(sizes)} {device.family} sibling "
                               f"L{tier} figure(s)) x {proc.units} cores", "family-cache-size")


def _cache_rules(device: "Device", figs: dict[str, Figure]) -> None:
    """Rule 8, a CPU cache level with no bandwidth: the family's median bytes per cycle per core at the same tier
    (L1, L2, L3; at this device's cores and clock), else the SIMD-width rule (CACHE_REGISTERS_PER_CYCLE)."""
    proc, clock = device.processor, figs.get("processor.clock")
    if device.kind != "cpu" or proc is None or clock is None:
        return
    sib = _siblings(device)
    width = proc.simd_width_bits or _simd_width(proc.simd)
    faster = None  # the figure of the level above: a cache serves its core through the levels above it
    for lv in device.levels[:-1]:
        key, tier = f"memory.{lv.name}.bandwidth", cache_tier(lv.name)
        if key in figs or tier is None:
            faster = figs.get(key, faster)
            continue
        rates = [f[k].value / (d.processor.units * f["processor.clock"].value) for d, f in sib
                 if d.processor is not None and "processor.clock" in f
                 for k in f if k.startswith("memory.") and k.endswith(".bandwidth")
                 and cache_tier(k[len("memory."):-len(".bandwidth")]) == tier]
        if rates:
            r = statistics.median(rates)
            figs[key] = Figure(key, r * proc.units * clock.value, "estimated",
                               f"{r:.4g} B/cycle/core (median of {len(rates)} {device.family} sibling L{tier} "
                               f"figure(s)) x {proc.units} x {clock.value / 1e9:.4g} GHz ({clock.rung} clock)",
                               max("family-rate", clock.rule or "family-rate", key=RULE_UNCERTAINTY.get))
        elif width:
            per_cycle = CACHE_REGISTERS_PER_CYCLE[tier] * width / 8
            figs[key] = Figure(key, per_cycle * proc.units * clock.value, "estimated",
                               f"{CACHE_REGISTERS_PER_CYCLE[tier]:g} x {width}-bit registers = {per_cycle:g} B/cycle/"
                               f"core (the L{tier} median of the catalog CPUs whose guides state it) x {proc.units} "
                               f"cores x {clock.value / 1e9:.4g} GHz ({clock.rung} clock)",
                               max("cpu-cache", clock.rule or "cpu-cache", key=RULE_UNCERTAINTY.get))
        fig = figs.get(key)
        if fig is not None and faster is not None and fig.value > faster.value:
            figs[key] = Figure(key, faster.value, "estimated", f"{fig.note}; held to the {faster.key.split('.')[1]} "
                               f"figure above it ({faster.value / 1e9:,.0f} GB/s)", fig.rule)
        faster = figs.get(key, faster)


def _kind_vector_rule(device: "Device", figs: dict[str, Figure]) -> None:
    """A device with matrix peaks but no vector figure (e.g. a TPU file): vector fp32 from the catalog's median
    vector-fp32 / matrix-bf16 ratio over devices of its kind that give both."""
    if any(k.startswith("compute.vector.") for k in figs):
        return
    mat = figs.get("compute.matrix.bf16") or figs.get("compute.matrix.fp16")
    if mat is None:
        return
    ratios = _kind_ratios(device.kind) or _kind_ratios("gpu")
    if ratios:
        r = statistics.median(ratios)
        figs["compute.vector.fp32"] = Figure(
            "compute.vector.fp32", mat.value * r, "estimated",
            f"matrix {mat.key.rsplit('.', 1)[1]} x {r:.3g}: median vector-fp32/matrix-16-bit ratio of {len(ratios)} "
            f"catalog devices with matrix units that give both", "kind-ratio")


def _matrix_lower_bound(device: "Device", figs: dict[str, Figure]) -> None:
    """Matrix units with no figure at a 16-bit precision: the vector rate there (a lower bound), said as such."""
    if device.kind == "cpu" or not device.compute.matrix_units:
        return
    for p in ("bf16", "fp16"):
        key = f"compute.matrix.{p}"
        if key in figs or any(f"compute.matrix.{q}" in figs for q in ("bf16", "fp16")):
            continue
        for q in (p, "fp16", "bf16", "fp32"):
            vec = figs.get(f"compute.vector.{q}")
            if vec is not None:
                figs[key] = Figure(key, vec.value, "estimated",
                                   f"no matrix-unit figure: the vector {q} rate, a lower bound (matrix units are "
                                   f"usually several times faster)", "matrix-lower-bound")
                break


def _interconnect_rule(device: "Device", figs: dict[str, Figure]) -> None:
    if "interconnect.bandwidth" in figs:
        return
    year = device.year or 2019
    gen = max((g for g, y in PCIE_FIRST_YEAR.items() if y <= year), default=1)
    when = f"the generation current in {year}" if year >= PCIE_FIRST_YEAR[1] else f"the first; {year} predates PCIe"
    figs["interconnect.bandwidth"] = Figure(
        "interconnect.bandwidth", pcie_bytes_per_s(gen, 16), "estimated",
        f"no host link stated: PCIe {gen}.0 x16 ({when}), "
        f"{pcie_bytes_per_s(gen, 16) / 1e9:.3g} GB/s per direction", "host-link")


# Catalog look-ups (cached per process) ---------------------------------------------------------------------------

def _siblings(device: "Device") -> list[tuple[Any, dict[str, Figure]]]:
    if not device.family:
        return []
    # base entries only: a file's bins inherit its per-unit rates and would count the same chip twice
    return [(d, f) for d, f in _family_members(device.family) if d.id != device.id and d.variant_of is None]


# Where the estimation rules find a device's siblings. The catalog registers its device list when it is imported
# (perfmodel.catalog calls set_catalog); with none registered (a device built alone), a device gets its own figures
# and the rules that need no siblings.
_CATALOG: Callable[..., Sequence[Any]] = lambda family=None: ()


def set_catalog(devices: Callable[..., Sequence[Any]]) -> None:
    """Register the function that lists the catalog's devices (`devices()`, or one family's: `devices(family)`), whose
    figures the family and kind rules use."""
    global _CATALOG
    _CATALOG = devices
    _family_members.cache_clear()
    _kind_ratios.cache_clear()


@lru_cache(maxsize=None)
def _family_members(family: str) -> tuple[tuple[Any, dict[str, Figure]], ...]:
    return tuple((d, _trusted(own_figures(d))) for d in _CATALOG(family) if d.family == family)


@lru_cache(maxsize=None)
def _kind_ratios(kind: str) -> tuple[float, ...]:
    out = []
    for d in _CATALOG():
        if d.kind != kind:
            continue
        f = _trusted(own_figures(d))
        mat = f.get("compute.matrix.bf16") or f.get("compute.matrix.fp16")
        vec = f.get("compute.vector.fp32")
        if mat and vec:
            out.append(vec.value / mat.value)
    return tuple(out)


def _trusted(figs: dict[str, Figure]) -> dict[str, Figure]:
    """Sourced and derived figures only: estimates are never the basis of other estimates."""
    return {k: f for k, f in figs.items() if f.rung != "estimated"}


def _worst(a: str, b: str) -> str:
    return max(a, b, key=RUNGS.index)


def _gt(gen: int) -> float:
    return PCIE_GT_PER_S[gen]


def _simd_width(simd: str | None) -> int | None:
    if not simd:
        return None
    s = simd.lower().replace(" ", "")
    for name, width in SIMD_WIDTH_BITS.items():
        if name in s:
            return width
    return None


_TOPIC_WORDS = {
    "compute": ("tflops", "tops", "peak", "tensor", "compute", "flops", "fma", "simd", "avx", "amx", "matrix"),
    "memory": ("bandwidth", "memory", "hbm", "gddr", "ddr", "lpddr", "gb/s", "channel"),
    "interconnect": ("nvlink", "interconnect", "pcie", "link", "infinity fabric", "ici"),
    "processor": ("clock", "ghz", "mhz", "frequency", "boost", "processor", "cores", "sm"),
    "matrix_clock": ("matrix_clock",),
    "special_function": ("special_function", "sfu"),
}


def _cite(device: "Device", topic: str) -> str:
    """The source a figure of `topic` most likely comes from: the first whose `covers` names the topic."""
    words = _TOPIC_WORDS[topic]
    for s in device.sources:
        if any(w in s.covers.lower() for w in words):
            return _title(s)
    return _title(device.sources[0]) if device.sources else "the spec file (no [[sources]] entry)"


def _title(s: Any) -> str:
    secondary = " (secondary source)" if "secondary" in (s.note + s.covers + s.title).lower() else ""
    return f"{s.title}{secondary}"


def used_figures(ev: Any) -> dict[str, dict[str, Any]]:
    """Which device figures an evaluation leaned on, and per phase the share of its time each figure bounds, per
    scenario (arrays): compute figures, the compute-bound time of the ops that ran on that unit and precision;
    main-memory bandwidth, the memory-bound time; the interconnect, the communication time.
    {figure key: {phase: share array}}."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    main = f"memory.{ev.device.levels[-1].name}.bandwidth"
    for phase, ph in (("prefill", ev.prefill), ("decode", ev.decode)):
        if not ph.ops:
            continue
        total = np.asarray(ph.total("time_s"), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(total > 0, 1.0 / total, 0.0)

        def add(key: str, seconds: Any) -> None:
            share = np.asarray(seconds, dtype=float) * inv
            out.setdefault(key, {})[phase] = out.get(key, {}).get(phase, 0.0) + share

        v = ph.values
        units, precs = np.array(ph.units[0]), np.array(ph.precisions[0])
        link = units == "link"
        if link.any():
            add("interconnect.bandwidth", v["comm_s"][link].sum(axis=0))
        for unit, prec in sorted({(u, p) for u, p in zip(units, precs) if u in ("matrix", "vector")}):
            add(f"compute.{unit}.{prec}", v["compute_bound_s"][(units == unit) & (precs == prec)].sum(axis=0))
        if SFU in ev.device.figures:  # fused attention's exponentials: its compute-bound time, an upper bound
            att = np.array([o.kind.name == "ATTENTION" for o in ph.ops]) & (units != "calibrated")
            if att.any():
                add(SFU, v["compute_bound_s"][att].sum(axis=0))
        memory_bound = np.maximum(v["time_s"] - v["compute_bound_s"] - v["overhead_s"], 0.0)
        add(main, memory_bound[~link].sum(axis=0))
    return out
