"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them in one pass.

With each drafted token accepted with probability a (independently, the standard assumption), a step yields
E = (1 - a^(k+1)) / (1 - a) tokens on average: the accepted prefix and the target's own next token (Leviathan,
Kalman and Matias, "Fast Inference from Transformers via Speculative Decoding", ICML 2023, eq. 1,
https://arxiv.org/abs/2211.17192). A step costs k drafter decode steps and one target pass over k + 1 tokens a
sequence (perfmodel.iteration: a chunk of k + 1 tokens after the context), so

    TPOT = (k x drafter step + target verification pass) / E.

Drafters: another catalog model (`draft` = its id; it runs on the same device, in the same formats), `eagle`:
EAGLE's draft head, one decoder layer of the target's width feeding the target's LM head (Li et al., "EAGLE:
Speculative Sampling Requires Rethinking Feature Uncertainty", ICML 2024, https://arxiv.org/abs/2401.15077), costed as
the target with one layer, or `medusa`: k Medusa heads on the target's last hidden state (Cai et al., "Medusa: Simple
LLM Inference Acceleration Framework with Multiple Decoding Heads", ICML 2024, https://arxiv.org/abs/2401.10774,
eq. 1: head i = W2_i (SiLU(W1_i h) + h), W1_i of d x d, W2_i of d x V, each head its own copy of the LM head), all k
run in ONE pass a step, so

    TPOT = (Medusa pass + target verification pass) / E.

