"""The public API: load a model and a device, estimate a workload, read the result."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import load_device, load_model
from .device import Device
from .efficiency import Efficiency
from .engines import checkpoint_formats, device_class, efficiency_for, open_act
from .errors import CapacityError, PerfmodelError
from .evaluate import (Evaluation, Workload, capacity_message, default_gen, evaluate, layout_error, row_errors,
                       row_warnings)
from .bands import TIME_METRICS, intervals
from .model import ModelSpec
from .offload import estimate_offload, suggest_offload
from .prefix import prefix_hit as cached_prefix
from .speculative import speculative
from .provenance import used_figures

if TYPE_CHECKING:
    import pandas as pd


def estimate(model: str | ModelSpec, device: str | Device, workload: Workload | None = None, *,
             efficiency: Efficiency | str | Path | None = None, engine: str | None = None,
             ignore_capacity: bool = False, gpu_layers: int | None = None, offload_experts: bool = False,
             host: str | Device | None = None, draft: str | ModelSpec | None = None,
             draft_tokens: int | None = None, acceptance: float | None = None, prefix_hit: float | None = None,
             **kw: Any) -> "Estimate":
    """Estimate TTFT, TPOT, tokens/s and memory of `workload` (or of Workload(**kw)) for a model on a device.
    `engine`: a software stack's fitted profile (llamacpp, vllm, trtllm, hf, ideal, ...) when no `efficiency` is
    given; it also picks the error band the validation residuals of that stack give. `gpu_layers` (llama.cpp's
    -ngl) or `offload_experts`: part of the model on the `host` CPU (perfmodel.offload; an OffloadEstimate).
    `draft` (a catalog model or "eagle"), `draft_tokens`, `acceptance`: speculative decoding, reported beside the
    plain decode (Estimate.speculative; perfmodel.speculative). `prefix_hit`: that share of each prompt already in
    a prefix cache, its TTFT reported beside the plain one (Estimate.prefix; perfmodel.prefix).

    >>> est = estimate("llama-2-7b", "a100-80gb-sxm", batch=1, prompt_len=512, gen_len=128)
    >>> round(est.tpot_s * 1e3, 1)  # ms per output token
    """
    m, d = load_model(model), load_device(device)
    wl = workload or Workload(**kw)
    act_open = "act" not in wl.model_fields_set
    if wl.gen_len is None:
        wl = Workload(**{**wl.model_dump(), "gen_len": default_gen(m)})
    eff, band_engine = efficiency_for(d, engine, efficiency)
    act = open_act(engine, wl.weights, d) if act_open else wl.act  # the engine's own (llama.cpp on a CPU: FP32)
    if act != wl.act:
        wl = wl.model_copy(update={"act": act})
    wl = checkpoint_formats(wl, m, engine)
    one = np.ones(1)
    err = layout_error(d, wl) or row_errors(m, one * wl.prompt_len, one * wl.gen_len)[0]
    if err:
        raise PerfmodelError(err)
    warn = row_warnings(m, one * wl.prompt_len, one * wl.gen_len)[0]
    if gpu_layers is not None or offload_experts:
        return estimate_offload(m, d, wl, eff, gpu_layers, offload_experts, host, engine)  # type: ignore[return-value]
    ev = evaluate(m, d, wl, eff, one * wl.batch, one * wl.prompt_len, one * wl.gen_len, detail=True)
    if ev.memory.fits is not None and not bool(ev.memory.fits[0]) and not ignore_capacity:
        mem = ev.memory.at(0)
        more = suggest_offload(m, d, wl, eff, float(mem.kv_cache_bytes), float(mem.activation_bytes), engine)
        raise CapacityError(capacity_message(m, d, wl, mem, wl.prompt_len, wl.gen_len, more))
    spec = speculative(m, d, wl, eff, draft, draft_tokens, acceptance)
    cached = None
    if prefix_hit is not None:
        cached = cached_prefix(m, d, wl, eff, prefix_hit)
    return Estimate(ev, band_engine, (warn,) if warn else (), spec, cached)


def _short(v: float) -> str:
    """A band end: whole numbers with separators from 100 up, three significant digits below."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _num(x: Any) -> float | None:
    v = float(np.asarray(x).reshape(-1)[0])
    return None if math.isnan(v) else v


