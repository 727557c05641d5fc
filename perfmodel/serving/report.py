"""Text of a serving run: what `perfmodel serve` prints and the lines of the report's serving section."""

from __future__ import annotations

from typing import Any


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:,.0f} ms" if x >= 1 else f"{x * 1e3:.1f} ms"


def lines(out: dict[str, Any]) -> list[str]:
    """The figures of a run (ServeResult.metrics(), with find_rate's keys where present) as lines of text."""
    rows = []
    if "max_rate_requests_per_s" in out:
        slo = out["slo"]
        want = ", ".join(f"{k.split('_')[0].upper()} <= {_ms(v)}" for k, v in slo.items() if k != "percentile" and v)
        rows.append(f"highest rate meeting p{slo['percentile']:g} {want}: {out['max_rate_requests_per_s']:.3g} "
                    f"requests/s")
        if "goodput_requests_per_s" in out:
            rows.append(f"goodput there: {out['goodput_requests_per_s']:.3g} requests/s ("
                        f"{out['slo_attainment']:.0%} of requests within both targets)")
    if "throughput_requests_per_s" not in out:
        return rows
    rows.append(f"throughput: {out['throughput_requests_per_s']:.3g} requests/s, "
                f"{out['throughput_tokens_per_s']:,.0f} output tokens/s "
                f"({out['throughput_tokens_per_s_per_device']:,.0f} per device, {out['devices']} device"
                f"{'s' if out['devices'] > 1 else ''})")
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_latency_s", "end to end"),
                      ("queueing_s", "queueing")):
        s = out[key]
        rows.append(f"{name:>10}: p50 {_ms(s['p50'])}, p90 {_ms(s['p90'])}, p99 {_ms(s['p99'])}, "
                    f"mean {_ms(s['mean'])}")
    kv = out["kv_utilisation"]
    rows.append(f"KV cache: {kv['mean']:.0%} used on average while busy, peak {kv['peak']:.0%}; "
                f"preemptions: {out['preemptions']}")
    if "goodput_requests_per_s" in out and "max_rate_requests_per_s" not in out:
        rows.append(f"within the SLOs: {out['slo_attainment']:.0%} of requests, goodput "
                    f"{out['goodput_requests_per_s']:.3g} requests/s")
    return rows


def summary(model: str, hardware: str, out: dict[str, Any], res: Any) -> str:
    head = (f"{model} on {hardware}: {out.get('requests', len(res.requests) if res else 0)} requests, scheduler "
            f"{res.scheduler.policy if res else '-'}")
    body = lines(out)
    if res is None:
        body.append("no rate meets the targets: a lone request already misses them")
    notes = [f"note: {n}" for n in (res.notes if res else ())]
    return "\n".join([head, *("  " + b for b in body), *notes])
