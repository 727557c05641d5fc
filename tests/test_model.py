import pytest
from pydantic import ValidationError

import perfmodel as pm
from perfmodel.catalog import model_files
from perfmodel.model import ModelSpec

from .conftest import HF


def test_gpt2_small_params_with_biases():
    m = pm.load_model("gpt2")
    # per layer: attn 4*768^2 + 4*768 = 2,362,368; mlp 2*768*3072 + 3072 + 768 = 4,722,432; 2 LayerNorms 3,072
    # -> 7,087,872 x 12 = 85,054,464; + wte 50257*768 = 38,597,376 + wpe 1024*768 = 786,432 + ln_f 1,536 (tied head)
    assert m.params_total() == 85_054_464 + 38_597_376 + 786_432 + 1_536 == 124_439_808


def test_llama2_7b_params():
    m = pm.load_model("llama-2-7b")
    # layer: 4*4096^2 + 3*4096*11008 + 2*4096 = 202,383,360; x32 = 6,476,267,520; + 2*32000*4096 (untied) + 4096
    assert m.params_total() == 6_476_267_520 + 262_144_000 + 4_096 == 6_738_415_616


def test_llama3_8b_params():
    # GQA: q,o 4096^2 each; k,v 4096*1024 each -> 41,943,040; mlp 3*4096*14336 = 176,160,768; norms 8,192
    # -> 218,112,000 per layer, x32 = 6,979,584,000; + embed and head 2*128256*4096 = 1,050,673,152; + final norm
    assert pm.load_model("llama-3-8b").params_total() == 6_979_584_000 + 1_050_673_152 + 4_096 == 8_030_261_248


def test_mixtral_total_and_active():
    m = pm.load_model("mixtral-8x7b")
    # 8 experts x 3*4096*14336 = 1,409,286,144 per layer; active keeps 2 of 8
    assert m.params_total() == 46_702_792_704  # "46.7B total"
    assert m.params_active() == 46_702_792_704 - 32 * 6 * 176_160_768 == 12_879_925_248  # "12.9B per token"


def test_deepseek_v3_total_and_active():
    m = pm.load_model("deepseek-v3")
    assert m.params_total() == pytest.approx(671e9, rel=0.001)  # tech report: 671B (MTP module excluded)
    # 37.55B with the input embedding table (0.93B); DeepSeek's own 36.6B excludes it (README_WEIGHTS)
    assert m.params_active() == pytest.approx(37e9, rel=0.02)
    assert m.params_active() - 129_280 * 7168 == pytest.approx(36.6e9, rel=0.002)


def test_mla_kv_cache_holds_the_latent():
    m = pm.load_model("deepseek-v3")
    # per token per layer: kv_lora_rank 512 + qk_rope_head_dim 64 = 576 elements, shared by all 128 heads
    assert m.kv_elements_per_token() == 61 * 576


def test_gqa_kv_elements():
    # Llama-3-8B: 2 (K and V) x 8 kv heads x 128 x 32 layers = 65,536 elements per token
    assert pm.load_model("llama-3-8b").kv_elements_per_token() == 65_536


@pytest.mark.parametrize("path", model_files(), ids=lambda p: p.stem)
def test_catalog_models_load_and_match_published_counts(path):
    m = pm.load_model(path)
    assert m.sources, f"{path.name} names no source"
    pub = m.published_params
    assert pub is not None and pub.source
    # within 0.5 %, or within the rounding (or truncation) of the published figure when it is given as e.g. "7.3B";
    # a size class such as Falcon's "40B" (no count published) is marked nominal and checked to 5 %
    if pub.discrepancy:  # a documented disagreement must still be one (else the note is stale)
        assert pub.matches(m, rel=0.005), f"{m.id}: the discrepancy note is stale"
    else:
        assert pub.matches(m, rel=0.005) == []


def test_few_known_discrepancies():
    notes = [pm.load_model(f).published_params.discrepancy for f in model_files()]
    assert sum(bool(n) for n in notes) <= 2


