"""PCI Express host links: per-direction bandwidth from the generation and lane count."""

from __future__ import annotations

# PCI Express per-lane signalling rate (GT/s) and line-code efficiency per generation, PCI-SIG ("PCI Express Base
# Specification" revisions 1.0-6.0; the rates and encodings as PCI-SIG tabulates them at
# https://pcisig.com/specifications and in its FAQ https://pcisig.com/faq): 8b/10b for 1.x-2.x, 128b/130b for
# 3.0-5.0; 6.0 signals PAM4 at 64 GT/s in 256-byte FLITs of which 242 bytes carry data (FEC and CRC the rest).
PCIE_GT_PER_S = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}
PCIE_ENCODING = {1: 8 / 10, 2: 8 / 10, 3: 128 / 130, 4: 128 / 130, 5: 128 / 130, 6: 242 / 256}
# First products shipping each generation (for devices that state no host link): PCIe 1.0 (2004: Intel 915/925
# chipsets), 2.0 (2007: Intel X38, Radeon HD 3870), 3.0 (2012: Ivy Bridge, Radeon HD 7970), 4.0 (2019: Zen 2 /
# Radeon RX 5700), 5.0 (2022: Alder Lake, H100 PCIe), 6.0 (2025: Blackwell Ultra)
PCIE_FIRST_YEAR = {1: 2004, 2: 2007, 3: 2012, 4: 2019, 5: 2022, 6: 2025}


def pcie_bytes_per_s(generation: int, lanes: int) -> float:
    """Per direction: lanes x GT/s x encoding efficiency / 8 bits (PCIe 4.0 x16: 16 x 16e9 x 128/130 / 8 = 31.5 GB/s)."""
    return lanes * PCIE_GT_PER_S[generation] * 1e9 * PCIE_ENCODING[generation] / 8
