"""Polynomials in a pass's sizes, so that a model is lowered once and costed for any number of rows.

Every op's FLOPs and bytes are low-order polynomials in the sizes of a pass (sequences B, new tokens per sequence q,
positions attended kv, ...) and in a few named functions of them (causal pairs under a window, expected MoE experts,
conversion passes). `lower()` runs on `Poly` sizes exactly as on NumPy arrays; the result is a table of coefficients
per op and monomial (perfmodel.table), evaluated for many rows with one matrix product.

A `Poly` is {monomial: coefficient}; a monomial is a sorted tuple of atoms; an atom is a variable or a named
function of polynomials (`FUNCTIONS`, the same NumPy code the numeric lowering runs). A `Program` evaluates a
table's monomials for many rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Atom:
    """A variable (`fn` "var", `params` (name,)) or a function `fn` of polynomial `args` with fixed `params`."""

    fn: str
    params: tuple = ()
    args: tuple = ()  # Poly.key of each argument

    def __repr__(self) -> str:
        return self.params[0] if self.fn == "var" else f"{self.fn}{self.params}{self.args}"


class Poly:
    """A polynomial over atoms with float coefficients (arithmetic with numbers and other polynomials)."""

    __slots__ = ("terms",)
    __array_ufunc__ = None  # NumPy scalars defer to the reflected operators below

    def __init__(self, terms: dict[tuple, float]):
        self.terms = {m: c for m, c in terms.items() if c != 0.0}

    @staticmethod
    def var(name: str) -> "Poly":
        return Poly({(Atom("var", (name,)),): 1.0})

    @staticmethod
    def of(x: Any) -> "Poly":
        if isinstance(x, Poly):
            return x
        if np.ndim(x):
            raise TypeError("a Poly combines with scalars only")
        return Poly({(): float(x)})

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.terms.items(), key=repr))

    def __add__(self, other: Any) -> "Poly":
        out = dict(self.terms)
        for m, c in Poly.of(other).terms.items():
            out[m] = out.get(m, 0.0) + c
        return Poly(out)

    __radd__ = __add__

    def __neg__(self) -> "Poly":
        return Poly({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: Any) -> "Poly":
        return self + (-Poly.of(other))

    def __rsub__(self, other: Any) -> "Poly":
        return Poly.of(other) + (-self)

    def __mul__(self, other: Any) -> "Poly":
        other = Poly.of(other)
        out: dict[tuple, float] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.terms.items():
                m = tuple(sorted(m1 + m2, key=repr))
                out[m] = out.get(m, 0.0) + c1 * c2
        return Poly(out)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Poly":
        if isinstance(other, Poly):
            return self * call("recip", other)
        return self * (1.0 / float(other))

    def __bool__(self) -> bool:
        raise TypeError("a Poly has no truth value; test `.terms` for a structural zero")

    def __repr__(self) -> str:
        return " + ".join(f"{c:g}*{'*'.join(map(repr, m)) or '1'}" for m, c in self.key) or "0"


_ARGS: dict[tuple, Poly] = {}  # Poly.key -> Poly, for the arguments of function atoms


def call(fn: str, *args: Any, params: tuple = ()) -> Any:
    """FUNCTIONS[fn](*args, *params): on numbers and arrays, the value; on polynomials, a new atom."""
    if not any(isinstance(a, Poly) for a in args):
        return FUNCTIONS[fn](*args, *params)
    keys = []
    for a in args:
        p = Poly.of(a)
        _ARGS.setdefault(p.key, p)
        keys.append(p.key)
    return Poly({(Atom(fn, tuple(params), tuple(keys)),): 1.0})


def positive(x: Any) -> bool:
    """Whether a size is positive anywhere: a polynomial that is not identically zero, or any positive element."""
    if isinstance(x, Poly):
        return bool(x.terms)
    return bool(np.any(np.asarray(x) > 0))


def _causal_pairs(q_len: Any, kv_len: Any, window: float) -> Any:
    def s(n: Any) -> Any:  # sum_{j=1..n} min(j, w)
        n = np.maximum(n, 0.0)
        if math.isinf(window):
            return n * (n + 1) / 2
        return np.where(n <= window, n * (n + 1) / 2, window * (window + 1) / 2 + (n - window) * window)

    return s(kv_len) - s(kv_len - q_len)


def _window_keys(q_len: Any, kv_len: Any, window: float) -> Any:
    return np.minimum(kv_len, q_len + window - 1)


def _tiled_causal_pairs(q_len: Any, kv_len: Any, window: float, tile: float) -> Any:
    q = np.asarray(q_len, dtype=float)
    extra = np.where(q > 1, q * (tile - 1.0) / 2.0, 0.0)  # one query (decode) ends on no diagonal
    return np.minimum(_causal_pairs(q_len, kv_len, window) + extra, q * _window_keys(q, kv_len, window))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    # query-key pairs when q new tokens follow kv - q cached ones, each attending to at most `window` positions
    "causal_pairs": _causal_pairs,
    # keys a query sees under a sliding window: min(kv, q + window - 1)
    "window_keys": _window_keys,
    # distinct experts touched when `tokens` tokens each pick k of n (uniform routing): n (1 - (1 - k/n)^tokens)
    "expected_experts": lambda tokens, n, k: n * (1.0 - (1.0 - k / n) ** np.asarray(tokens, dtype=float)),
    # weight conversion passes of llama.cpp's fp16_copy path: one per 512-token micro-batch above 32 rows
    "fp16_passes": lambda t: np.where(np.asarray(t, dtype=float) > 32, np.ceil(np.asarray(t, dtype=float) / 512.0),
                                      0.0),
    # ONNX Runtime's MatMulNBits (fp16_scratch): its fused kernel takes one row only, so every call of more rows
    # expands the whole weight into an FP16 scratch buffer first, once per call
    "scratch_passes": lambda t: np.where(np.asarray(t, dtype=float) > 1, 1.0, 0.0),
    # pairs a fused causal kernel computes: each query of a multi-query pass ends inside a key tile, computed whole
    # and masked, (tile - 1) / 2 keys past the diagonal on average, at most every key there is
    "tiled_causal_pairs": _tiled_causal_pairs,
    # a pass of t tokens in micro-batches of u (llama.cpp's n_ubatch): rows per call, and passes over the weights
    "micro_rows": lambda t, u: np.minimum(np.asarray(t, dtype=float), u),
    "micro_passes": lambda t, u: np.maximum(np.ceil(np.asarray(t, dtype=float) / u), 1.0),
    "recip": lambda x: 1.0 / np.asarray(x, dtype=float),
    "at_least_one": lambda x: np.maximum(np.asarray(x, dtype=float), 1.0),
    # sequences on the busiest of g data-parallel replicas: ceil(b / g)
    "ceil_div": lambda x, g: np.ceil(np.asarray(x, dtype=float) / g),
}


def mentions(mono: tuple, var: str) -> bool:
    """Whether a monomial depends on variable `var` (directly, or through a function's arguments)."""
    for atom in mono:
        if atom.fn == "var":
            if atom.params[0] == var:
                return True
        elif any(mentions(m, var) for k in atom.args for m, _ in k):
            return True
    return False


class Program:
    """Monomials compiled for repeated evaluation: every atom once, in an order where arguments come first, so that
    evaluating them for a set of rows is a list of array operations with no hashing."""

    def __init__(self, monomials: tuple[tuple, ...]):
        self.steps: list[tuple] = []  # (var name,) or (fn, params, [[(coef, atom indexes)] per argument])
        index: dict[Atom, int] = {}

        def compile_atom(atom: Atom) -> int:
            if atom not in index:
                if atom.fn == "var":
                    step: tuple = (atom.params[0],)
                else:
                    step = (atom.fn, atom.params, [[(c, [compile_atom(a) for a in m]) for m, c in k]
                                                   for k in atom.args])
                self.steps.append(step)
                index[atom] = len(self.steps) - 1
            return index[atom]

        self.monomials = [[compile_atom(a) for a in m] for m in monomials]

    def run(self, env: dict[str, Any], rows: int) -> np.ndarray:
        """The monomials' values (monomials, rows)."""
        vals: list[Any] = []
        for step in self.steps:
            if len(step) == 1:
                vals.append(env[step[0]])
            else:
                args = []
                for poly in step[2]:
                    total: Any = 0.0
                    for c, atoms in poly:
                        term: Any = c
                        for a in atoms:
                            term = term * vals[a]
                        total = total + term
                    args.append(total)
                vals.append(FUNCTIONS[step[0]](*args, *step[1]))
        out = np.empty((len(self.monomials), rows))
        for j, atoms in enumerate(self.monomials):
            value: Any = 1.0
            for a in atoms:
                value = value * vals[a]
            out[j] = value
        return out
