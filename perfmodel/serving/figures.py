"""The serving figure: latency CDFs, throughput against latency over rates, batch and KV cache use over time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..plots import _figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from . import RateSearch, ServeResult


def serving_figure(res: "ServeResult", search: "RateSearch | None" = None,
                   curve: list[dict[str, Any]] | None = None) -> "Figure":
    """Four panels: CDFs of TTFT, TPOT and end-to-end latency; p90 TTFT and TPOT against throughput over the rates
    tried (find_rate's, or `curve`: rate_curve's); running sequences and KV use over time (needs record=True)."""
    fig = _figure(11, 7.5)
    ax = fig.subplots(2, 2)
    a = ax[0, 0]
    for x, name in ((res.ttft_s, "TTFT"), (res.tpot_s, "TPOT"), (res.e2e_latency_s, "end to end")):
        if len(x):
            xs = np.sort(x)
            a.plot(xs * 1e3, np.arange(1, len(xs) + 1) / len(xs), label=name)
    a.set_xscale("log")
    a.set_xlabel("latency (ms)")
    a.set_ylabel("share of requests")
    a.set_title("Latency CDFs")
    a.grid(True, which="both", alpha=0.3)
    a.legend()

    a = ax[0, 1]
    pts = (search.to_dict()["searched"] if search is not None else curve) or []
    pts = [p for p in pts if p.get("throughput_requests_per_s")]
    if pts:
        thr = [p["throughput_requests_per_s"] for p in pts]
        a.plot(thr, [p["ttft_s"] * 1e3 for p in pts], "o-", label="TTFT (p90)")
        a.plot(thr, [(p["tpot_s"] or np.nan) * 1e3 for p in pts], "^-", label="TPOT (p90)")
        if search is not None:
            for v, name in ((search.slo_ttft_s, "TTFT target"), (search.slo_tpot_s, "TPOT target")):
                if v:
                    a.axhline(v * 1e3, ls=":", color="gray")
                    a.annotate(name, (min(thr), v * 1e3), fontsize=8, color="gray")
        a.set_yscale("log")
        a.legend()
    else:
        a.text(0.5, 0.5, "one rate simulated\n(--find-rate draws the curve)", ha="center", va="center",
               transform=a.transAxes)
    a.set_xlabel("throughput (requests/s)")
    a.set_ylabel("latency (ms)")
    a.set_title("Latency against throughput")
    a.grid(True, which="both", alpha=0.3)

    tl = res.timeline or {}
    for a, key, label in ((ax[1, 0], "running", "running sequences"), (ax[1, 1], "kv_utilisation", "KV cache used")):
        if key in tl and len(tl[key]):
            a.step(tl["t_s"], tl[key], where="post")
        else:
            a.text(0.5, 0.5, "no timeline recorded", ha="center", va="center", transform=a.transAxes)
        a.set_xlabel("time (s)")
        a.set_ylabel(label)
        a.set_title(label[0].upper() + label[1:] + " over time (first engine)")
        a.grid(True, alpha=0.3)
    ax[1, 1].set_ylim(0, 1.05)
    return fig
