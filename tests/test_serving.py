"""The serving simulator: iteration costs, scheduler invariants, queueing, SLO search, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import perfmodel as pm
from perfmodel.cli import main
from perfmodel.errors import CapacityError, PerfmodelError
from perfmodel.evaluate import evaluate
from perfmodel.serving import Requests, Scheduler, find_rate, read_trace, simulate, synthetic
from perfmodel.serving.requests import parse_dist
from perfmodel.iteration import step_cost

MODEL, HW = "llama-3-8b", "h100-sxm"


@pytest.fixture(scope="module")
def sc():
    m, d = pm.load_model(MODEL), pm.load_device(HW)
    return step_cost(m, d, pm.Workload(), None, 8192, 256, 8192)


# Iteration cost -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,ctx", [(1, 512), (8, 1024), (64, 2048), (200, 700)])
def test_decode_iteration_is_estimates_decode_step(sc, batch, ctx):
    # an iteration of `batch` decodes at context `ctx` is estimate's one decode step (prompt ctx - 1, gen 2: the
    # single step runs at context ctx)
    m, d = pm.load_model(MODEL), pm.load_device(HW)
    ev = evaluate(m, d, pm.Workload(), None, np.array([batch]), np.array([ctx - 1.0]), np.array([2.0]))
    assert sc.iteration_s(batch, batch * ctx, [], batch) == pytest.approx(ev.metrics["tpot_s"][0], rel=2e-3)


@pytest.mark.parametrize("batch,ctx", [(1, 5.5), (3, 700.25), (256, 8000.0), (17, 20000.0)])
def test_a_decode_run_is_its_iterations(sc, batch, ctx):
    # the simulator's decode blocks (decode_run_s, decode_step_s) cost each step as iteration_s does, contexts
    # growing a token a step, beyond the grid's end included (clamped)
    run = sc.decode_run_s(batch, batch * ctx, 5)
    one = [sc.iteration_s(batch, batch * (ctx + s), [], batch) for s in range(5)]
    assert run == pytest.approx(one, rel=1e-12)
    assert sc.decode_step_s(batch, batch * ctx) == pytest.approx(one[0], rel=1e-12)
    assert np.all(np.diff(run) >= 0)  # longer contexts never cost less


@pytest.mark.parametrize("prompt", [128, 1000, 4096])
def test_prefill_iteration_is_estimates_ttft(sc, prompt):
    m, d = pm.load_model(MODEL), pm.load_device(HW)
    ev = evaluate(m, d, pm.Workload(), None, np.ones(1), np.array([float(prompt)]), np.ones(1))
    assert sc.iteration_s(0, 0.0, [(prompt, 0)], 1) == pytest.approx(ev.metrics["ttft_s"][0], rel=5e-3)


def test_chunked_prompt_costs_more_than_one_pass(sc):
    # two chunks read the weights twice and attend the same pairs: slower than one pass, and by less than 2x
    whole = sc.iteration_s(0, 0.0, [(4096, 0)], 1)
    split = sc.iteration_s(0, 0.0, [(2048, 0)], 0) + sc.iteration_s(0, 0.0, [(2048, 2048)], 1)
    assert whole < split < 2 * whole


def test_later_chunk_attends_more_keys(sc):
    assert sc.chunk_s_at(512, 4096) > sc.chunk_s_at(512, 0)


# Requests -----------------------------------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_poisson():
    a, b = synthetic(20000, 50.0, 512, "uniform:10:20", seed=7), synthetic(20000, 50.0, 512, "uniform:10:20", seed=7)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.output_tokens, b.output_tokens)
    gaps = np.diff(a.arrival_s)
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.03)  # exponential gaps of mean 1 / rate
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # CV 1
    assert a.output_tokens.min() >= 10 and a.output_tokens.max() <= 20
    g = synthetic(20000, 50.0, 512, 16, arrival="gamma", cv=3.0, seed=1)
    gg = np.diff(g.arrival_s)
    assert gg.std() / gg.mean() == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("text,err", [("zipf:3", "fixed:N"), ("uniform:5:2", "LO <= HI"), ("fixed:0", "at least 1"),
                                      ("normal:x:1", "numbers"), ("uniform:1", "takes 2"), ("nan", "finite")])
def test_bad_distributions(text, err):
    with pytest.raises(PerfmodelError, match=err):
        parse_dist(text, "--prompt-dist")


def test_trace_round_trip_and_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens,prefix_tokens\n0.5,100,10,20\n0.1,50,5,0\n")
    r = read_trace(p)
    assert r.arrival_s.tolist() == [0.0, 0.4] and r.prompt_tokens.tolist() == [50, 100]  # sorted, from 0
    assert r.prefix_tokens.tolist() == [0, 20]
    p.write_text("arrival_s,prompt_tokens\n0,100\n")
    with pytest.raises(PerfmodelError, match="missing column"):
        read_trace(p)
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,-3\n")
    with pytest.raises(PerfmodelError, match="row 1: output_tokens"):
        read_trace(p)


# Scheduler invariants ---------------------------------------------------------------------------------------------

def _check_invariants(req: Requests, res, sch: Scheduler) -> None:
    assert np.isfinite(res.finish_s).all()  # no request lost
    assert (res.first_scheduled_s >= req.arrival_s - 1e-12).all()
    assert (res.first_token_s >= res.first_scheduled_s).all()
    assert (res.finish_s >= res.first_token_s).all()
    assert np.array_equal(res.produced, req.output_tokens)  # every token generated once
    assert (res.prefilled_tokens >= req.prompt_tokens - req.prefix_tokens).all()
    assert res.peak_kv_utilisation <= 1.0 + 1e-12  # KV never above capacity
    tl = res.timeline
    assert max(tl["tokens"]) <= (sch.max_batched_tokens if sch.policy == "vllm" else math.inf)
    assert max(tl["running"]) <= sch.max_num_seqs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), rate=st.sampled_from([1.0, 20.0, 200.0, math.inf]),
       policy=st.sampled_from(["vllm", "prefill-first", "static"]), seqs=st.sampled_from([1, 4, 64]),
       util=st.sampled_from([0.9, 0.25]), preemption=st.sampled_from(["recompute", "swap"]))
def test_scheduler_invariants(seed, rate, policy, seqs, util, preemption):
    # util 0.25: about 3.5 GB for the KV cache (27k tokens of 131 kB) after the 16 GB of weights: requests preempt
    req = synthetic(120, rate, "uniform:16:3000", "uniform:1:400", seed=seed, prefix_hit=0.1 if seed % 2 else 0.0)
    sch = Scheduler(policy=policy, max_num_seqs=seqs, max_batched_tokens=max(seqs, 512), memory_utilization=util,
                    preemption=preemption)
    res = simulate(MODEL, HW, requests=req, scheduler=sch, record=True)
    _check_invariants(req, res, sch)


def test_preemption_happens_when_kv_is_short_and_everyone_finishes():
    req = synthetic(300, math.inf, 2000, 1500, seed=1)
    for how in ("recompute", "swap"):
        sch = Scheduler(max_num_seqs=256, memory_utilization=0.25, preemption=how)
        res = simulate(MODEL, HW, requests=req, scheduler=sch, record=True)
        assert res.preemptions > 0
        _check_invariants(req, res, sch)
        if how == "recompute":  # a recomputed request prefills its prompt and the tokens it had made again
            assert res.prefilled_tokens.sum() > req.prompt_tokens.sum()


def test_chunked_prefill_respects_the_token_budget():
    # a 3000-token prompt under a 64-token budget is prefilled over ceil(3000 / 64) = 47 iterations: 46 x 64 + 56
    req = Requests(np.zeros(1), np.array([3000.0]), np.array([4.0]), np.zeros(1))
    sch = Scheduler(max_num_seqs=8, max_batched_tokens=64)
    res = simulate(MODEL, HW, requests=req, scheduler=sch, record=True)
    tokens = res.timeline["tokens"].tolist()
    assert tokens[:47] == [64] * 46 + [56] and max(tokens) <= 64
    one = simulate(MODEL, HW, requests=req, scheduler=Scheduler(max_num_seqs=8, max_batched_tokens=4096))
    # 64-token passes are bound by reading the 16 GB of weights (about 5 ms each on an H100): 47 of them take
    # longer than one compute-bound pass over the whole prompt
    assert res.first_token_s[0] > 2 * one.first_token_s[0]


def test_deterministic():
    req = synthetic(300, 15.0, "lognormal:400:0.8", "lognormal:100:0.8", seed=3)
    a, b = simulate(MODEL, HW, requests=req), simulate(MODEL, HW, requests=req)
    assert np.array_equal(a.finish_s, b.finish_s) and a.metrics() == b.metrics()


# A schedule found once, costed again --------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), policy=st.sampled_from(["vllm", "prefill-first", "static"]),
       seqs=st.sampled_from([1, 8, 64]), clients=st.sampled_from([None, 3, 40]), short=st.booleans())
def test_replayed_schedule_is_the_run(sc, seed, policy, seqs, clients, short):
    # every request sent at 0 (all at once, or held by clients): replay(schedule(...), sc) gives the run's times
    # (only the order of the float additions differs); `short`: a small KV cache, so requests are preempted
    from perfmodel.serving.sim import replay, run, schedule

    if policy == "static" and clients is not None:
        clients = None  # static batches take no closed loop
    rng = np.random.default_rng(seed)
    n = 60
    req = Requests(np.zeros(n), rng.integers(1, 1500, n).astype(float), rng.integers(1, 300, n).astype(float),
                   np.zeros(n))
    sch = Scheduler(policy=policy, max_num_seqs=seqs, max_batched_tokens=512)
    kv = 220 if short else 10**6  # 220 blocks of 16: 3520 tokens, two of the longest requests
    direct = run(req, sc, sch, kv, clients=clients)
    again = replay(schedule(req, sch, kv, clients=clients), sc)
    for name in ("first_scheduled_s", "first_token_s", "finish_s"):
        assert np.allclose(getattr(again, name), getattr(direct, name), rtol=1e-12, atol=0.0), name
    assert again.busy_s == pytest.approx(direct.busy_s, rel=1e-12)
    assert again.preemptions == direct.preemptions and np.array_equal(again.produced, direct.produced)


def test_a_schedule_needs_requests_sent_at_zero_and_recompute():
    from perfmodel.serving.sim import schedule

    req = synthetic(10, 5.0, 100, 10, seed=0)
    with pytest.raises(PerfmodelError, match="sent at time 0"):
        schedule(req, Scheduler(), 1000)
    with pytest.raises(PerfmodelError, match="recompute"):
        schedule(req.at_once(), Scheduler(preemption="swap"), 1000)


def test_benchmarks_are_simulate_on_the_same_tables():
    # serving.benchmarks (the validation rows' path) gives what simulate gives for the same requests and engine:
    # the tables are tabulated to the largest benchmark, so a smaller one matches to the interpolation (< 0.5 %)
    from perfmodel.serving import Bench, benchmarks, prepare

    benches = [Bench(1024, 256, Scheduler(max_num_seqs=128)), Bench(128, 512, Scheduler(max_num_seqs=32), clients=16,
                                                                   requests=64)]
    one = Requests(np.zeros(1), np.ones(1), np.ones(1), np.zeros(1))
    _, _, wl, _ = prepare(MODEL, HW, pm.Workload(weights="fp8", kv="fp8"), Scheduler(), one)  # formats resolved
    got = benchmarks(MODEL, HW, wl, None, benches)
    n0 = benches[0].count(10**9)
    assert n0 == 3 * 128  # three waves of the 128 sequences the engine runs at once (the cache holds more)
    for b, res in zip(benches, got):
        n = b.requests or n0
        req = Requests(np.zeros(n), np.full(n, float(b.prompt)), np.full(n, float(b.gen)), np.zeros(n))
        ref = simulate(MODEL, HW, wl, requests=req, scheduler=b.scheduler, concurrency=b.clients)
        assert res.span_s == pytest.approx(ref.span_s, rel=5e-3)
        assert res.ttft_s.mean() == pytest.approx(ref.ttft_s.mean(), rel=5e-3)
    # a KV cache that holds 10 whole requests of 1280 tokens (80 blocks each) runs 3 waves of 10
    assert Bench(1024, 256, Scheduler(max_num_seqs=128)).count(800) == 30


def test_kv_memory_rules():
    # 80 GB device, 40 GB weights, 2 GB activations, 100 kB of KV a token, blocks of 16 tokens (1.6 MB), share 0.9:
    # total (vLLM): 0.9 x 80 - 42 = 30 GB -> 30e9 / 1.6e6 = 18,750 blocks;
    # free (TensorRT-LLM): 0.9 x (80 - 42) = 34.2 GB -> 21,375 blocks
    from perfmodel.serving import _kv_blocks, kv_memory_rule

    wl = pm.Workload()
    assert _kv_blocks(80e9, Scheduler(), 40e9, 2e9, 1e5, wl) == 18750
    assert _kv_blocks(80e9, Scheduler(kv_memory="free"), 40e9, 2e9, 1e5, wl) == 21375
    assert kv_memory_rule("trtllm") == "free" and kv_memory_rule("vllm") == kv_memory_rule(None) == "total"
    with pytest.raises(PerfmodelError, match="kv-memory must be total"):
        Scheduler(kv_memory="half")
    # the engine's own rule when no scheduler is given: llama-3-70b in FP8 on one H100 (70.6 GB of weights past
    # 90 % of 80 GB under vLLM's rule) gets a cache under TensorRT-LLM's
    req = synthetic(4, 1.0, 512, 64)
    with pytest.raises(CapacityError, match="90% of device memory"):
        simulate("llama-3-70b", HW, pm.Workload(weights="fp8"), requests=req, engine="vllm")
    res = simulate("llama-3-70b", HW, pm.Workload(weights="fp8"), requests=req, engine="trtllm")
    assert (res.produced == 64).all()


def test_uniform_lengths_spread_evenly_around_the_means():
    from perfmodel.serving import Bench

    b = Bench(496, 509, Scheduler(), lengths="uniform")
    r = b.requests_of(80)
    # the 80 quantiles of U(1, 2 x 496): floor(1 + (i + 0.5) / 80 x 991), mean 496 (the floors lose under a token)
    assert abs(r.prompt_tokens.mean() - 496) < 1 and abs(r.output_tokens.mean() - 509) < 1
    assert r.prompt_tokens.min() >= 1 and r.prompt_tokens.max() <= 2 * 496 - 1 == b.longest_prompt
    assert b.longest == 991 + 1017
    assert len(set(r.prompt_tokens)) == 80  # every request its own length
    assert np.array_equal(r.prompt_tokens, b.requests_of(80).prompt_tokens)  # seeded
    assert np.array_equal(Bench(496, 509, Scheduler()).requests_of(3).prompt_tokens, [496.0] * 3)
    with pytest.raises(PerfmodelError, match="lengths must be"):
        Bench(1, 1, Scheduler(), lengths="normal")


# Queueing -----------------------------------------------------------------------------------------------------------

def test_one_at_a_time_is_m_d_1():
    # one sequence at a time, fixed lengths: a deterministic service time D, Poisson arrivals at load rho;
    # Pollaczek-Khinchine for M/D/1: mean wait in queue W = rho D / (2 (1 - rho))
    sch = Scheduler(max_num_seqs=1)
    D = float(simulate(MODEL, HW, requests=synthetic(1, 1.0, 256, 16), scheduler=sch).finish_s[0])
    rho = 0.5
    res = simulate(MODEL, HW, requests=synthetic(20000, rho / D, 256, 16, seed=3), scheduler=sch)
    W = rho * D / (2 * (1 - rho))
    assert res.queueing_s.mean() == pytest.approx(W, rel=0.05)


def test_throughput_follows_rate_until_saturation_then_latency_grows():
    base = synthetic(1500, 1.0, 512, 128, seed=2)
    sat = simulate(MODEL, HW, requests=base.at_once()).metrics()["throughput_requests_per_s"]
    low = simulate(MODEL, HW, requests=base.scaled(0.5 * sat)).metrics()
    assert low["throughput_requests_per_s"] == pytest.approx(0.5 * sat, rel=0.08)
    over = [simulate(MODEL, HW, requests=synthetic(n, 2 * sat, 512, 128, seed=2)) for n in (500, 1500)]
    m = [r.metrics() for r in over]
    assert m[1]["throughput_requests_per_s"] < 1.1 * sat  # capped at the engine's capacity
    assert m[1]["ttft_s"]["mean"] > 2 * m[0]["ttft_s"]["mean"]  # the queue keeps growing with the run


def test_static_batch_shares_its_prefill_and_pads():
    req = Requests(np.zeros(2), np.array([100.0, 100.0]), np.array([10.0, 200.0]), np.zeros(2))
    res = simulate(MODEL, HW, requests=req, scheduler=Scheduler(policy="static"))
    assert res.first_token_s[0] == res.first_token_s[1]
    assert res.finish_s[0] < res.finish_s[1]
    # a third request arriving just after waits for the whole padded batch
    req3 = Requests(np.array([0.0, 0.0, 1e-4]), np.array([100.0] * 3), np.array([10.0, 200.0, 10.0]), np.zeros(3))
    res3 = simulate(MODEL, HW, requests=req3, scheduler=Scheduler(policy="static"))
    assert res3.first_scheduled_s[2] == pytest.approx(res3.finish_s[1])


def test_disaggregated_sends_the_cache_then_decodes():
    req = synthetic(200, 20.0, 1024, 64, seed=4)
    res = simulate(MODEL, HW, requests=req, scheduler=Scheduler(policy="disaggregated"))
    assert res.devices == 2 and np.array_equal(res.produced, req.output_tokens)
    # the decode engine runs no prompts: its TPOT is a decode step's, not stretched by prefill chunks
    mixed = simulate(MODEL, HW, requests=req)
    assert np.median(res.tpot_s) <= np.median(mixed.tpot_s)
    assert any("KV cache sent" in n for n in res.notes)


def test_replicas_share_the_load():
    req = synthetic(600, 60.0, 512, 128, seed=5)
    one, two = simulate(MODEL, HW, requests=req), simulate(MODEL, HW, requests=req, replicas=2)
    assert two.devices == 2 and two.metrics()["ttft_s"]["p90"] <= one.metrics()["ttft_s"]["p90"]


# SLO search ---------------------------------------------------------------------------------------------------------

def test_find_rate_meets_the_slo_and_a_higher_rate_does_not():
    req = synthetic(600, 1.0, 512, 128, seed=6)
    found = find_rate(MODEL, HW, requests=req, slo_ttft_s=None, slo_tpot_s=0.012, percentile=90)
    assert found.rate > 0 and found.result.meets(None, 0.012, 90)
    assert np.percentile(found.result.tpot_s, 90) <= 0.012
    above = simulate(MODEL, HW, requests=req.scaled(found.rate * 1.1))
    assert not above.meets(None, 0.012, 90)


def test_find_rate_zero_when_a_lone_request_misses():
    req = synthetic(50, 1.0, 512, 128, seed=6)
    found = find_rate(MODEL, HW, requests=req, slo_ttft_s=1e-4, slo_tpot_s=None)
    assert found.rate == 0.0 and found.result is None


def test_does_not_fit():
    with pytest.raises(CapacityError, match="does not fit|needs"):
        simulate("llama-3-70b", HW, requests=synthetic(5, 1.0, 512, 128))


def test_encoder_only_refused():
    with pytest.raises(PerfmodelError, match="decoder-only"):
        simulate("bert-base-uncased", HW, requests=synthetic(5, 1.0, 128, 1))


# CLI ----------------------------------------------------------------------------------------------------------------

def test_cli_serve_json(capsys):
    rc = main(["serve", "--model", MODEL, "--hardware", HW, "--rate", "5", "--requests", "200", "--prompt-dist",
               "uniform:100:500", "--gen", "64", "--json", "--slo-ttft", "0.5", "--slo-tpot", "0.05"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("throughput_requests_per_s", "throughput_tokens_per_s", "kv_utilisation", "preemptions",
                "goodput_requests_per_s"):
        assert key in out
    for key in ("ttft_s", "tpot_s", "e2e_latency_s"):
        assert set(out[key]) == {"p50", "p90", "p99", "mean"}
        assert out[key]["p50"] <= out[key]["p90"] <= out[key]["p99"]


def test_cli_find_rate(capsys):
    rc = main(["serve", "--model", MODEL, "--hardware", HW, "--find-rate", "--slo-tpot", "0.02", "--requests",
               "300", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_rate_requests_per_s"] > 0 and out["tpot_s"]["p90"] <= 0.02


@pytest.mark.parametrize("args,msg", [
    (["--rate", "-1"], "--rate must be"), (["--rate", "nan"], "--rate must be"),
    (["--rate", "5", "--scheduler", "vlm"], "Did you mean"), (["--rate", "5", "--max-num-seqs", "2.5"], "whole"),
    (["--rate", "5", "--prompt-dist", "zipf:2"], "--prompt-dist"), ([], "needs --rate"),
    (["--trace", "/nonexistent/t.csv"], "t.csv"), (["--rate", "5", "--trace", "x.csv"], "leave out --rate"),
    (["--rate", "5", "--max-num-seqs", "512", "--max-batched-tokens", "256"], "at least max-num-seqs"),
    (["--rate", "5", "--percentile", "100"], "--percentile must be"), (["--rate", "5", "--duration", "3"], "not both"),
    (["--rate", "5", "--concurrency", "0"], "--concurrency"),
    (["--rate", "5", "--scheduler", "static", "--draft-model", "eagle"], "not with static batches"),
    (["--rate", "5", "--gpu-layers", "4", "--tp", "2"], "tp, pp and ep 1"),
    (["--rate", "5", "--host", "xeon-8480plus"], "--host"), (["--rate", "5", "--prefix-hit", "1.2"], "prefix hit"),
    (["--rate", "5", "--kv-memory", "half"], "kv-memory must be total")])
def test_cli_serve_bad_input(capsys, args, msg):
    rc = main(["serve", "--model", MODEL, "--hardware", HW, "--requests", "10", *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_cli_binary_trace(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_bytes(bytes(range(256)) * 4)
    assert main(["serve", "--model", MODEL, "--hardware", HW, "--trace", str(p)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_concurrency_keeps_at_most_c_requests_in_flight():
    req = synthetic(200, math.inf, "uniform:50:800", "uniform:10:200", seed=8)
    res = simulate(MODEL, HW, requests=req, concurrency=8)
    start, end = res.start_s, res.finish_s
    for t in start:  # requests in flight at each send: started by then and not yet finished
        assert np.sum((start <= t) & (end > t)) <= 8
    assert np.array_equal(res.produced, req.output_tokens)
    one = simulate(MODEL, HW, requests=synthetic(20, math.inf, 100, 20, seed=8), concurrency=1)
    order = np.argsort(one.start_s)  # one client: each request sent when the previous one finished
    assert np.allclose(one.start_s[order][1:], one.finish_s[order][:-1])
    assert (one.queueing_s < 1e-9).all()  # never queued at the engine


def test_shipped_trace_runs():
    res = simulate(MODEL, HW, requests=read_trace("synthetic-chat"))
    assert len(res.requests) == 1000 and np.isfinite(res.finish_s).all()
    assert res.requests.prefix_tokens.max() == 200  # the shared system prompt, cached


def test_report_gains_a_serving_section(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--model", MODEL, "--hardware", HW, "-o", str(out), "--serve-rate", "5",
                 "--serve-requests", "200"]) == 0
    text = out.read_text()
    assert "<h2>Serving under load</h2>" in text and "TTFT: p50" in text
    md = tmp_path / "r.md"
    assert main(["report", "--model", MODEL, "--hardware", HW, "-o", str(md), "--serve-rate", "5",
                 "--serve-requests", "200"]) == 0
    assert "## Serving under load" in md.read_text() and (tmp_path / "r.serving.png").stat().st_size > 1000


def test_serve_plot(tmp_path, capsys):
    fig = tmp_path / "s.png"
    assert main(["serve", "--model", MODEL, "--hardware", HW, "--rate", "5", "--requests", "200", "--plot",
                 str(fig)]) == 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["serve", "--model", MODEL, "--hardware", HW, "--rate", "5", "--requests", "20", "--plot",
                 str(tmp_path / "s.gif")]) == 2


def test_disaggregated_decode_engine_preempts_by_recompute():
    # a KV cache too small for every decode at once: the decode engine preempts, and a preempted request is
    # prefilled again there (its prompt and tokens so far), never resumed for free
    req = synthetic(150, math.inf, 2000, 1200, seed=9)
    sch = Scheduler(policy="disaggregated", memory_utilization=0.25)
    res = simulate(MODEL, HW, requests=req, scheduler=sch)
    assert res.preemptions > 0 and np.array_equal(res.produced, req.output_tokens)
    assert res.prefilled_tokens.sum() > req.prompt_tokens.sum()  # the recomputed prefills on the decode side


def test_speculative_decoding_in_the_simulator():
    # a lone request: the simulator's TPOT is estimate's speculative TPOT (E = (1 - 0.8^5) / 0.2 = 3.36 tokens an
    # iteration at the mean context, against iterations at each context here)
    est = pm.estimate("llama-3.1-8b", HW, prompt_len=512, gen_len=256, draft="eagle", acceptance=0.8)
    one = simulate("llama-3.1-8b", HW, requests=synthetic(1, 1.0, 512, 256), draft="eagle", acceptance=0.8)
    assert one.tpot_s[0] == pytest.approx(est.speculative.tpot_s, rel=0.03)
    # under load, with the KV cache short: every token still generated once, the cache never over-full
    req = synthetic(150, math.inf, "uniform:500:2500", "uniform:1:1500", seed=10)
    sch = Scheduler(memory_utilization=0.25)
    res = simulate(MODEL, HW, requests=req, scheduler=sch, draft="llama-3.2-1b", acceptance=0.6, record=True)
    _check_invariants(req, res, sch)
    plain = simulate(MODEL, HW, requests=req, scheduler=sch)
    assert np.median(res.tpot_s) < np.median(plain.tpot_s)
    # Medusa's heads: one pass of all k heads an iteration, as estimate costs them
    est = pm.estimate("llama-3.1-8b", HW, prompt_len=512, gen_len=256, draft="medusa", acceptance=0.8)
    one = simulate("llama-3.1-8b", HW, requests=synthetic(1, 1.0, 512, 256), draft="medusa", acceptance=0.8)
    assert one.tpot_s[0] == pytest.approx(est.speculative.tpot_s, rel=0.03)
    res = simulate(MODEL, HW, requests=req, scheduler=sch, draft="medusa", acceptance=0.6, record=True)
    _check_invariants(req, res, sch)


def test_partial_offload_in_the_simulator():
    # a lone request costs what estimate's partial offload does (each op on the side that runs it)
    wl = pm.Workload(weights="q4_k_m")
    sch = Scheduler(max_num_seqs=4, max_batched_tokens=512)
    est = pm.estimate("llama-3-70b", "rtx-4090", pm.Workload(weights="q4_k_m", prompt_len=256, gen_len=64),
                      engine="llamacpp", gpu_layers=40)
    one = simulate("llama-3-70b", "rtx-4090", wl, requests=synthetic(1, 1.0, 256, 64), scheduler=sch,
                   engine="llamacpp", gpu_layers=40)
    assert one.tpot_s[0] == pytest.approx(est.tpot_s, rel=0.03)
    assert one.ttft_s[0] == pytest.approx(est.ttft_s, rel=0.05)
    # every layer on the host: the KV cache lives in host memory, and decode is slower still
    cpu = simulate("llama-3-70b", "rtx-4090", wl, requests=synthetic(1, 1.0, 256, 64), scheduler=sch,
                   engine="llamacpp", gpu_layers=0)
    assert cpu.tpot_s[0] > one.tpot_s[0]
    with pytest.raises(CapacityError, match="fewer --gpu-layers"):
        simulate("llama-3-70b", "rtx-4090", wl, requests=synthetic(1, 1.0, 256, 64), engine="llamacpp",
                 gpu_layers=60)