The verification is costed as a chain of k + 1 tokens a sequence; engines that verify a tree of candidates (Medusa's
and EAGLE-2's trees, tens of tokens) run more tokens through a pass that, at small batches, reads the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import load_model
from .device import Device
from .efficiency import Efficiency
from .errors import PerfmodelError
from .evaluate import evaluate
from .model import ModelSpec
from .iteration import step_cost
from .workload import Workload

# Acceptance rate taken when none is given: within the 0.5-0.9 that Leviathan et al. (Table 3) and the EAGLE paper
# report across model pairs and tasks; an assumption, said so in the result
DEFAULT_ACCEPTANCE = 0.7
DEFAULT_DRAFT_TOKENS = 4
MEDUSA = "medusa"
# vocabularies of one tokenizer differ only by the padding of the embedding table (rounded up to a multiple of 64 to
# 256 rows for the matrix units): a drafter whose vocabulary is within this share of the target's is taken to share it
VOCAB_PADDING = 0.01


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a speculative step yields on average: (1 - a^(k+1)) / (1 - a); k + 1 when every draft is accepted."""
    if acceptance >= 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def _rate_for(length: float, k: int) -> float:
    """The acceptance rate whose expected tokens a step (expected_tokens) equal `length`, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < length else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Speculative:
    drafter: str
    draft_tokens: int
    acceptance: float
    acceptance_assumed: bool
    expected_tokens_per_step: float
    draft_step_s: float  # one drafter pass
    verify_step_s: float
    tpot_s: float
    plain_tpot_s: float
    draft_passes: int  # drafter passes a step: draft_tokens, or 1 for Medusa's heads

    @property
    def decode_tokens_per_s(self) -> float:
        return 1.0 / self.tpot_s

    @property
    def speedup(self) -> float:
        return self.plain_tpot_s / self.tpot_s

    def to_dict(self) -> dict:
        return {"drafter": self.drafter, "draft_tokens": self.draft_tokens, "acceptance": self.acceptance,
                "acceptance_assumed": self.acceptance_assumed,
                "expected_tokens_per_step": self.expected_tokens_per_step, "draft_step_s": self.draft_step_s,
                "draft_passes": self.draft_passes,
                "verify_step_s": self.verify_step_s, "tpot_s": self.tpot_s,
                "decode_tokens_per_s": self.decode_tokens_per_s, "speedup": self.speedup}


def check_spec(target: ModelSpec, drafter: ModelSpec, k: Any, acceptance: float) -> None:
    """What speculative decoding needs: a decoder-only target, a drafter sharing its tokenizer, 1-64 draft tokens,
    an acceptance probability."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= 64:
        raise PerfmodelError(f"--draft-tokens must be a whole number from 1 to 64; got {k!r}")
    if not 0.0 <= acceptance <= 1.0:
        raise PerfmodelError(f"--acceptance must be a probability in [0, 1]; got {acceptance!r}")
    if target.arch != "decoder":
        raise PerfmodelError(f"speculative decoding drafts tokens for a decoder-only model; {target.id} is "
                             f"{target.arch.replace('_', '-')}")
    # one tokenizer, embedding tables padded differently: Qwen2.5 0.5B-3B have 151,936 rows, 7B and up 152,064
    if abs(drafter.vocab_size - target.vocab_size) > VOCAB_PADDING * target.vocab_size:
        raise PerfmodelError(f"the drafter {drafter.id} has a vocabulary of {drafter.vocab_size} tokens, the target "
                             f"{target.id} {target.vocab_size}: a drafter must share the target's tokenizer")


def drafter_spec(target: ModelSpec, draft: str | ModelSpec) -> ModelSpec:
    """The drafter's model: a catalog model, EAGLE's one-layer head, or (Medusa's heads, costed by medusa_heads_s)
    the target itself."""
    if isinstance(draft, ModelSpec):
        return draft
    if draft.lower() == MEDUSA:
        return target
    if draft.lower() == "eagle":
        data = target.model_dump(exclude_none=True)
        data.update(id=f"{target.id}-eagle-head", name=f"EAGLE head of {target.name or target.id}", n_layers=1)
        for key in ("n_dense_layers", "published_params", "aliases"):  # the target's, not the head's
            data.pop(key, None)
        return ModelSpec(**data)
    return load_model(draft)


@dataclass(frozen=True)
class Drafting:
    """A drafter resolved: its spec, the draft tokens k, the acceptance rate (assumed or not) and the tokens E a step
    yields."""

    drafter: ModelSpec
    draft_tokens: int
    acceptance: float
    acceptance_assumed: bool
    tokens_per_step: float
    medusa: bool = False  # k Medusa heads on the target (drafter is the target): one pass a step, medusa_heads_s

    @property
    def name(self) -> str:
        return f"{self.drafter.id}-medusa-heads" if self.medusa else self.drafter.id

    @property
    def draft_passes(self) -> int:
        """Drafter passes a step: k autoregressive steps, or one pass of all the Medusa heads."""
        return 1 if self.medusa else self.draft_tokens


def drafting(target: ModelSpec, draft: str | ModelSpec | None, draft_tokens: int | None = None,
             acceptance: float | None = None, accept_length: float | None = None) -> Drafting | None:
    """The speculative-decoding settings, defaults applied and checked; None without a drafter (then neither draft
    tokens nor an acceptance may be given). `accept_length`: the mean tokens a step yields as measured (an engine's
    "mean acceptance length"), used for E instead of the formula (its acceptance is then the rate that gives it)."""
    if draft is None:
        if draft_tokens is not None or acceptance is not None:
            raise PerfmodelError("--draft-tokens and --acceptance set speculative decoding: name the drafter with "
                                 "--draft-model (a catalog model, eagle or medusa)")
        return None
    k = DEFAULT_DRAFT_TOKENS if draft_tokens is None else draft_tokens
    assumed = acceptance is None and accept_length is None
    a = DEFAULT_ACCEPTANCE if assumed else float(acceptance) if acceptance is not None else math.nan
    if acceptance is not None and not 0.0 <= a <= 1.0:
        raise PerfmodelError(f"--acceptance must be a probability in [0, 1]; got {acceptance!r}")
    if accept_length is not None:
        if acceptance is not None:
            raise PerfmodelError("give an acceptance rate or a measured acceptance length, not both")
        if not 1.0 <= accept_length <= k + 1:
            raise PerfmodelError(f"an acceptance length is 1 to draft tokens + 1 ({k + 1}); got {accept_length!r}")
        a = _rate_for(accept_length, k)
    dspec = drafter_spec(target, draft)
    check_spec(target, dspec, k, 0.5 if acceptance is None else a)
    e = expected_tokens(a, k) if accept_length is None else float(accept_length)
    return Drafting(dspec, int(k), a, assumed, e, medusa=isinstance(draft, str) and draft.lower() == MEDUSA)


def medusa_heads_s(target: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, heads: int,
                   rows: Any) -> np.ndarray:
    """Time of one pass of `heads` Medusa heads over `rows` sequences (scalar or array), on one device in the
    target's formats: per head a d x d matmul (the residual block; its SiLU and add are elementwise on d values a row,
    left out) and a d x V matmul (the head's own LM head, read at the LM head's format, logits out in FP32), each a
    kernel of its own."""
    from .cost import ops_time_s
    from .evaluate import workload_machine
    from .graph import Op, OpKind

    rows = np.asarray(rows, dtype=float)
    d, v = float(target.d_model), float(target.vocab_size)
    w = wl.head_weights or wl.weights
    act = wl.act
    mach = workload_machine(device, eff, drafter_workload(wl))
    ops = (Op("medusa_resblock", OpKind.MATMUL, act, flops=2.0 * rows * d * d, weight_bytes=d * d * w.bytes,
              act_in_bytes=rows * d * act.bytes, act_out_bytes=rows * d * act.bytes, rows=rows),
           Op("medusa_lm_head", OpKind.MATMUL, act, flops=2.0 * rows * d * v, weight_bytes=d * v * w.bytes,
              act_in_bytes=rows * d * act.bytes, act_out_bytes=rows * v * 4.0, rows=rows))
    return heads * np.asarray(ops_time_s(ops, mach), dtype=float)


@dataclass(frozen=True, eq=False)
class MedusaCost:
    """The Medusa heads' pass as the serving simulator asks a drafter's cost (StepCost.iteration_s's signature), for
    1 to `max_rows` sequences, tabulated once."""

    times_s: np.ndarray  # index: sequences

    @classmethod
    def table(cls, target: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None, heads: int,
              max_rows: int) -> "MedusaCost":
        rows = np.arange(max_rows + 1, dtype=float)
        times = medusa_heads_s(target, device, wl, eff, heads, np.maximum(rows, 1.0))
        times[0] = 0.0
        return cls(times)

    def iteration_s(self, n_dec: int, sum_ctx: float, chunks: list, emitting: int) -> float:
        return float(self.times_s[min(int(n_dec), len(self.times_s) - 1)])


def drafter_workload(wl: Workload) -> Workload:
    """The drafter's workload: the target's formats and lengths on one device."""
    return Workload(**{**wl.model_dump(exclude_none=True), "tp": 1, "ep": 1, "pp": 1, "dp_attention": False})


def speculative(target: ModelSpec, device: Device, wl: Workload, eff: Efficiency | None,
                draft: str | ModelSpec | None, draft_tokens: int | None = None, acceptance: float | None = None,
                accept_length: float | None = None) -> Speculative | None:
    """The decode rate of `wl` with speculative decoding (see the module docstring), at the mean decode context;
    None without a drafter. The settings as `drafting` takes them."""
    dr = drafting(target, draft, draft_tokens, acceptance, accept_length)
    if dr is None:
        return None
    k = dr.draft_tokens
    gen = wl.gen_len if wl.gen_len is not None else 128
    b = wl.batch
    ctx = wl.prompt_len + max(gen, 1) / 2.0  # the mean context of the decode steps
    sc = step_cost(target, device, wl, eff, b * (k + 1), b, int(ctx + k + 2))
    verify = sc.iteration_s(0, 0.0, [(k + 1.0, ctx)] * b, b)
    plain = sc.iteration_s(b, b * (ctx + 1.0), [], b)
    if dr.medusa:  # all k heads in one pass
        draft_step = float(medusa_heads_s(target, device, wl, eff, k, float(b)))
    else:
        one = np.ones(1)
        dev = evaluate(dr.drafter, device, drafter_workload(wl), eff, one * b, one * ctx, one * 2.0)
        draft_step = float(dev.metrics["tpot_s"][0])
    e = dr.tokens_per_step
    return Speculative(dr.name, k, dr.acceptance, dr.acceptance_assumed, e, draft_step, verify,
                       (dr.draft_passes * draft_step + verify) / e, plain, dr.draft_passes)
