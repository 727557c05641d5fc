"""Collectives as the libraries run them: an alpha-beta cost (time = latency + bytes / bandwidth) for every algorithm
and protocol a library has, and its choice, the cheapest at the message size (NCCL's tuner does exactly this:
`ncclTopoGetAlgoTime` of every enabled algorithm and protocol, the lowest wins).

NCCL (and RCCL, its fork, which keeps the model) is costed with its own tuning model, NVIDIA/nccl
src/graph/tuning.cc at commit 5067397c (read in this project's mirror of the repository):
- latency = baseLat[algorithm][protocol] + per-step hardware latency x steps: ring all-reduce 2(n-1) steps,
  all-gather / reduce-scatter n-1; tree all-reduce 2 x ((ranks per node - 1) x intra + log2(nodes) x inter); NVLS
  (in-switch reduction, NVLink SHARP) its hardware latency alone (25 us over NVLink: it pays off for large messages);
- bus bandwidth = the link's attained bandwidth, refined per protocol: LL carries 8 data bytes in 16 (x 0.5, at
  most llMaxBw), LL128 120 of 128 (x 0.92), a tree all-reduce x 0.92 (LL x 1/3.8, LL128 x 7/9 within a node), NVLS
  x 2 x nvlsEfficiency (0.85 Hopper, 0.74 Blackwell) for an all-reduce, which the switch pipelines; the algorithm
  bandwidth is the bus bandwidth x ranks / steps (ring, NVLS) or x 0.5 (tree);
- the tree's measured deviation at medium sizes (treeCorrectionFactor, powers of two from 64 B).
What is not modelled: NCCL's channel counts (the per-channel caps perChMax*Bw bind only with few channels), CollNet
(SHARP in the network switch, off unless configured), PAT (one GPU per node only), the ring's multi-node plateau.

Serving engines add their own all-reduce kernels for the small messages of decode, over peer-to-peer memory within a
node (vLLM's custom all-reduce, csrc/custom_all_reduce.cuh: one-shot, every rank reads every peer's buffer and
reduces; two-shot, a reduce-scatter then an all-gather, each by direct reads; TensorRT-LLM's and SGLang's the same
two), and on NVSwitch systems with in-switch reduction the multimem (NVLS) kernels of torch symmetric memory. They are
offered beside NCCL's where the fabric has peer-to-peer access to every rank (NVSwitch, a full xGMI mesh); the engine
takes the cheapest, as vLLM's dispatch by size thresholds tuned per device does.

Everything here is per call; perfmodel.cost vectorises the candidates over ops and rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .graph import Comm

if TYPE_CHECKING:
    from .device import Device

NCCL_COMMIT = "NVIDIA/nccl src/graph/tuning.cc at 5067397c"
_ALGOS = ("tree", "ring", "nvls", "nvls_tree")
_PROTOS = ("ll", "ll128", "simple")
# baseLatencies (us): Tree, Ring, NVLS, NVLS Tree x (LL, LL128, Simple)
BASE_LAT_US = {"tree": (6.8, 14.0, 8.4), "ring": (6.6, 14.0, 8.4), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0)}
# hwLatencies (us) per step, by the hardware a step crosses: NVLink, PCI, network
HW_LAT_US = {
    "nvlink": {"tree": (0.6, 1.25, 4.0), "ring": (0.6, 1.9, 3.4), "nvls": (0, 0, 25), "nvls_tree": (0, 0, 25)},
    "pci": {"tree": (1.0, 1.9, 4.0), "ring": (1.0, 2.5, 5.7), "nvls": (0, 0, 0), "nvls_tree": (0, 0, 0)},
    "net": {"tree": (5.0, 8.5, 14), "ring": (2.7, 4.0, 14.0), "nvls": (0, 0, 18), "nvls_tree": (0, 0, 20.9)},
}
# llMaxBws (GB/s): the LL protocol's ceiling; within a node by GPU generation (N1 column), across 2 or more nodes by
# the host CPU (Intel row: N2, N4 columns; this model takes the Intel row)
LL_MAX_GB_PER_S = {"volta": 39.0, "ampere": 87.7, "hopper": 141.0, "blackwell": 282.0}
LL_MAX_MULTI_NODE_GB_PER_S = {2: 39.0, 4: 20.4}
NVLS_EFFICIENCY = {"hopper": 0.85, "blackwell": 0.74}
# treeCorrectionFactor[protocol][log2(bytes / 64)], sizes 64 B to 256 MB
TREE_CORRECTION = {
    "ll": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0, 1.0),
    "ll128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0, 1.0),
    "simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9, .9),
}
TREE_TABLE = np.array([TREE_CORRECTION[p] for p in ("ll", "ll128", "simple")])
COMM_K = 6  # candidates kept per collective after the dominated ones are dropped (prune)
# Network post overhead per step when a ring spans nodes (getNetOverhead: 1 us on Intel hosts, x 3 for Simple)
NET_OVERHEAD_US = 1.0

# The engines' peer-to-peer all-reduce kernels: a fixed cost per call, the kernel's start and its two cross-GPU
# barriers (flags written and polled over the links), from the smallest message of vLLM PR #24111's isolated
# benchmark on H100 under CUDA graphs (ca_1stage 0.007 ms at 0.5 MB on 2 ranks, of which 0.5 MB / 360 GB/s = 1.5 us
# is the bytes: validation/kernel4-allreduce-vllm-pr24111.toml, whose rows are therefore in-sample for this figure);
# its bytes move at the link's attained bandwidth
P2P_KERNEL_LATENCY_S = 5.0e-6
P2P_KERNELS = ("one_shot", "two_shot", "multimem")


@dataclass(frozen=True)
class Fabric:
    """How the ranks of a collective are connected.

    `kind`: switch (every device reaches every other at its full link bandwidth: NVSwitch), mesh (a direct link to
    each peer, the device's bandwidth split over devices_per_node - 1 peers: AMD's xGMI), pcie (through the host's
    PCIe switches), torus (TPU ICI). `hw`: NCCL's latency class of the links within a node (nvlink for any
    GPU-to-GPU fabric, pci). Bandwidths per device, per direction, as stated (efficiency applied by the cost model).
    """

    kind: Literal["switch", "mesh", "pcie", "torus"]
    intra_bytes_per_s: float
    hw: Literal["nvlink", "pci"]
    devices_per_node: int = 8
    in_switch_reduction: bool = False  # NVLink SHARP (NVSwitch gen 3 and later): NVLS algorithms
    arch: str = "ampere"  # NCCL's tables by GPU generation: volta, ampere, hopper, blackwell
    net_bytes_per_s: float | None = None  # per node, per direction, all its NICs for the compute fabric
    net_name: str = ""
    name: str = ""

    @property
    def peer_to_peer(self) -> bool:
        """Every rank can read every other's memory at link speed: the engines' own all-reduce kernels apply."""
        return self.kind in ("switch", "mesh")

    def intra_for(self, ranks: int) -> float:
        """Per-device bandwidth a collective of `ranks` within one node can use: all of it through a switch or over
        PCIe; on a mesh only the links to the ranks in the group, (ranks - 1) / (devices_per_node - 1) of it."""
        if self.kind == "mesh" and self.devices_per_node > 1:
            return self.intra_bytes_per_s * min(ranks - 1, self.devices_per_node - 1) / (self.devices_per_node - 1)
        return self.intra_bytes_per_s


@dataclass(frozen=True)
class Candidate:
    """One way to run a collective: time = fixed_s + bytes x per_byte_s, labelled algorithm/protocol."""

    algorithm: str
    protocol: str
    per_byte_s: float
    fixed_s: float
    link: str  # nvlink, pci, net: the slowest hardware it crosses

    @property
    def label(self) -> str:
        names = {"ring": "ring", "tree": "tree", "nvls": "NVLS", "nvls_tree": "NVLS tree",
                 "one_shot": "one-shot", "two_shot": "two-shot", "multimem": "multimem (NVLS)", "direct": "direct"}
        if self.protocol == "p2p":
            return f"{names[self.algorithm]} (engine kernel)"
        proto = {"ll": "LL", "ll128": "LL128", "simple": "Simple"}.get(self.protocol, self.protocol)
        return f"{names.get(self.algorithm, self.algorithm)} {proto}"

    @property
    def tree_index(self) -> int:
        """Row of TREE_TABLE for a tree all-reduce (its size correction), else -1."""
        return _PROTOS.index(self.protocol) if self.algorithm == "tree" else -1

    def time_s(self, nbytes: float) -> float:
        return self.fixed_s + nbytes * self.per_byte_s / tree_correction(self.algorithm, self.protocol, nbytes)


def _log2i(n: int) -> int:
    return int(math.floor(math.log2(n))) if n >= 1 else 0


def nccl_candidates(comm: Comm, ranks: int, fab: Fabric, efficiency: float, hop_s: float | None = None
                    ) -> list[Candidate]:
    """NCCL's algorithms and protocols for a collective of `ranks` ranks, placed densely (devices_per_node a node),
    with their alpha-beta costs by NCCL's tuning model (module docstring). `efficiency`: attained over stated link
    bandwidth; `hop_s`: a measured per-step latency that replaces NCCL's hardware latency within a node."""
    if ranks <= 1:
        return []
    ppn = min(ranks, fab.devices_per_node)
    nodes = -(-ranks // ppn)
    intra_bw = fab.intra_for(ppn) * efficiency
    net_bw = (fab.net_bytes_per_s or 0.0) * efficiency
    bw = intra_bw if nodes == 1 else min(intra_bw, net_bw) if net_bw > 0 else 0.0
    if bw <= 0:
        return []
    if comm == Comm.P2P:  # one send between neighbouring stages: ring Simple/LL cost of a single step
        link = fab.hw if nodes == 1 else "net"
        return [Candidate("direct", p, 1.0 / (bw * (0.5 if p == "ll" else 1.0)),
                          (BASE_LAT_US["ring"][i] + HW_LAT_US[link]["ring"][i]) * 1e-6, link)
                for i, p in ((0, "ll"), (2, "simple"))]
    if comm == Comm.ALL_TO_ALL:  # grouped sends to every peer: (n - 1) / n of the buffer leaves each rank
        intra_share, net_share = (ppn - 1) / ranks, (ranks - ppn) / ranks
        per_byte = max(intra_share / (fab.intra_for(ppn) * efficiency),
                       net_share / (net_bw / ppn) if net_share > 0 and net_bw > 0 else 0.0)
        link = fab.hw if nodes == 1 else "net"
        return [Candidate("direct", "simple", per_byte, (BASE_LAT_US["ring"][2] + HW_LAT_US[link]["ring"][2]) * 1e-6,
                          link)]
    all_reduce = comm == Comm.ALL_REDUCE
    nsteps = 2 * (ranks - 1) if all_reduce else ranks - 1
    hopper_plus = fab.arch in ("hopper", "blackwell")
    ll_max = (LL_MAX_GB_PER_S.get(fab.arch, LL_MAX_GB_PER_S["ampere"]) if nodes == 1
              else LL_MAX_MULTI_NODE_GB_PER_S[2 if nodes <= 2 else 4]) * 1e9
    ll128_ok = fab.hw == "nvlink"  # LL128 is enabled over NVLink paths only (typeIntra <= PATH_NVB)
    out = []
    algos = ["ring"]
    if all_reduce:
        algos.append("tree")
    if fab.in_switch_reduction and hopper_plus and fab.kind == "switch" and ppn > 1:
        algos.append("nvls" if nodes == 1 else "nvls_tree")  # NVLS alone across nodes needs CollNet; NVLS tree not
    for a in algos:
        for pi, p in enumerate(_PROTOS):
            if a.startswith("nvls") and p != "simple":
                continue
            if p == "ll128" and not ll128_ok:
                continue
            bus = bw
            if a.startswith("nvls"):
                nv = intra_bw * NVLS_EFFICIENCY.get(fab.arch, 0.85) * (2.0 if all_reduce else (ppn - 1) / ppn)
                bus = min(nv, net_bw * (2 if nodes <= 2 else 1)) if a == "nvls_tree" else nv
            if a == "ring" and p == "ll":
                bus = min(ll_max, bus * 0.5)
            if a == "ring" and p == "ll128":
                bus *= 0.92
            if a == "tree":
                bus *= 0.92
                if p == "ll":
                    bus = min(bus / 3.8, ll_max)
                if p == "ll128":
                    bus *= 7 / 9 if nodes == 1 else 120 / 128
            ratio = 0.5 if a == "tree" else ranks / nsteps
            alg_bw = bus * ratio
            if alg_bw <= 0:  # e.g. NVLS all-gather with one rank a node: nothing for the switch to do
                continue
            intra_lat = HW_LAT_US[fab.hw][a][pi]
            if hop_s is not None and a == "ring":
                intra_lat = hop_s * 1e6
            inter_lat = HW_LAT_US["net"]["tree" if ppn == 1 else a][pi]
            lat = BASE_LAT_US[a][pi]
            if a == "ring":
                if nodes > 1:
                    intra_lat = max(intra_lat, NET_OVERHEAD_US * (3 if p == "simple" else 1))
                inter_steps = 0 if nodes == 1 else (2 * (nodes - 1) if all_reduce else nodes - 1)
                lat += (nsteps - inter_steps) * intra_lat + inter_steps * inter_lat
            elif a == "tree":
                lat += 2 * ((ppn - 1) * intra_lat + _log2i(nodes) * inter_lat)
            elif a == "nvls":
                lat = intra_lat
            else:  # nvls_tree
                lat += intra_lat + 2 * _log2i(nodes) * inter_lat
            out.append(Candidate(a, p, 1.0 / alg_bw, lat * 1e-6, fab.hw if nodes == 1 else "net"))
    return out


def engine_candidates(comm: Comm, ranks: int, fab: Fabric, efficiency: float) -> list[Candidate]:
    """The serving engines' peer-to-peer all-reduce kernels within one node (module docstring): one-shot (each rank
    reads the n - 1 peers' buffers: (n - 1) x bytes in at its link bandwidth), two-shot (reduce-scatter and
    all-gather by direct reads: 2 (n - 1) / n x bytes), and multimem on switches that reduce (the switch sums: the
    bytes go out and come back once, at the link's bandwidth x NCCL's NVLS efficiency). Each pays
    P2P_KERNEL_LATENCY_S a barrier: one for one-shot, two for two-shot and multimem."""
    if comm != Comm.ALL_REDUCE or ranks <= 1 or ranks > fab.devices_per_node or not fab.peer_to_peer:
        return []
    bw = fab.intra_for(ranks) * efficiency
    out = [Candidate("one_shot", "p2p", (ranks - 1) / bw, P2P_KERNEL_LATENCY_S, fab.hw),
           Candidate("two_shot", "p2p", 2 * (ranks - 1) / ranks / bw, 2 * P2P_KERNEL_LATENCY_S, fab.hw)]
    if fab.in_switch_reduction and fab.kind == "switch" and fab.arch in NVLS_EFFICIENCY:
        # a load-reduce through the switch, then a store-broadcast, a barrier each; not pipelined as NCCL's NVLS
        # is (no x 2): vLLM PR #24111's H100 multimem rows rise at ~4.6 us per MB on 4 ranks, 1.5 / (360 x 0.85)
        bus = bw * NVLS_EFFICIENCY[fab.arch]
        out.append(Candidate("multimem", "p2p", 2 * (ranks - 1) / ranks / bus, 2 * P2P_KERNEL_LATENCY_S, fab.hw))
    return out


def tree_correction(algorithm: str, protocol: str, nbytes: float) -> float:
    """NCCL's treeCorrectionFactor for a tree all-reduce of `nbytes` (1 outside its table and for other algorithms)."""
    if algorithm != "tree" or nbytes < 64:
        return 1.0
    i = int(math.floor(math.log2(nbytes / 64)))
    return TREE_CORRECTION[protocol][i] if i < 23 else 1.0


def prune(cands: list[Candidate], k: int = COMM_K) -> list[Candidate]:
    """The candidates that can win at some message size: those no other candidate beats on both latency and
    bandwidth (a tree's size correction only slows it, so a tree never counts as beating another); at most k, the
    lowest latencies first."""
    keep = [c for c in cands if not any(o is not c and o.tree_index < 0 and o.fixed_s <= c.fixed_s
                                        and o.per_byte_s <= c.per_byte_s
                                        and (o.fixed_s, o.per_byte_s) != (c.fixed_s, c.per_byte_s) for o in cands)]
    return sorted(keep, key=lambda c: c.fixed_s)[:k]


def choose(cands: list[Candidate], nbytes: float) -> tuple[Candidate | None, float]:
    """The cheapest candidate at this message size and its time (the tree's size correction applied)."""
    best, best_t = None, math.inf
    for c in cands:
        t = c.time_s(nbytes)
        if t < best_t:
            best, best_t = c, t
    return best, best_t


def _arch(family: str | None) -> str:
    f = (family or "").lower()
    for key in ("blackwell", "hopper", "volta"):
        if key in f:
            return key
    return "ampere"


def fabric_of(device: "Device") -> Fabric:
    """The fabric a device's own interconnect implies when no system says (each rule an estimate, stated here):
    PCIe (or none) -> the host's PCIe, 8 devices a node; an NVLink bridge -> pairs, joined by PCIe; AMD Infinity
    Fabric -> a full mesh of 8 (the Instinct OAM platforms' xGMI); other NVLink -> NVSwitch, 8 devices a node (NVIDIA
    HGX boards since A100), with in-switch reduction from Hopper on (NVSwitch gen 3, NVLink SHARP); 72 a node for
    GB200 and GB300 (NVL72 racks); TPU ICI -> a torus of up to 256 chips (a v5e or v6e pod), no network stated. A
    node's network: one 400 Gb/s NIC per GPU for Hopper and Blackwell, 200 Gb/s before (DGX H100 / DGX A100 compute
    fabrics), as the systems in hardware_specs/systems state them; 800 Gb/s for Blackwell Ultra (B300, GB300: one
    ConnectX-8 a GPU, "4 ConnectX-8 Host Channel Adapters" a 4-GPU compute tray, NVIDIA's GB300 NVL72 enterprise
    reference architecture, https://docs.nvidia.com/enterprise-reference-architectures/nvl72-ai-factory/latest/
    components.html)."""
    sysm = device.system
    if sysm is not None:  # a system's own figures (perfmodel.system)
        net = sysm.network
        return Fabric(sysm.fabric.kind, sysm.fabric.bandwidth_gb_per_s * 1e9,
                      "pci" if sysm.fabric.kind == "pcie" else "nvlink", sysm.devices_per_node,
                      sysm.fabric.in_switch_reduction, _arch(device.family), net.bytes_per_s if net else None,
                      net.name if net else "", sysm.fabric.name)
    link = device.interconnect
    fig = device.figure("interconnect.bandwidth")
    bw = fig.value if fig is not None else 0.0
    name = (link.name if link is not None else "").lower()
    arch = _arch(device.family)
    ultra = device.id.startswith(("b300", "gb300"))  # Blackwell Ultra: ConnectX-8, 800 Gb/s
    per_gpu_nic = 100e9 if ultra else 50e9 if arch in ("hopper", "blackwell") else 25e9
    if link is None or link.pcie_generation or "pci" in name:
        return Fabric("pcie", bw, "pci", 8, False, arch, per_gpu_nic * 8, "estimated: 400 Gb/s a GPU",
                      link.name if link is not None else "PCIe (estimated)")
    if "bridge" in name:
        from .pcie import pcie_bytes_per_s

        return Fabric("mesh", bw, "nvlink", 2, False, arch, 2 * pcie_bytes_per_s(4, 16), "PCIe 4.0 x16 a GPU",
                      link.name)
    if "infinity" in name or "xgmi" in name:
        return Fabric("mesh", bw, "nvlink", 8, False, arch, 8 * 50e9, "estimated: 400 Gb/s a GPU", link.name)
    if "ici" in name:  # one ICI domain: a pod slice of up to 256 chips (v5e, v6e pods)
        return Fabric("torus", bw, "nvlink", 256, False, arch, None, "", link.name)
    per_node = 72 if device.id.startswith(("gb200", "gb300")) else 8  # NVL72 racks
    return Fabric("switch", bw, "nvlink", per_node, arch in ("hopper", "blackwell") and device.year is not None
                  and device.year >= 2022, arch, per_gpu_nic * per_node, "estimated: one NIC a GPU",
                  f"{link.name} (NVSwitch, estimated)")
