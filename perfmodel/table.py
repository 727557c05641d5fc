"""Lowered tables: a phase's ops as coefficients over monomials of the row sizes.

`lower()` runs once per (model, precision, parallelism, attention) on polynomial sizes (perfmodel.poly); each op's
quantities become a row of coefficients, and any number of rows is then evaluated with one matrix product:
quantities of a field (ops, rows) = coef (ops, monomials) @ monomial values (monomials, rows).

Variables: prefill `B` sequences, `P` prompt tokens, `LG` logit positions per sequence (1, the last;
P with Workload.logits "all"); decode `B`, `C` the context of the step, `X` the cross-attended prompt (encoder-decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .graph import NUMERIC_FIELDS, Op, Parallel, Pass, Precision, lower
from .model import ModelSpec
from .poly import Poly, Program, mentions

FIELDS = NUMERIC_FIELDS + ("rows", "keys")
F = {f: i for i, f in enumerate(FIELDS)}  # index of a field in the coefficient table
# sums of fields, computed as one (costing needs the bytes of long-lived state and of activations, not their parts)
COMBINED = {"resident_bytes": ("weight_bytes", "kv_read_bytes", "kv_write_bytes"),
            "act_bytes": ("act_in_bytes", "act_out_bytes")}


@dataclass(frozen=True, eq=False)
class OpTable:
    """The ops of one phase: `shells` carry name, kind, dtype, count, comm and variant (sizes zero); `coef` the
    quantities (FIELDS x ops x monomials)."""

    shells: tuple[Op, ...]
    monomials: tuple[tuple, ...]
    coef: np.ndarray

    def __len__(self) -> int:
        return len(self.shells)

    def quantities(self, env: dict[str, Any] | np.ndarray, rows: int, ops: np.ndarray | None = None,
                   fields: tuple[str, ...] = FIELDS) -> dict[str, np.ndarray]:
        """Quantities of every op (or of the `ops` selected by a mask) for `rows` rows whose variables are `env`
        (arrays of `rows`, or scalars; or monomials_at(env, rows) already computed): {field: (ops, rows)}, counts
        not applied. `fields` may name sums (COMBINED: resident_bytes, act_bytes). A field that is identically zero
        is a read-only view of zeros."""
        flat, live = self._flat(ops, fields)  # the fields that are not identically zero, (fields x ops, monomials)
        n_ops = len(self) if ops is None else int(np.count_nonzero(ops))
        mono = env if isinstance(env, np.ndarray) else self.monomials_at(env, rows)
        values = iter((flat @ mono).reshape(-1, n_ops, rows))  # one product, every field
        zero = np.broadcast_to(0.0, (n_ops, rows))
        return {f: next(values) if on else zero for f, on in zip(fields, live)}

    def _flat(self, ops: np.ndarray | None, fields: tuple[str, ...]) -> tuple[np.ndarray, list[bool]]:
        """The coefficient rows of the requested fields (sums added up) that are not identically zero, kept."""
        key = ("flat", None if ops is None else ops.tobytes(), fields)
        if key not in self.__dict__:
            coef = self.coef if ops is None else self.coef[:, ops]
            blocks = [sum(coef[F[part]] for part in COMBINED.get(f, (f,))) for f in fields]
            live = [bool(np.any(b != 0.0)) for b in blocks]
            flat = np.concatenate([b for b, on in zip(blocks, live) if on] or [np.zeros((0, coef.shape[2]))])
            self.__dict__[key] = (np.ascontiguousarray(flat), live)
        return self.__dict__[key]

    def monomials_at(self, env: dict[str, Any], rows: int) -> np.ndarray:
        """The table's monomials evaluated for `rows` rows (monomials, rows)."""
        return self._program.run(env, rows)

    @cached_property
    def _program(self) -> Program:
        return Program(self.monomials)

    def totals(self, env: dict[str, Any] | np.ndarray, rows: int) -> np.ndarray:
        """Every quantity summed over the ops, counts applied, for `rows` rows: (FIELDS, rows). The sum of the ops'
        polynomials is a polynomial: one small product, whatever the number of ops."""
        return self._summed @ (env if isinstance(env, np.ndarray) else self.monomials_at(env, rows))

    @cached_property
    def _summed(self) -> np.ndarray:
        counts = np.array([op.count for op in self.shells], dtype=float)
        return np.tensordot(self.coef, counts, axes=(1, 0))  # (FIELDS, monomials)

    def nonzero(self, field: str) -> np.ndarray:
        """Ops whose `field` is not identically zero (ops,)."""
        return np.any(self.coef[F[field]] != 0.0, axis=1)

    def depends(self, var: str) -> np.ndarray:
        """Ops with a quantity that changes with variable `var` (ops,)."""
        key = ("depends", var)
        if key not in self.__dict__:
            uses = np.array([mentions(m, var) for m in self.monomials])
            self.__dict__[key] = (np.any(self.coef[:, :, uses] != 0.0, axis=(0, 2)) if uses.any()
                                  else np.zeros(len(self), dtype=bool))
        return self.__dict__[key]