def test_few_models_rest_on_a_size_class_only():
    nominal = sorted(pm.load_model(f).id for f in model_files() if pm.load_model(f).published_params.nominal)
    assert len(nominal) <= 3, nominal


@pytest.mark.parametrize(
    "fixture,total",
    [
        ("pythia-6.9b", 6_857_302_016),  # Pythia paper, Table 1
        ("falcon-7b", 6_921_720_704),  # unique params; the checkpoint index counts the tied head twice
        ("opt-6.7b", 6_658_473_984),
        ("llama-7b", 6_738_415_616),
        ("t5-base", 222_903_552),  # shared embedding, tied head
        ("bert-base-uncased", 109_482_240),  # BertModel: embeddings + 12 layers + pooler
        ("gemma-2-9b", 9_241_705_984),
        ("qwen2.5-7b", 7_615_616_512),  # card: 7.61B
        ("qwen3-8b", 8_190_735_360),  # card: 8.2B
        ("mistral-7b", 7_241_732_096),
        ("llama-3.2-1b", 1_235_814_400),  # card: 1.23B
    ],
)
def test_hf_fixture_totals(fixture, total):
    assert pm.load_hf_config(HF / f"{fixture}.json").params_total() == total


@pytest.mark.parametrize(
    "fixture,total,active",
    [
        ("qwen3-30b-a3b", 30.5e9, 3.3e9),  # card
        ("qwen2-57b-a14b", 57e9, 14e9),  # card
        ("deepseek-v2-lite", 15.7e9, 2.4e9 + 102_400 * 2048),  # card: 15.7B / 2.4B (embedding table excluded)
        ("gpt-oss-20b", 21e9, 3.6e9 + 201_088 * 2880),  # card: 21B / 3.6B (embedding table excluded)
        ("gpt-oss-120b", 117e9, 5.1e9 + 201_088 * 2880),  # card: 117B / 5.1B
    ],
)
def test_hf_moe_totals_and_active(fixture, total, active):
    m = pm.load_hf_config(HF / f"{fixture}.json")
    assert m.params_total() == pytest.approx(total, rel=0.02)
    assert m.params_active() == pytest.approx(active, rel=0.03)


@pytest.mark.parametrize("text,value,half", [("7.3B", 7.3e9, 0.05e9), ("110M", 110e6, 0.5e6),
                                             ("6,738,415,616", 6_738_415_616, 0.5), ("30.53B", 30.53e9, 0.005e9)])
def test_parse_published_count(text, value, half):
    from perfmodel.model import parse_count

    assert parse_count(text) == (pytest.approx(value), pytest.approx(half))


def test_spec_rejects_heads_not_multiple_of_kv_heads():
    with pytest.raises(ValidationError, match="multiple of n_kv_heads"):
        ModelSpec(id="x", n_layers=2, d_model=64, n_heads=6, n_kv_heads=4, d_ff=128, vocab_size=10)


def test_spec_rejects_unknown_field():
    with pytest.raises(ValidationError, match="n_layer"):
        ModelSpec(id="x", n_layer=2, n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=10)


def test_spec_file_with_typo_names_the_key(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('id = "m"\nn_layers = 2\nd_model = 64\nn_heads = 4\nd_ff = 128\nvocab_size = 10\nn_kv_head = 2\n')
    with pytest.raises(pm.PerfmodelError, match="unknown key `n_kv_head`"):
        pm.load_model(f)


def test_spec_file_missing_key(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('id = "m"\nn_layers = 2\nd_model = 64\nn_heads = 4\nvocab_size = 10\n')
    with pytest.raises(pm.PerfmodelError, match="missing key `d_ff`"):
        pm.load_model(f)


def test_layer_kinds_follow_the_sliding_pattern():
    m = pm.load_hf_config(HF / "gemma-2-9b.json")  # alternating local/global, 42 layers
    assert m.layer_kinds() == {(True, False): 21, (False, False): 21}
    g = pm.load_hf_config(HF / "gpt-oss-20b.json")  # layer_types: sliding, full, ... over 24 MoE layers
    assert g.layer_kinds() == {(True, True): 12, (False, True): 12}
