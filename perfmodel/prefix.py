"""Prefix caching: a share of the prompt already in the engine's KV cache (a shared system prompt, a multi-turn
history), so the prompt pass computes only the rest, attending to all of it.

TTFT with a hit rate h: the prompt pass over the (1 - h) x P new tokens of each sequence after h x P cached ones,
costed as the serving simulator costs a prefill chunk (perfmodel.iteration: the token ops over the new tokens,
attention of the new queries over every key), plus the engine's host overheads. Decode is unchanged: its context is
the whole prompt either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .device import Device
from .efficiency import Efficiency
from .errors import PerfmodelError
from .model import ModelSpec
from .iteration import step_cost
from .workload import Workload


@dataclass(frozen=True)
class PrefixHit:
    hit: float
    cached_tokens: int
    ttft_s: float
    plain_ttft_s: float

    @property
    def speedup(self) -> float:
        return self.plain_ttft_s / self.ttft_s

    def to_dict(self) -> dict:
        return {"hit": self.hit, "cached_tokens": self.cached_tokens, "ttft_s": self.ttft_s,
                "plain_ttft_s": self.plain_ttft_s, "speedup": self.speedup}


def prefix_hit(model: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, hit: float) -> PrefixHit:
    """TTFT of `wl` with `hit` of each prompt's tokens found in the prefix cache (floor(hit x prompt), at least one
    token left to compute)."""
    if not (isinstance(hit, (int, float)) and math.isfinite(hit) and 0.0 <= hit < 1.0):
        raise PerfmodelError(f"--prefix-hit must be a share in [0, 1) of the prompt; got {hit!r}")
    if model.arch != "decoder":
        raise PerfmodelError(f"a prefix cache holds a decoder's KV cache; {model.id} is "
                             f"{model.arch.replace('_', '-')}")
    p, b = wl.prompt_len, wl.batch
    cached = min(int(math.floor(hit * p)), p - 1)
    sc = step_cost(model, device, wl, eff, b * p, b, p + 1)
    with_hit = sc.iteration_s(0, 0.0, [(float(p - cached), float(cached))] * b, b)
    plain = sc.iteration_s(0, 0.0, [(float(p), 0.0)] * b, b)
    return PrefixHit(float(hit), cached, with_hit, plain)
