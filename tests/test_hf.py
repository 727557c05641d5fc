import json

import pytest

import perfmodel as pm
from perfmodel.hf import from_hf_dict

from .conftest import HF


def test_unknown_architecture_is_an_error_with_suggestion():
    with pytest.raises(pm.PerfmodelError, match=r"model_type 'lama' is not supported.*Did you mean 'llama'"):
        from_hf_dict({"model_type": "lama", "hidden_size": 8}, "x")


def test_missing_model_type():
    with pytest.raises(pm.PerfmodelError, match="`model_type` is missing"):
        from_hf_dict({"hidden_size": 8}, "x")


def test_missing_field_is_named():
    cfg = json.loads((HF / "llama-2-7b.json").read_text())
    del cfg["intermediate_size"]
    with pytest.raises(pm.PerfmodelError, match="lacks the field 'intermediate_size'"):
        from_hf_dict(cfg, "x")


def test_bad_json_file(tmp_path):
    f = tmp_path / "config.json"
    f.write_text("{not json")
    with pytest.raises(pm.PerfmodelError, match="not valid JSON"):
        pm.load_hf_config(f)


def test_folder_with_config_json(tmp_path):
    (tmp_path / "config.json").write_text((HF / "gpt2.json").read_text())
    assert pm.load_model(tmp_path).params_total() == 124_439_808


@pytest.mark.parametrize(
    "fixture,check",
    [
        ("qwen2.5-7b", lambda m: m.qkv_bias and not m.out_bias),  # Qwen2: bias on q/k/v only
        ("qwen3-8b", lambda m: m.qk_norm and not m.qkv_bias),
        ("falcon-7b", lambda m: m.kv_heads == 1 and m.norms_per_layer == 1),  # MQA, one LN (parallel block)
        ("mistral-7b", lambda m: m.sliding_window == 4096 and m.sliding_window_pattern == 1),
        ("gemma-2-9b", lambda m: m.dim_head == 256 and m.norms_per_layer == 4 and m.tie_embeddings),
        ("gpt2", lambda m: m.position == "learned" and m.learned_positions == 1024 and m.tie_embeddings),
        ("opt-6.7b", lambda m: m.learned_positions == 2050 and m.activation == "relu"),  # offset of 2 rows
        ("pythia-6.9b", lambda m: m.rope_fraction == 0.25 and not m.tie_embeddings),
        ("deepseek-v2-lite", lambda m: m.is_mla and m.q_lora_rank is None and m.n_shared_experts == 2),
        ("deepseek-v3", lambda m: m.n_dense_layers == 3 and m.experts_per_token == 8),
        ("gpt-oss-20b", lambda m: m.attention_sinks and m.sliding_window == 128 and m.router_bias),
        ("qwen2-57b-a14b", lambda m: m.shared_expert_gate and m.d_ff_shared == 20480),
        ("bert-base-uncased", lambda m: m.arch == "encoder" and m.pooler and not m.final_norm),
        ("t5-base", lambda m: m.arch == "encoder_decoder" and m.n_encoder_layers == 12 and m.head_dim == 64),
        ("phi-3-mini", lambda m: m.d_ff == 8192 and not m.tie_embeddings),
        ("llama-7b", lambda m: m.kv_heads == 32 and m.max_seq_len is None),
    ],
)
def test_family_facts(fixture, check):
    assert check(pm.load_hf_config(HF / f"{fixture}.json"))


def test_every_fixture_loads():
    for f in sorted(HF.glob("*.json")):
        m = pm.load_hf_config(f)
        assert m.params_total() > 0, f.name
