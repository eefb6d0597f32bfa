"""CTranslate2 backend: fp32 CT2 decodes exactly like transformers (greedy and beam, tied and untied
lm_head), the conversion fixes (output scaling, vocabulary) matter, the cache is atomic and reused, and
decoding options are mapped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_export

ct2 = pytest.importorskip("ctranslate2")

import ct2_backend  # noqa: E402
from generation import clean_title, load_presets, resolve_generation_config  # noqa: E402


def make_export(tokenizer, out_dir: Path, *, tied: bool, eos_scale: float, seed: int = 0, extra_rows: int = 0,
                max_new_tokens: int = 16):
    """A tiny export (see ``save_tiny_export``), tied or untied, optionally with model rows the tokenizer
    does not know."""
    from modeling import round_up

    overrides = {"tie_word_embeddings": tied}
    if extra_rows:
        overrides["vocab_size"] = round_up(len(tokenizer)) + extra_rows
    return save_tiny_export(tokenizer, out_dir, eos_scale=eos_scale, seed=seed, max_new_tokens=max_new_tokens,
                            **overrides)


def hf_ids(model, tokenizer, texts, generation_config, max_source_length=512) -> list[list[int]]:
    """One-by-one ``generate``: generated ids without the decoder start token, cut at EOS."""
    out = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_source_length, return_tensors="pt")
        ids = model.generate(**enc, generation_config=generation_config)[0].tolist()[1:]
        eos = model.config.eos_token_id
        out.append(ids[: ids.index(eos)] if eos in ids else ids)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts(lcsts_val) -> list[str]:
    return [r["maintext"] for r in lcsts_val[:12]] + ["短", "台北今天下雨"]


@pytest.fixture(scope="module")
def untied(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("untied")
    return out, make_export(tiny_tokenizer, out, tied=False, eos_scale=2.0)


@pytest.fixture(scope="module")
def tied(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("tied")
    return out, make_export(tiny_tokenizer, out, tied=True, eos_scale=8.0)


def ct2_generator(model_dir, tokenizer, **convert_kwargs):
    ct2_dir = ct2_backend.convert_export(model_dir, "float32", **convert_kwargs)
    return ct2_backend.CT2TitleGenerator(ct2_dir, tokenizer, compute_type="float32")


# In beam search HF applies logits processors (min length, n-gram blocking, repetition penalty) to
# log-probabilities without renormalising; CTranslate2 renormalises, as HF does with renormalize_logits=True.
CASES = [("untied", "greedy", {}), ("untied", "beam4", {}), ("untied", "beam4", {"length_penalty": 2.0}),
         ("untied", "greedy", {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}),
         ("untied", "beam4", {"min_new_tokens": 5, "max_new_tokens": 9, "no_repeat_ngram_size": 2,
                              "renormalize_logits": True}),
         ("tied", "greedy", {}), ("tied", "beam4", {}), ("tied", "beam4", {"length_penalty": 2.0})]


@pytest.mark.parametrize("which,preset,overrides", CASES, ids=[f"{w}-{p}{o or ''}" for w, p, o in CASES])
def test_ct2_float32_equals_hf(request, which, preset, overrides, tiny_tokenizer, texts):
    model_dir, model = request.getfixturevalue(which)
    from modeling import lm_head_is_tied

    assert lm_head_is_tied(model) == (which == "tied")
    config = resolve_generation_config(model.generation_config, preset, overrides)
    expected = hf_ids(model, tiny_tokenizer, texts, config)
    got = ct2_generator(model_dir, tiny_tokenizer).generate_ids(texts, config, batch_size=8)
    assert got == expected
    assert len({len(ids) for ids in expected}) > 1 or overrides.get("min_new_tokens"), "EOS never competes"


def test_stock_converter_breaks_beam_search_but_not_greedy(untied, tiny_tokenizer, texts, tmp_path):
    """Why the load_model override exists: the stock converter scales the logits by d_model**-0.5
    (transformers 5 reports tie_word_embeddings=True for every mT5), flattening the distribution."""
    from ctranslate2.converters import TransformersConverter

    model_dir, model = untied
    assert not ct2_backend.hf_scales_decoder_outputs(model)
    stock = tmp_path / "stock"
    TransformersConverter(str(model_dir)).convert(str(stock), quantization="float32")
    (stock / ct2_backend.CONVERSION_INFO).write_text("{}")
    generator = ct2_backend.CT2TitleGenerator(stock, tiny_tokenizer, compute_type="float32")
    greedy = resolve_generation_config(model.generation_config, "greedy")
    assert generator.generate_ids(texts, greedy) == hf_ids(model, tiny_tokenizer, texts, greedy)
    beam = resolve_generation_config(model.generation_config, "beam4", {"length_penalty": 2.0})
    assert generator.generate_ids(texts, beam) != hf_ids(model, tiny_tokenizer, texts, beam)


def test_output_scaling_is_measured(tiny_tokenizer, untied, tied):
    from transformers import T5Config, T5ForConditionalGeneration

    assert ct2_backend.hf_scales_decoder_outputs(untied[1]) is False
    assert ct2_backend.hf_scales_decoder_outputs(tied[1]) is False  # transformers 5 mT5 never scales
    small = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    assert ct2_backend.hf_scales_decoder_outputs(T5ForConditionalGeneration(T5Config(**small))) is True
    assert ct2_backend.hf_scales_decoder_outputs(
        T5ForConditionalGeneration(T5Config(**small, tie_word_embeddings=False))) is False


def test_vocabulary_is_unique_and_aligned(untied, tiny_tokenizer):
    model_dir, model = untied
    ct2_dir = ct2_backend.convert_export(model_dir, "float32")
    vocab = json.loads((ct2_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows > len(tiny_tokenizer)  # vocab rounded up to a multiple of 8
    assert len(vocab) == rows and len(set(vocab)) == rows
    assert vocab[: len(tiny_tokenizer)] == tiny_tokenizer.convert_ids_to_tokens(list(range(len(tiny_tokenizer))))
    info = json.loads((ct2_dir / ct2_backend.CONVERSION_INFO).read_text())
    assert info["scale_outputs"] is False and info["vocab_size"] == rows


def test_rows_beyond_the_tokenizer(tmp_path, tiny_tokenizer, texts):
    """Like mt5-small with a small tokenizer: the model has rows no token names. Force the model to
    emit them; CT2 must return the same ids as HF and the titles must decode the same (rows dropped)."""
    model = make_export(tiny_tokenizer, tmp_path, tied=False, eos_scale=2.0, extra_rows=64)
    with torch.no_grad():
        model.lm_head.weight[len(tiny_tokenizer):] *= 3.0
    model.save_pretrained(str(tmp_path))
    config = resolve_generation_config(model.generation_config, "beam4")
    expected = hf_ids(model, tiny_tokenizer, texts, config)
    assert any(i >= len(tiny_tokenizer) for ids in expected for i in ids), "no padding row was generated"
    generator = ct2_generator(tmp_path, tiny_tokenizer)
    assert generator.generate_ids(texts, config) == expected
    titles = generator.generate_titles(texts, config)
    assert titles == [clean_title(tiny_tokenizer.decode(ids, skip_special_tokens=True)) for ids in expected]
    assert not any("<" in t for t in titles)


def test_cache_is_reused_and_refreshed(untied, tmp_path):
    model_dir, _ = untied
    target = tmp_path / "cache" / "ct2"
    first = ct2_backend.convert_export(model_dir, "float32", output_dir=target)
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert ct2_backend.convert_export(model_dir, "float32", output_dir=target) == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    earlier = time.time() - 3600  # pretend the conversion predates the export's weights
    for path in target.iterdir():
        os.utime(path, (earlier, earlier))
    assert not ct2_backend.is_fresh(target, model_dir)
    ct2_backend.convert_export(model_dir, "float32", output_dir=target)
    assert (target / "model.bin").stat().st_mtime_ns != stamp
    assert ct2_backend.is_fresh(target, model_dir)
    assert not ct2_backend.is_fresh(target, model_dir, "int8")  # a cache of another quantization is not reused
    assert sorted(p.name for p in target.parent.iterdir()) == ["ct2"]  # no staging or stale directories left


def test_failed_conversion_leaves_nothing(untied, tmp_path, monkeypatch):
    model_dir, _ = untied
    base = ct2_backend._converter_class()

    class Broken(base):
        def load_model(self, *args, **kwargs):
            raise RuntimeError("disk full")

    monkeypatch.setattr(ct2_backend, "_converter_class", lambda: Broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ct2_backend.convert_export(model_dir, "float32", output_dir=tmp_path / "ct2")
    assert list(tmp_path.iterdir()) == []


def test_translate_options_mapping(untied):
    _, model = untied
    base = model.generation_config
    beam = ct2_backend.translate_options(resolve_generation_config(base, "beam5", {"length_penalty": 0.6}))
    assert beam["beam_size"] == 5 and beam["length_penalty"] == 0.6 and beam["sampling_topk"] == 1
    assert beam["max_decoding_length"] == 16 and beam["min_decoding_length"] == 0 and beam["max_input_length"] == 0
    sample = ct2_backend.translate_options(resolve_generation_config(base, "sample_t0.7"))
    assert (sample["beam_size"], sample["sampling_topk"], sample["sampling_temperature"]) == (1, 0, 0.7)
    assert ct2_backend.translate_options(resolve_generation_config(base, "top_k50"))["sampling_topk"] == 50
    assert ct2_backend.translate_options(resolve_generation_config(base, "top_p0.9"))["sampling_topp"] == 0.9
    # top_k unset while sampling: transformers' default (50) applies
    assert ct2_backend.translate_options(resolve_generation_config(base, "greedy", {"do_sample": True}))[
        "sampling_topk"] == 50
    from transformers import GenerationConfig

    limits = ct2_backend.translate_options(GenerationConfig(max_length=12, min_length=4))
    # max_length counts the decoder start token
    assert (limits["max_decoding_length"], limits["min_decoding_length"]) == (11, 3)


def test_sampling_is_seeded(untied, tiny_tokenizer, texts):
    model_dir, model = untied
    generator = ct2_generator(model_dir, tiny_tokenizer)
    config = resolve_generation_config(model.generation_config, "rl_sample")
    first = generator.generate_ids(texts, config, seed=1)
    assert generator.generate_ids(texts, config, seed=1) == first
    assert generator.generate_ids(texts, config, seed=2) != first


def test_every_shipped_preset_runs_on_ct2(untied, tiny_tokenizer, texts):
    model_dir, model = untied
    generator = ct2_generator(model_dir, tiny_tokenizer)
    for name in load_presets():
        config = resolve_generation_config(model.generation_config, name, {"max_new_tokens": 4})
        titles = generator.generate_titles(texts[:3], config, seed=0)
        assert len(titles) == 3 and all(isinstance(t, str) for t in titles), name


def test_empty_article_gives_empty_title(untied, tiny_tokenizer):
    """CTranslate2 skips a source with no content (only the end token) and returns an empty hypothesis
    (EncoderDecoderReplica::skip_translation); HF would decode something from the bare EOS."""
    model_dir, model = untied
    config = resolve_generation_config(model.generation_config, "greedy")
    assert ct2_generator(model_dir, tiny_tokenizer).generate_titles(["", "短"], config)[0] == ""


def test_predict_backends_agree(untied, tmp_path, lcsts_val):
    import predict

    model_dir, _ = untied
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": r["id"], "maintext": r["maintext"]}, ensure_ascii=False) + "\n"
                           for r in lcsts_val[20:32]), encoding="utf-8")
    outputs = {}
    for backend in ("hf", "ct2"):
        out = tmp_path / f"{backend}.jsonl"
        argv = ["--model_dir", str(model_dir), "--input_file", str(inp), "--output_file", str(out),
                "--preset", "beam4", "--backend", backend, "--ct2_compute_type", "float32",
                "--ct2_dir", str(tmp_path / "ct2"), "--per_device_batch_size", "5"]
        assert predict.main(argv) == 0
        outputs[backend] = out.read_text(encoding="utf-8")
    assert outputs["hf"] == outputs["ct2"]
    assert len(outputs["hf"].splitlines()) == 12