def table(ops: tuple[Op, ...]) -> OpTable:
    """The coefficient table of ops lowered on polynomial sizes."""
    polys = [[Poly.of(getattr(op, f)) for f in FIELDS] for op in ops]
    monos: dict[tuple, int] = {}
    for row in polys:
        for p in row:
            for m in p.terms:
                monos.setdefault(m, len(monos))
    coef = np.zeros((len(FIELDS), len(ops), max(len(monos), 1)))
    for i, row in enumerate(polys):
        for f, p in enumerate(row):
            for m, c in p.terms.items():
                coef[f, i, monos[m]] += c
    shells = tuple(Op(op.name, op.kind, op.dtype, count=op.count, comm=op.comm, variant=op.variant) for op in ops)
    return OpTable(shells, tuple(monos) or ((),), coef)


@dataclass(frozen=True, eq=False)
class Lowered:
    """A model lowered for one configuration: its prefill and decode tables, and the contexts at which decode's
    quantities stop being linear in the context (sliding-window sizes)."""

    model: ModelSpec
    prefill: OpTable
    decode: OpTable | None
    breaks: tuple[float, ...]


_CACHE: dict[tuple, Lowered] = {}
_CACHE_SIZE = 1024


def lowered(model: ModelSpec, prec: Precision, par: Parallel, fused: bool) -> Lowered:
    """The tables of a model in one configuration, lowered once per process and kept (at most _CACHE_SIZE) while
    the same model object is used (the catalog keeps loaded models: perfmodel.catalog._kept)."""
    key = (id(model), prec, par, fused)
    hit = _CACHE.get(key)
    if hit is not None and hit.model is model:
        return hit
    B, P, LG, C, X = (Poly.var(v) for v in ("B", "P", "LG", "C", "X"))
    if model.arch == "decoder":
        passes = [Pass("decoder", B, P, P, logits=LG)]
    elif model.arch == "encoder":
        passes = [Pass("encoder", B, P, P)]
    else:  # the encoder over the prompt, then the decoder's first step cross-attending to it
        passes = [Pass("encoder", B, P, P), Pass("decoder", B, 1.0, 1.0, cross_len=P, logits=1.0)]
    prefill = table(tuple(op for ps in passes for op in lower(model, ps, prec, par, fused)))
    decode = None
    if model.arch != "encoder":
        cross = X if model.arch == "encoder_decoder" else 0.0
        decode = table(lower(model, Pass("decoder", B, 1.0, C, cross_len=cross, logits=1.0), prec, par, fused))
    windowed = model.sliding_window and any(s for s, _ in model.layer_kinds())
    out = Lowered(model, prefill, decode, (float(model.sliding_window),) if windowed else ())
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = out
    return out