@dataclass(frozen=True, slots=True)
class Metrics:
    """What an estimate answers, in SI units (docs/model.md, "Metrics"); None where a value does not exist (e.g. TPOT
    with one generated token)."""

    ttft_s: float | None
    tpot_s: float | None
    decode_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    throughput_tokens_per_s: float | None
    e2e_latency_s: float | None
    mfu: float | None
    mbu: float | None


def _metric(name: str) -> property:
    """A read-only attribute of an Estimate that is one field of its Metrics record."""
    return property(lambda self: getattr(self.metrics, name), doc=f"`metrics.{name}` (see Metrics)")


@dataclass(frozen=True)
class Estimate:
    """The result of one estimate: metrics as attributes, `ops` as a DataFrame, `summary()` as text, `intervals`
    (error bands), `provenance` (the device figures it rests on) and `warnings`."""

    ev: Evaluation
    engine: str = "default"
    notes: tuple[str, ...] = ()
    speculative: Any = None  # perfmodel.speculative.Speculative, when a drafter was named
    prefix: Any = None  # perfmodel.prefix.PrefixHit, when a prefix-cache hit rate was given

    @cached_property
    def metrics(self) -> "Metrics":
        """The metrics of this one scenario as a typed record (None where a value does not exist)."""
        m = self.ev.metrics
        return Metrics(**{f: _num(m[f]) for f in Metrics.__dataclass_fields__})

    ttft_s = _metric("ttft_s")
    tpot_s = _metric("tpot_s")
    decode_tokens_per_s = _metric("decode_tokens_per_s")
    prefill_tokens_per_s = _metric("prefill_tokens_per_s")
    throughput_tokens_per_s = _metric("throughput_tokens_per_s")
    e2e_latency_s = _metric("e2e_latency_s")
    mfu = _metric("mfu")
    mbu = _metric("mbu")

    @property
    def model(self) -> ModelSpec:
        return self.ev.model

    @property
    def device(self) -> Device:
        return self.ev.device

    @property
    def workload(self) -> Workload:
        return self.ev.workload

    @property
    def memory(self) -> dict[str, Any]:
        mem = self.ev.memory
        fits = mem.fits
        return dict(
            weights_bytes=_num(mem.weights_bytes),
            kv_cache_bytes=_num(mem.kv_cache_bytes),
            activation_bytes=_num(mem.activation_bytes),
            total_bytes=_num(mem.total_bytes),
            capacity_bytes=mem.capacity_bytes,
            fits=None if fits is None else bool(np.asarray(fits).reshape(-1)[0]),
        )

    def phase(self, name: str) -> dict[str, Any]:
        ph = self.ev.prefill if name == "prefill" else self.ev.decode
        time = ph.total("time_s")
        ev = self.ev
        return dict(
            time_s=_num(time),
            steps=int(ph.steps[0]),
            flops=_num(ph.total("flops")),
            bytes=_num(ph.total("resident_bytes") + ph.total("act_in_bytes") + ph.total("act_out_bytes")),
            mfu=_num(ev.utilisation(ph.total("flops"), time, "flops")),
            mbu=_num(ev.utilisation(ph.total("resident_bytes"), time, "bytes")),
            bound=str(ph.bound()[0]),
        )

    @cached_property
    def ops(self) -> "pd.DataFrame":
        """One row per op and phase: FLOPs, bytes by kind, time split, what bounds it. Totals over the phase."""
        import pandas as pd

        rows = []
        for phase, ph in (("prefill", self.ev.prefill), ("decode", self.ev.decode)):
            v = {k: np.asarray(x)[:, 0] for k, x in ph.values.items()}  # this estimate's one row
            for i, op in enumerate(ph.ops):
                r = {"phase": phase, "name": op.name, "kind": op.kind.value, "dtype": op.dtype.value,
                     "unit": ph.units[0][i], "precision": ph.precisions[0][i], "count": op.count}
                for k in ("flops", "weight_bytes", "act_in_bytes", "act_out_bytes", "kv_read_bytes", "kv_write_bytes",
                          "comm_bytes", "compute_s", "memory_s", "comm_s", "overhead_s", "time_s"):
                    r[k] = float(v[k][i])
                moved = r["weight_bytes"] + r["act_in_bytes"] + r["act_out_bytes"] + r["kv_read_bytes"] + r["kv_write_bytes"]
                r["bytes"] = moved
                r["intensity_flops_per_byte"] = r["flops"] / moved if moved else math.inf
                r["algorithm"], r["link"] = self._collective(op, phase, ph, r["comm_bytes"]) if op.comm else ("", "")
                comp = float(v["compute_bound_s"][i])
                body = r["time_s"] - r["overhead_s"] - r["comm_s"]
                if op.kind.value == "comm":
                    r["bound"] = "comm"
                elif r["overhead_s"] > body:
                    r["bound"] = "overhead"
                else:
                    r["bound"] = "compute" if comp >= body - comp else "memory"
                rows.append(r)
        return pd.DataFrame(rows)

    def _collective(self, op: Any, phase: str, ph: Any, comm_bytes: float) -> tuple[str, str]:
        """(algorithm and protocol, link) of one collective as the cost model costs it: the cheapest of the
        library's algorithms at this message size (perfmodel.collectives.choose), over its ranks and link."""
        from .collectives import choose
        from .graph import Comm

        mach = self.ev.machines[int(self.ev.mi[0])]
        calls = op.count * (float(np.asarray(ph.steps)[0]) if phase == "decode" else 1.0)
        msg = comm_bytes / calls if calls else 0.0
        ranks = mach.comm_ranks(op.comm)
        best, _ = choose(mach.comm_candidates(op.comm), msg)
        shape = {Comm.ALL_REDUCE: "all-reduce", Comm.ALL_GATHER: "all-gather", Comm.REDUCE_SCATTER: "reduce-scatter",
                 Comm.ALL_TO_ALL: "all-to-all", Comm.CP_RING: "ring-attention K/V pass",
                 Comm.CP_GATHER: "partial-attention gather"}.get(op.comm, "send")
        fab = mach.fabric
        size = f"{msg / 1e6:,.2f} MB" if msg >= 1e6 else f"{msg / 1e3:,.1f} kB"
        how = best.label if best is not None else "-"
        over = f" over {ranks}" if op.comm != Comm.P2P else ""
        if best is not None and best.link == "net":
            link = f"{fab.net_name or 'network'}, {fab.net_bytes_per_s / 1e9:,.0f} GB/s a node per direction"
        else:
            link = f"{fab.name}, {fab.intra_bytes_per_s / 1e9:,.0f} GB/s per direction"
        return f"{shape}{over}, {how} ({size} a call)", link

    def communication(self) -> "pd.DataFrame":
        """One row per collective and phase: what it is (algorithm, protocol, ranks, bytes a call), over which link,
        its bytes and time in the phase, and its share of the phase's time. Empty without parallelism."""
        ops = self.ops
        comm = ops[ops.algorithm != ""].copy()
        totals = ops.groupby("phase").time_s.sum()
        phase_time = np.array([float(totals.get(p, np.nan)) for p in comm.phase], dtype=float)
        comm["share_of_phase"] = comm.time_s.to_numpy(dtype=float) / np.where(phase_time > 0, phase_time, np.nan)
        return comm[["phase", "name", "algorithm", "link", "count", "comm_bytes", "comm_s", "time_s",
                     "share_of_phase"]].reset_index(drop=True)

    @cached_property
    def _used(self) -> dict[str, dict[str, Any]]:
        return used_figures(self.ev)

    @cached_property
    def provenance(self) -> dict[str, dict[str, Any]]:
        """Every device figure this estimate used: its rung (sourced, derived, estimated), value (SI), how it was
        obtained, and the share of each phase's time it bounds."""
        out = {}
        for key, phases in sorted(self._used.items()):
            fig = self.device.figure(key)
            if fig is None:
                continue
            out[key] = {"rung": fig.rung, "value": fig.value, "note": fig.note,
                        "bounds": {ph: round(_num(share) or 0.0, 4) for ph, share in phases.items()}}
        return out

    @property
    def warnings(self) -> list[str]:
        """What the user should know: estimated figures (with their rule and the phases they bound), a context
        beyond the model's, a host link that was not stated."""
        out = list(self.notes)
        for key, p in self.provenance.items():
            if p["rung"] != "estimated":
                continue
            where = ", ".join(f"{share * 100:.0f} % of {ph}" for ph, share in p["bounds"].items() if share >= 0.005)
            out.append(f"{key} is estimated ({p['note']}); it bounds {where or 'under 1 % of the time'}")
        return out

    @cached_property
    def intervals(self) -> dict[str, dict[str, Any]]:
        """Per metric: the empirical 80 % band from held-out validation residuals of this device class, engine and
        metric family, widened where estimated figures bound the time (perfmodel.bands)."""
        out = {}
        for metric, iv in intervals(self.ev, device_class(self.device), self.engine,
                                    self.ev.widening_log()).items():
            lo, hi = _num(iv.low), _num(iv.high)
            if lo is None or hi is None or _num(self.ev.metrics[metric]) is None:
                continue
            out[metric] = {"low": lo, "high": hi, "coverage": iv.coverage, "rows": iv.rows, "basis": iv.basis,
                           "widened": round(float(np.asarray(iv.widened).reshape(-1)[0]), 4)}
        return {k: out[k] for k in ("ttft_s", "tpot_s", "decode_tokens_per_s", "prefill_tokens_per_s",
                                    "throughput_tokens_per_s", "e2e_latency_s") if k in out}

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object. Keys named in the CLI contract are stable; new keys may be added."""
        wl, m = self.workload, self.model
        out = {
            "model": m.id,
            "hardware": self.device.id,
            "batch": wl.batch,
            "prompt_len": wl.prompt_len,
            "gen_len": wl.gen_len,
        }
        out.update(asdict(self.metrics))
        out["params"] = {"total": m.params_total(), "active": m.params_active()}
        out["memory"] = self.memory
        out["phases"] = {"prefill": self.phase("prefill"), "decode": self.phase("decode")}
        prec = wl.precision
        out["config"] = {"weights": wl.weights.value, "dense_weights": prec.dense_format.value,
                         "head_weights": prec.head_format.value, "kv": wl.kv.value, "act": wl.act.value,
                         "gemm": wl.gemm.value if wl.gemm else wl.act.value, "tp": wl.tp,
                         "pp": wl.pp, "ep": wl.ep, "cp": wl.cp, "dp_attention": wl.dp_attention,
                         "expert_imbalance": wl.expert_imbalance, "nodes": wl.nodes, "attention": wl.attention,
                         "dequant": wl.dequant, "backend": wl.backend,
                         "matrix_units": wl.matrix_units, "graphs": wl.graphs, "logits": wl.logits,
                         "ubatch": wl.ubatch, "devices": wl.parallel.devices,
                         "efficiency": self.ev.mach.eff.model_dump(), "engine": self.engine}
        out["intervals"] = self.intervals
        out["provenance"] = self.provenance
        comm = self.communication()  # one entry per collective and phase (empty without parallelism)
        out["communication"] = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                                for r in comm.to_dict(orient="records")]
        out["warnings"] = self.warnings
        if self.speculative is not None:
            out["speculative"] = self.speculative.to_dict()
        if self.prefix is not None:
            out["prefix_cache"] = self.prefix.to_dict()
        return out

    def summary(self) -> str:
        """A short readable table."""
        d = self.to_dict()
        gb = 1e9
        mem = d["memory"]

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1e3:,.2f} ms"

        def rate(x: float | None) -> str:
            return "-" if x is None else f"{x:,.1f} tok/s"

        def band(metric: str) -> str:
            iv = d["intervals"].get(metric)
            if not iv:
                return ""
            scale = 1e3 if metric in TIME_METRICS else 1.0
            return f"   ({iv['coverage'] * 100:.0f} % band {_short(iv['low'] * scale)}-{_short(iv['high'] * scale)})"

        pre, dec = d["phases"]["prefill"], d["phases"]["decode"]
        sp, pc = d.get("speculative"), d.get("prefix_cache")  # beside the plain figures, where asked
        cap = "unknown" if mem["capacity_bytes"] is None else f"{mem['capacity_bytes'] / gb:.1f} GB"
        fits = {True: "fits", False: "DOES NOT FIT", None: "capacity unknown"}[mem["fits"]]
        c = d["config"]
        lines = [
            f"{self.model.name or self.model.id} on {self.device.name}"
            + (f" in {self.device.system.name}" if self.device.system is not None else ""),
            f"  batch {d['batch']}, prompt {d['prompt_len']}, generate {d['gen_len']}; weights {c['weights']}, "
            f"kv {c['kv']}, act {c['act']}, tp {c['tp']}, pp {c['pp']}"
            + (f", ep {c['ep']}" if c["ep"] > 1 else "") + (f", cp {c['cp']}" if c["cp"] > 1 else "")
            + (", attention data-parallel" if c["dp_attention"] else "")
            + (f" on {c['devices']} devices" if c["devices"] > 1 else "") + f", {c['attention']} attention"
            + (f", {c['backend']} backend" if c.get("backend") else ""),
            "",
            f"  {'TTFT':<26}{ms(d['ttft_s']):>16}   ({pre['bound']}-bound){band('ttft_s')}",
            *([f"  {'with prefix-cache hits':<26}{ms(pc['ttft_s']):>16}   ({pc['cached_tokens']} of "
               f"{d['prompt_len']} prompt tokens cached, x{pc['speedup']:.2f})"] if pc else []),
            f"  {'TPOT (mean decode step)':<26}{ms(d['tpot_s']):>16}   ({dec['bound']}-bound){band('tpot_s')}",
            f"  {'decode tokens/s per seq':<26}{rate(d['decode_tokens_per_s']):>16}{band('decode_tokens_per_s')}",
            f"  {'prefill tokens/s':<26}{rate(d['prefill_tokens_per_s']):>16}{band('prefill_tokens_per_s')}",
            f"  {'throughput (batch, e2e)':<26}{rate(d['throughput_tokens_per_s']):>16}"
            f"{band('throughput_tokens_per_s')}",
            f"  {'end-to-end latency':<26}{ms(d['e2e_latency_s']):>16}{band('e2e_latency_s')}",
            *([f"  {'with speculative decoding':<26}{ms(sp['tpot_s']):>16}   ({sp['decode_tokens_per_s']:,.1f} tok/s, "
               f"x{sp['speedup']:.2f}: {sp['drafter']} drafts {sp['draft_tokens']}, acceptance {sp['acceptance']:g}"
               + (" assumed" if sp["acceptance_assumed"] else "")
               + f", {sp['expected_tokens_per_step']:.2f} tokens a step)"] if sp else []),
            f"  {'MFU / MBU':<26}{d['mfu'] * 100:>8.1f} % / {d['mbu'] * 100:.1f} %",
            "",
            f"  memory per device: weights {mem['weights_bytes'] / gb:.2f} GB + KV {mem['kv_cache_bytes'] / gb:.2f} GB"
            f" + activations {mem['activation_bytes'] / gb:.2f} GB = {mem['total_bytes'] / gb:.2f} GB of {cap} ({fits})",
            f"  params: {d['params']['total'] / 1e9:.2f} B total, {d['params']['active'] / 1e9:.2f} B active",
        ]
        lines.append(f"  figures: {self._figures_line(d['provenance'])}")
        if d["intervals"]:
            basis = {}
            for iv in d["intervals"].values():
                basis.setdefault(f"{iv['basis']} ({iv['rows']} rows)", None)
            lines.append(f"  bands: where 80 % of held-out published measurements of like cases fell against our "
                         f"prediction: {', '.join(basis)}; coverage checked source by source: perfmodel validate --bands")
        lines += [f"  warning: {w}" for w in d["warnings"]]
        return "\n".join(lines)

    @staticmethod
    def _figures_line(prov: dict[str, dict[str, Any]]) -> str:
        """One line: how many figures are sourced, and which are derived or estimated, with the phases they bound."""
        parts = {r: [] for r in ("sourced", "derived", "estimated")}
        for key, p in prov.items():
            where = "/".join(f"{ph} {share * 100:.0f}%" for ph, share in p["bounds"].items() if share >= 0.005)
            parts[p["rung"]].append(f"{key}" + (f" ({where})" if where else ""))
        out = [f"{len(parts['sourced'])} sourced"]
        for rung in ("derived", "estimated"):
            if parts[rung]:
                out.append(f"{rung}: {', '.join(parts[rung])}")
        return "; ".join(out)
