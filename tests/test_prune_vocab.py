"""Vocabulary pruning (prune_vocab.py) on a 24k-piece byte-fallback sentencepiece model trained on mixed
scripts (Chinese news and science, English, numbers, Cyrillic, Greek) and tiny random mT5 models, pruned to
real LCSTS texts: identical segmentation, identical logits at the kept ids, identical titles (HF greedy and
beam, CTranslate2, predict.py), export round trip, idempotence, character fallback and clear errors."""

from __future__ import annotations

import ast
import copy
import io
import json
import random
import sysconfig
from pathlib import Path

import pytest
import torch

import prune_vocab as pv
from conftest import build_tiny_model, read_records, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB_PIECES = 24_000  # sentencepiece pieces; + 100 sentinels = 24,100 tokens, 24,104 model rows
N_CORPUS = 160  # LCSTS validation pairs the models are pruned to


# ----------------------------------------------------------------------------------------------- fixtures

def english_docstrings(limit_chars: int = 250_000) -> list[str]:
    """English text that every Python installation has: the standard library's docstrings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for name in ("argparse", "textwrap", "subprocess", "pathlib", "typing", "functools", "collections/__init__",
                 "logging/__init__", "json/__init__", "email/message", "unittest/case", "datetime", "tarfile"):
        path = stdlib / f"{name}.py"
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                texts += [line.strip() for line in (doc or "").splitlines() if len(line.strip()) > 20]
        if sum(map(len, texts)) > limit_chars:
            break
    return texts


def synthetic_words(alphabet: str, lines: int, rng: random.Random) -> list[str]:
    return [" ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8))) for _ in range(12))
            for _ in range(lines)]


@pytest.fixture(scope="session")
def mixed_tokenizer_dir(tmp_path_factory, lcsts_train) -> Path:
    """An mT5-like tokenizer directory: a 24,000-piece unigram model with byte fallback (as mT5), pad 0,
    eos 1, unk 2, plus 100 ``<extra_id_N>`` sentinels (modeling.train_sentencepiece_tokenizer's layout).
    Training is sped up (small seed set, fast shrinking): about 3 s."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(0)
    csl = read_records("csl_abstract_title.jsonl")
    texts = [r["maintext"] for r in csl[:1200]] + [r["title"] for r in csl]
    texts += [r["maintext"] for r in lcsts_train[:2000]] + [r["title"] for r in lcsts_train[:2000]]
    texts += english_docstrings(120_000)
    texts += synthetic_words("абвгдеёжзийклмнопрстуфхцчшщъыьэюя", 300, rng)
    texts += synthetic_words("αβγδεζηθικλμνξοπρστυφχψω", 300, rng)
    texts += [" ".join(str(rng.randint(0, 10 ** rng.randint(1, 6))) for _ in range(10)) for _ in range(300)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=VOCAB_PIECES, model_type="unigram",
        character_coverage=0.9995, byte_fallback=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        max_sentence_length=16384, input_sentence_size=0, seed_sentencepiece_size=200_000, num_sub_iterations=1,
        shrinking_factor=0.5, num_threads=2, minloglevel=2)
    out = tmp_path_factory.mktemp("mixed_tokenizer")
    (out / "spiece.model").write_bytes(model.getvalue())
    T5Tokenizer.from_pretrained(str(out), extra_ids=100).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tokenizer(mixed_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mixed_tokenizer_dir))
    assert len(tok) == VOCAB_PIECES + 100 and tok.convert_tokens_to_ids("<extra_id_0>") == VOCAB_PIECES + 99
    return tok


@pytest.fixture(scope="session")
def proto(mixed_tokenizer_dir):
    return pv.parse_sentencepiece_model(mixed_tokenizer_dir / "spiece.model")


@pytest.fixture(scope="session")
def corpus_records(lcsts_val) -> list[dict]:
    return lcsts_val[:N_CORPUS]


@pytest.fixture(scope="session")
def corpus_texts(corpus_records) -> list[str]:
    return [r["maintext"] for r in corpus_records] + [r["title"] for r in corpus_records]


def make_full_model(tokenizer, tied: bool):
    """A random tiny mT5 for the 24k tokenizer whose titles end at varied lengths (EOS row scaled up) and
    never emit <pad> (zero row, as save_tiny_export does)."""
    model = build_tiny_model(tokenizer, seed=1 if tied else 0, tie_word_embeddings=tied)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] *= 3.0 if tied else 2.5
        if not tied:  # zeroing a tied row would zero the <pad> embedding too
            model.lm_head.weight[model.config.pad_token_id] = 0
    model.generation_config.max_new_tokens = 16
    return model.eval()


@pytest.fixture(scope="session")
def full_models(tokenizer):
    return {"untied": make_full_model(tokenizer, tied=False), "tied": make_full_model(tokenizer, tied=True)}


@pytest.fixture(scope="session")
def pruned_models(full_models, tokenizer, corpus_texts, proto):
    """``{kind: (pruned model, pruned tokenizer, info)}``, pruned in memory from copies of the full models."""
    return {kind: pv.prune_model_and_tokenizer(copy.deepcopy(model), tokenizer, corpus_texts, sp_model=proto)
            for kind, model in full_models.items()}


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_records) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", corpus_records)


def save_source_export(model, tokenizer, spiece: Path | None, out: Path) -> Path:
    """A training-style export: model, tokenizer, generation_config.json, title_config.json and a notes
    file, plus a stale CTranslate2 conversion directory (which pruning must not copy)."""
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if spiece is not None:
        (out / "spiece.model").write_bytes(spiece.read_bytes())
    (out / "title_config.json").write_text(json.dumps({"max_source_length": 256, "eval_preset": "greedy",
                                                       "per_device_eval_batch_size": 4}) + "\n", encoding="utf-8")
    (out / "notes.txt").write_text("trained on LCSTS\n", encoding="utf-8")
    (out / "ct2-int8").mkdir()
    (out / "ct2-int8" / "model.bin").write_bytes(b"stale")
    return out


@pytest.fixture(scope="session")
def source_export(tmp_path_factory, full_models, tokenizer, mixed_tokenizer_dir) -> Path:
    return save_source_export(full_models["untied"], tokenizer, mixed_tokenizer_dir / "spiece.model",
                              tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="session")
def pruned_export(tmp_path_factory, source_export, corpus_file) -> Path:
    """The command's export of the untied model pruned to the corpus file."""
    out = tmp_path_factory.mktemp("pruned") / "export"
    assert pv.main(["--model_name_or_path", str(source_export), "--corpus", str(corpus_file),
                    "--output_dir", str(out), "--log_level", "warning"]) == 0
    return out


def encode_batch(tokenizer, texts, max_length=96):
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def to_old(ids: torch.Tensor, new_to_old) -> torch.Tensor:
    return torch.tensor(new_to_old)[ids]


# ----------------------------------------------------------------------------------------------- pure parts

def test_char_class_separates_scripts_digits_and_punctuation():
    assert [pv.char_class(c) for c in "中〇aÉＡяλ"] == ["Han", "Han", "Latin", "Latin", "Latin", "Cyrillic", "Greek"]
    assert pv.char_class("7") == "N@U+00xx" and pv.char_class(",") == "P@U+00xx"
    assert pv.char_class("。") == pv.char_class("「") == "P@U+30xx"  # CJK punctuation, not ASCII punctuation
    assert pv.char_class("😀") == "S@U+1F6xx" and pv.char_class("ก") != pv.char_class("a")


def make_proto(pieces):
    """A hand-made sentencepiece model: ``(piece, score, type)`` triples."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in pieces:
        proto.pieces.add(piece=piece, score=score, type=kind)
    proto.trainer_spec.unk_id, proto.trainer_spec.pad_id, proto.trainer_spec.eos_id = 2, 0, 1
    proto.trainer_spec.bos_id = -1
    return proto


def test_select_pieces_by_hand():
    N, C, U, B = pv.NORMAL, pv.CONTROL, pv.UNKNOWN, pv.BYTE
    proto = make_proto([("<pad>", 0, C), ("</s>", 0, C), ("<unk>", 0, U), ("<0x41>", 0, B), ("▁", -2, N),
                        ("▁新闻", -3, N), ("新", -4, N), ("闻", -5, N), ("Д", -6, N), ("ab", -7, N), ("a", -8, N),
                        ("。", -9, N), ("7", -10, N), ("д", -20, N)])
    counts = {5: 10, 9: 3, 6: 1}  # ▁新闻 x10, ab x3, 新 x1
    kept, reasons = pv.select_pieces(proto, counts, {"Han"})
    # specials; corpus 5, 9, 6; Han single chars 6, 7 and "▁"; the lowest score ("д", for the unk penalty)
    assert kept == [0, 1, 2, 4, 5, 6, 7, 9, 13]
    assert reasons == {"special": 3, "corpus": 3, "char_fallback": 2, "byte_fallback": 0, "min_score": 1}
    proto.trainer_spec.byte_fallback = True
    assert 3 in pv.select_pieces(proto, counts, {"Han"})[0]  # every byte piece with byte fallback
    kept, _ = pv.select_pieces(proto, counts, {"Han", "Latin", "N@U+00xx"}, keep_top=1)
    assert kept == [0, 1, 2, 3, 4, 5, 6, 7, 10, 12, 13]  # only the most frequent corpus piece; a, 7 fall back
    kept, _ = pv.select_pieces(proto, counts, set(), min_count=3)
    assert kept == [0, 1, 2, 3, 4, 5, 9, 13]
    kept, _ = pv.select_pieces(proto, counts, {"Han"}, required_ids=[8])
    assert 8 in kept  # an id the model config names


def test_remap_config_ids():
    from types import SimpleNamespace

    config = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=None, decoder_start_token_id=0)
    generation = SimpleNamespace(pad_token_id=0, eos_token_id=[1, 7], bos_token_id=None, decoder_start_token_id=0,
                                 forced_bos_token_id=None, forced_eos_token_id=None, suppress_tokens=[5, 9],
                                 begin_suppress_tokens=None, bad_words_ids=[[5, 7], [9]], sequence_bias=None,
                                 force_words_ids=None)
    model = SimpleNamespace(config=config, generation_config=generation)
    pv.remap_config_ids(model, {0: 0, 1: 1, 2: 2, 7: 3, 9: 4})
    assert generation.eos_token_id == [1, 3] and generation.suppress_tokens == [4]
    assert generation.bad_words_ids == [[4]] and config.decoder_start_token_id == 0
    generation.sequence_bias = {(3,): 1.0}
    with pytest.raises(pv.PruneError, match="sequence_bias"):
        pv.remap_config_ids(model, {0: 0, 1: 1, 3: 2, 4: 3})
    assert generation.eos_token_id == [1, 3]  # refused before anything changed
    generation.sequence_bias = None
    with pytest.raises(pv.PruneError, match="eos_token_id = 7 is not among the kept tokens"):
        pv.remap_config_ids(SimpleNamespace(config=SimpleNamespace(eos_token_id=7), generation_config=None), {1: 1})


def test_read_corpus_jsonl_and_plain_text(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "maintext": "新闻正文", "title": "标题"},
                                               {"id": 2, "maintext": "第二篇"}, {"id": 3, "maintext": " "}])
    text = tmp_path / "b.txt"
    text.write_text("\ufeff第一行\n\n  \nsecond line\n", encoding="utf-8")
    texts, files = pv.read_corpus([jsonl, text])
    assert texts == ["新闻正文", "标题", "第二篇", "第一行", "second line"]
    assert files == [{"path": str(jsonl), "bytes": jsonl.stat().st_size, "texts": 3},
                     {"path": str(text), "bytes": text.stat().st_size, "texts": 2}]
    assert pv.read_corpus([jsonl], ["maintext"])[0] == ["新闻正文", "第二篇"]
    from data_io import DataError

    with pytest.raises(DataError, match=r"a.jsonl:2: missing field 'title'"):  # the first column is required
        pv.read_corpus([jsonl], ["title", "maintext"])
    args = pv.parse_args(["--model_name_or_path", "m", "--corpus", "a", "b", "--corpus", "c", "--dry_run"])
    assert args.corpus == ["a", "b", "c"] and args.dry_run and args.text_columns == ["maintext", "title"]


def test_projected_parameters():
    assert pv.projected_parameters(1000, 100, 40, 5, tied=False) == 1000 - 60 * 5 * 2
    assert pv.projected_parameters(1000, 100, 40, 5, tied=True) == 1000 - 60 * 5


# ----------------------------------------------------------------------------------------------- segmentation

def test_corpus_segmentation_is_identical(pruned_models, tokenizer, corpus_texts, proto):
    import sentencepiece as spm

    _, pruned, info = pruned_models["untied"]
    assert info.kept_vocab == len(pruned) < len(tokenizer) / 2 and info.texts_resegmented == 0
    unk = bytes_seen = 0
    for text in corpus_texts:
        old, new = tokenizer(text)["input_ids"], pruned(text)["input_ids"]
        assert [info.new_to_old[i] for i in new] == old
        assert pruned.convert_ids_to_tokens(new) == tokenizer.convert_ids_to_tokens(old)
        unk += old.count(tokenizer.unk_token_id)
    old_sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    new_sp = spm.SentencePieceProcessor(model_proto=info.sentencepiece_model)
    for text in corpus_texts:
        pieces = old_sp.encode(text, out_type=str)
        assert new_sp.encode(text, out_type=str) == pieces
        assert [info.new_to_old[i] for i in new_sp.encode(text)] == old_sp.encode(text)  # sp ids = HF ids
        bytes_seen += sum(p.startswith("<0x") for p in pieces)
    assert unk > 0 and bytes_seen > 0, "the corpus should exercise <unk> (HF) and byte fallback (sentencepiece)"


def test_kept_set(pruned_models, tokenizer, proto, corpus_texts):
    _, pruned, info = pruned_models["untied"]
    kept = set(pruned.get_vocab())
    assert pruned.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert {f"<0x{b:02X}>" for b in range(256)} <= kept  # byte fallback stays complete
    assert "▁" in kept and not any(t.startswith("<extra_id_") for t in kept)
    singles = [p.piece for p in proto.pieces if p.type == pv.NORMAL and len(p.piece) == 1]
    han = {c for c in singles if pv.char_class(c) == "Han"}
    assert han <= kept and len(han) > 1000
    assert not [t for t in kept if any(pv.char_class(c) in ("Cyrillic", "Greek") for c in t)]
    seen = {i for text in corpus_texts for i in tokenizer(text)["input_ids"]}
    assert seen <= set(info.new_to_old)  # every piece the corpus uses
    assert info.kept_pieces + info.kept_sentinels == len(pruned) and info.original_vocab == len(tokenizer)
    assert info.token_coverage == pytest.approx(1 - info.unk_token_share) and 0 < info.unk_token_share < 0.01
    assert 0.99 < info.char_fallback_share < 1 and 0.99 < info.char_coverage < 1


# ----------------------------------------------------------------------------------------------- model

@pytest.mark.parametrize("kind", ["untied", "tied"])
def test_logits_equal_at_kept_ids(kind, full_models, pruned_models, corpus_records):
    full = full_models[kind]
    model, pruned, info = pruned_models[kind]
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == info.kept_rows == len(pruned)
    assert pv.lm_head_is_tied(model) == (kind == "tied") == pv.lm_head_is_tied(full)
    if kind == "untied":
        assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert model.encoder.embed_tokens.weight is model.shared.weight is model.decoder.embed_tokens.weight
    enc = encode_batch(pruned, [r["maintext"] for r in corpus_records[:6]])
    labels = encode_batch(pruned, [r["title"] for r in corpus_records[:6]], max_length=24)["input_ids"]
    decoder_ids = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)  # decoder start = pad = 0
    with torch.no_grad():
        got = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    decoder_input_ids=decoder_ids).logits
        want = full(input_ids=to_old(enc["input_ids"], info.new_to_old), attention_mask=enc["attention_mask"],
                    decoder_input_ids=to_old(decoder_ids, info.new_to_old)).logits
    torch.testing.assert_close(got, want[..., info.new_to_old], rtol=1e-5, atol=1e-5)


def generate_ids(model, tokenizer, texts, config, new_to_old=None) -> list[list[int]]:
    """One-by-one ``generate``; ids mapped to the original vocabulary when ``new_to_old`` is given."""
    out = []
    for text in texts:
        ids = model.generate(**tokenizer([text], return_tensors="pt"), generation_config=config)[0].tolist()
        out.append([new_to_old[i] for i in ids] if new_to_old else ids)
    return out


@pytest.mark.parametrize("kind,preset", [("untied", "greedy"), ("untied", "beam4"), ("tied", "beam4")])
def test_titles_equal_the_full_model_restricted_to_kept_ids(kind, preset, full_models, pruned_models, tokenizer,
                                                             corpus_records):
    """The full model with every pruned-away id suppressed (and log-probs renormalised over the rest, as
    the pruned model's softmax is) writes the same titles, greedy and beam search."""
    from generation import resolve_generation_config

    full = full_models[kind]
    model, pruned, info = pruned_models[kind]
    texts = [r["maintext"] for r in corpus_records[:8]]
    overrides = {"renormalize_logits": True, "length_penalty": 1.5 if preset == "beam4" else None}
    kept = set(info.new_to_old)
    dropped = [i for i in range(full.config.vocab_size) if i not in kept]
    masked = resolve_generation_config(full.generation_config, preset, {**overrides, "suppress_tokens": dropped})
    want = generate_ids(full, tokenizer, texts, masked)
    got = generate_ids(model, pruned, texts, resolve_generation_config(model.generation_config, preset, overrides),
                       info.new_to_old)
    assert got == want
    assert len({len(ids) for ids in want}) > 1, "EOS never competes: the titles do not test much"
    if kind == "untied":  # (the tied model mostly copies source tokens, which are all kept)
        plain = generate_ids(full, tokenizer, texts, resolve_generation_config(full.generation_config, preset,
                                                                               overrides))
        assert any(i not in kept for ids in plain for i in ids), "the mask should matter for the full model"


def test_padding_rows_copy_pad(full_models, tokenizer, corpus_texts, corpus_records, proto):
    from generation import resolve_generation_config

    full = full_models["untied"]
    model, pruned, info = pv.prune_model_and_tokenizer(copy.deepcopy(full), tokenizer, corpus_texts,
                                                       pad_to_multiple_of=64, sp_model=proto)
    rows = model.config.vocab_size
    assert rows % 64 == 0 and len(pruned) < rows < len(pruned) + 64 == info.kept_vocab + 64
    for weight in (model.shared.weight, model.lm_head.weight):
        assert torch.equal(weight[len(pruned):], weight[0].expand(rows - len(pruned), -1))
    texts = [r["maintext"] for r in corpus_records[:6]]
    kept = set(info.new_to_old)
    greedy = {"suppress_tokens": [i for i in range(full.config.vocab_size) if i not in kept]}
    want = generate_ids(full, tokenizer, texts, resolve_generation_config(full.generation_config, "greedy", greedy))
    got = generate_ids(model, pruned, texts, resolve_generation_config(model.generation_config, "greedy"),
                       info.new_to_old + [0] * (rows - len(pruned)))
    assert got == want


def test_sentinels_keep_their_rows(full_models, tokenizer, corpus_texts, proto):
    full = full_models["untied"]
    model, pruned, info = pv.prune_model_and_tokenizer(copy.deepcopy(full), tokenizer, corpus_texts,
                                                       keep_sentinels=3, sp_model=proto)
    assert len(pruned) == info.kept_pieces + 3 and pruned.convert_ids_to_tokens(len(pruned) - 1) == "<extra_id_0>"
    for k in range(3):
        new, old = pruned.convert_tokens_to_ids(f"<extra_id_{k}>"), tokenizer.convert_tokens_to_ids(f"<extra_id_{k}>")
        assert info.new_to_old[new] == old and torch.equal(model.lm_head.weight[new], full.lm_head.weight[old])
    assert pruned("新闻<extra_id_1>")["input_ids"][-2] == pruned.convert_tokens_to_ids("<extra_id_1>")


# ----------------------------------------------------------------------------------------------- exports

def test_export_files_and_round_trip(pruned_export, source_export, pruned_models, corpus_file, corpus_records):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    names = {p.name for p in pruned_export.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "spiece.model", "title_config.json", "notes.txt", "prune_info.json"} <= names
    assert "ct2-int8" not in names  # a conversion of the old vocabulary must not travel with the new one
    for name in ("title_config.json", "notes.txt"):
        assert (pruned_export / name).read_bytes() == (source_export / name).read_bytes()
    memory_model, memory_tokenizer, memory_info = pruned_models["untied"]
    record = json.loads((pruned_export / "prune_info.json").read_text(encoding="utf-8"))
    assert record["kept_pieces"] == memory_info.kept_pieces and record["original_vocab"] == VOCAB_PIECES + 100
    assert record["corpus_files"] == [{"path": str(corpus_file), "bytes": corpus_file.stat().st_size,
                                       "texts": 2 * len(corpus_records)}]
    assert record["token_coverage"] == pytest.approx(memory_info.token_coverage) and not record["lm_head_tied"]

    model = AutoModelForSeq2SeqLM.from_pretrained(str(pruned_export)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(pruned_export))
    assert tokenizer.get_vocab() == memory_tokenizer.get_vocab()
    assert not pv.lm_head_is_tied(model) and torch.equal(model.lm_head.weight, memory_model.lm_head.weight)
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()
    gen = GenerationConfig.from_pretrained(str(pruned_export))
    for config in (model.config, gen):
        assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    texts = [r["maintext"] for r in corpus_records[:4]]
    enc = encode_batch(tokenizer, texts)
    assert torch.equal(enc["input_ids"], encode_batch(memory_tokenizer, texts)["input_ids"])
    decoder_ids = enc["input_ids"][:, :5]
    with torch.no_grad():
        torch.testing.assert_close(model(**enc, decoder_input_ids=decoder_ids).logits,
                                   memory_model(**enc, decoder_input_ids=decoder_ids).logits, rtol=0, atol=0)


def test_tied_stays_tied_through_save_and_load(pruned_models, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model, pruned, _ = pruned_models["tied"]
    model.save_pretrained(str(tmp_path))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path))
    assert pv.lm_head_is_tied(loaded) and torch.equal(loaded.shared.weight, model.shared.weight)
    assert loaded.config.vocab_size == len(pruned)


def test_pruning_twice_is_a_no_op(pruned_export, corpus_file, tmp_path):
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert pv.main(["--model_name_or_path", str(pruned_export), "--corpus", str(corpus_file),
                    "--output_dir", str(again), "--log_level", "warning"]) == 0
    first, second = (pv.parse_sentencepiece_model(d / "spiece.model") for d in (pruned_export, again))
    assert first.SerializeToString() == second.SerializeToString()
    assert json.loads((again / "tokenizer.json").read_text())["model"] == \
        json.loads((pruned_export / "tokenizer.json").read_text())["model"]
    a, b = load_file(str(pruned_export / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((again / "prune_info.json").read_text())
    assert info["kept_pieces"] == info["original_pieces"] and info["kept_rows"] == info["original_rows"]


def test_pruning_twice_in_memory_is_a_no_op(pruned_models, corpus_texts):
    """The training loop's path: the pruned tokenizer with the returned sentencepiece model."""
    model, tokenizer, info = pruned_models["untied"]
    again, tokenizer2, info2 = pv.prune_model_and_tokenizer(copy.deepcopy(model), tokenizer, corpus_texts,
                                                            sp_model=info.sentencepiece_model)
    assert info2.new_to_old == list(range(len(tokenizer))) and tokenizer2.get_vocab() == tokenizer.get_vocab()
    assert info2.sentencepiece_model == info.sentencepiece_model
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_export_without_spiece_model(full_models, tokenizer, corpus_file, pruned_export, proto, tmp_path):
    """transformers 5's save_pretrained writes no spiece.model (training exports have only tokenizer.json):
    the sentencepiece model is rebuilt from tokenizer.json (pieces, scores, types, normalizer, byte
    fallback), and the pruned export is the same as with the original spiece.model."""
    from transformers import AutoTokenizer

    source = save_source_export(full_models["untied"], tokenizer, None, tmp_path / "source")
    assert not (source / "spiece.model").exists()
    rebuilt = pv.sentencepiece_model_from_tokenizer(AutoTokenizer.from_pretrained(str(source)))
    assert rebuilt.trainer_spec.byte_fallback and rebuilt.normalizer_spec.precompiled_charsmap == \
        proto.normalizer_spec.precompiled_charsmap
    assert [(p.piece, p.score, p.type) for p in rebuilt.pieces] == [(p.piece, p.score, p.type) for p in proto.pieces]
    out = tmp_path / "pruned"
    assert pv.main(["--model_name_or_path", str(source), "--corpus", str(corpus_file), "--output_dir", str(out),
                    "--log_level", "warning"]) == 0
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == AutoTokenizer.from_pretrained(
        str(pruned_export)).get_vocab()
    assert (out / "model.safetensors").read_bytes() == (pruned_export / "model.safetensors").read_bytes()


def hf_ids(model, tokenizer, texts, config) -> list[list[int]]:
    """Generated ids without the decoder start token, cut at EOS (what CT2TitleGenerator returns)."""
    out = []
    for ids in generate_ids(model, tokenizer, texts, config):
        ids = ids[1:]
        out.append(ids[: ids.index(model.config.eos_token_id)] if model.config.eos_token_id in ids else ids)
    return out


def test_ctranslate2_float32_equals_hf_on_the_pruned_export(pruned_export, corpus_records, tmp_path):
    pytest.importorskip("ctranslate2")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import ct2_backend
    from generation import resolve_generation_config

    model = AutoModelForSeq2SeqLM.from_pretrained(str(pruned_export)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(pruned_export))
    ct2_dir = ct2_backend.convert_export(pruned_export, "float32", output_dir=tmp_path / "ct2")
    generator = ct2_backend.CT2TitleGenerator(ct2_dir, tokenizer, compute_type="float32")
    texts = [r["maintext"] for r in corpus_records[:8]]
    for preset, overrides in (("greedy", {}), ("beam4", {"length_penalty": 1.5})):
        config = resolve_generation_config(model.generation_config, preset, overrides)
        want = hf_ids(model, tokenizer, texts, config)
        assert generator.generate_ids(texts, config, batch_size=4) == want
        assert len({len(ids) for ids in want}) > 1


def test_predict_runs_on_the_pruned_export_with_both_backends(pruned_export, corpus_records, tmp_path):
    import predict

    records = [{"id": r["id"], "maintext": r["maintext"]} for r in corpus_records[:6]]
    records.append({"id": "empty", "maintext": ""})
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    titles = {}
    for backend in ("hf", "ct2"):
        out = tmp_path / f"{backend}.jsonl"
        assert predict.main(["--model_dir", str(pruned_export), "--input_file", str(inp), "--output_file", str(out),
                             "--preset", "beam4", "--backend", backend, "--ct2_compute_type", "float32",
                             "--ct2_dir", str(tmp_path / "ct2"), "--log_level", "warning"]) == 0
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["id"] for r in rows] == [r["id"] for r in records]
        titles[backend] = [r["title"] for r in rows]
    assert all(titles["hf"][:6]) and titles["hf"][:6] == titles["ct2"][:6]


# ----------------------------------------------------------------------------------------------- fallback

def test_unseen_text_falls_back_to_single_characters(pruned_models, tokenizer, proto, corpus_texts):
    _, pruned, _ = pruned_models["untied"]
    normalizer = tokenizer.backend_tokenizer.normalizer
    corpus_chars = set("".join(normalizer.normalize_str(t) for t in corpus_texts))
    singles = [p.piece for p in proto.pieces if p.type == pv.NORMAL and len(p.piece) == 1]
    unseen_han = [c for c in singles if pv.char_class(c) == "Han" and c not in corpus_chars][:12]
    assert len(unseen_han) == 12
    unseen_words = [w for w in ("zygote", "quokka", "fjord") if w not in " ".join(corpus_texts)]
    text = "".join(unseen_han) + "，" + " ".join(unseen_words) + " 2049"
    old = tokenizer(text)["input_ids"]
    new = pruned(text)["input_ids"]
    assert tokenizer.unk_token_id not in old and pruned.unk_token_id not in new
    assert pruned.decode(new, skip_special_tokens=True) == tokenizer.decode(old, skip_special_tokens=True)
    pieces = pruned.convert_ids_to_tokens(new)
    assert all(c in pieces or "▁" + c in pieces for c in unseen_han)  # each unseen character is its own piece
    # a script the corpus never uses is not kept, although the original vocabulary had it
    cyrillic = next(c for c in singles if pv.char_class(c) == "Cyrillic")
    assert tokenizer.unk_token_id not in tokenizer(cyrillic)["input_ids"]
    assert pruned(cyrillic)["input_ids"].count(pruned.unk_token_id) == 1


def test_keep_top_and_min_count_restrict_corpus_pieces_only(pruned_models, tokenizer, corpus_texts, proto):
    plan = pv.plan_pruning(tokenizer, corpus_texts, keep_top=300, sp_model=proto)
    pruned, info = plan.tokenizer, plan.info
    full_info = pruned_models["untied"][2]
    assert info.kept_by_reason["corpus"] == 300 < full_info.kept_by_reason["corpus"]
    assert info.kept_by_reason["byte_fallback"] + info.kept_by_reason["char_fallback"] > \
        full_info.kept_by_reason["char_fallback"]  # pieces no longer kept as corpus pieces still fall back
    assert info.texts_resegmented > 0 and info.texts_with_new_unk == 0
    for text in corpus_texts[:50]:
        assert pruned.decode(pruned(text)["input_ids"], skip_special_tokens=True) == \
            tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
    plan = pv.plan_pruning(tokenizer, corpus_texts, min_count=5, sp_model=proto)
    counts = pv.corpus_statistics(tokenizer, proto, corpus_texts).piece_counts
    frequent = {i for i, c in counts.items() if c >= 5 and proto.pieces[i].type == pv.NORMAL}
    assert frequent <= set(plan.new_to_old)
    assert plan.info.kept_by_reason["corpus"] == len(frequent) < full_info.kept_by_reason["corpus"]
    lowest = min(p.score for p in proto.pieces if p.type == pv.NORMAL)
    for i in set(plan.new_to_old) - frequent:  # everything else is a special, a fallback or the lowest score
        piece = proto.pieces[i]
        assert piece.type != pv.NORMAL or len(piece.piece) == 1 or piece.score == lowest, piece.piece


# ----------------------------------------------------------------------------------------------- errors

def test_library_errors(full_models, tokenizer, proto):
    from transformers import BartConfig, BartForConditionalGeneration

    with pytest.raises(pv.PruneError, match="empty corpus"):
        pv.plan_pruning(tokenizer, ["", "  \n"], sp_model=proto)
    with pytest.raises(pv.PruneError, match="does not cover this corpus.*Thai"):
        pv.plan_pruning(tokenizer, ["ภาษาไทยเป็นภาษาที่มีระดับเสียงของคำแน่นอน", "สวัสดีครับ ขอบคุณมาก"], sp_model=proto)
    with pytest.raises(pv.PruneError, match="does not cover"):  # Hangul: another script the vocabulary lacks
        pv.plan_pruning(tokenizer, ["한국어는 대한민국의 공용어이다 新"], sp_model=proto)
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=16, decoder_ffn_dim=16))
    with pytest.raises(pv.PruneError, match="model type 'bart' is not supported"):
        pv.prune_model_and_tokenizer(bart, tokenizer, ["新闻"])
    with pytest.raises(pv.PruneError, match="no piece but special tokens"):
        pv.plan_pruning(tokenizer, ["</s> <pad>", "</s>"], sp_model=proto)
    with pytest.raises(pv.PruneError, match="only 100 sentinels"):
        pv.plan_pruning(tokenizer, ["新闻"], keep_sentinels=101, sp_model=proto)
    model = full_models["untied"]
    rows = model.shared.weight.shape[0]
    with pytest.raises(pv.PruneError, match="empty corpus"):
        pv.prune_model_and_tokenizer(model, tokenizer, [], sp_model=proto)
    assert model.shared.weight.shape[0] == rows  # a failed pruning leaves the model as it was


@pytest.fixture(scope="session")
def other_exports(tmp_path_factory) -> dict[str, Path]:
    from transformers import BartConfig, GPT2Config

    base = tmp_path_factory.mktemp("others")
    BartConfig(vocab_size=64, d_model=16).save_pretrained(str(base / "bart"))
    GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2).save_pretrained(str(base / "gpt2"))
    (base / "empty").mkdir()
    return {"bart": base / "bart", "gpt2": base / "gpt2", "empty": base / "empty"}


def error_cases(source, corpus, tmp, others):
    bad_json = tmp / "bad.jsonl"
    bad_json.write_text('{"id": 1, "maintext": "新闻", "title": "题"}\n\n{"id": 2, "maintext": 5}\n', encoding="utf-8")
    blank = write_jsonl(tmp / "blank.jsonl", [{"id": 1, "maintext": " ", "title": ""}])
    thai = tmp / "thai.txt"
    thai.write_text("ภาษาไทยเป็นภาษาที่มีระดับเสียง\nสวัสดีครับ\n", encoding="utf-8")
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    return {
        "empty corpus": ([source, blank, tmp / "o1"], f"{blank}: empty corpus file"),
        "script the vocabulary lacks": ([source, thai, tmp / "o2"], "does not cover this corpus"),
        "bart export": ([others["bart"], corpus, tmp / "o3"], "model type 'bart' is not supported"),
        "gpt2 export": ([others["gpt2"], corpus, tmp / "o4"], "model type 'gpt2' is not supported"),
        "no config.json": ([others["empty"], corpus, tmp / "o5"], "config.json: not found"),
        "missing model dir": ([tmp / "nope", corpus, tmp / "o6"], "model directory not found"),
        "missing corpus": ([source, tmp / "missing.jsonl", tmp / "o7"], "missing.jsonl: file not found"),
        "malformed line": ([source, bad_json, tmp / "o8"], f"{bad_json}:3: field 'maintext' must be a string"),
        "missing column": ([source, corpus, tmp / "o9", "--text_columns", "maintext", "titel"], "'titel'"),
        "output not empty": ([source, corpus, full], "exists and is not empty"),
        "output is the source": ([source, corpus, source], "is the source model directory"),
    }


CASES = ["empty corpus", "script the vocabulary lacks", "bart export", "gpt2 export", "no config.json",
         "missing model dir", "missing corpus", "malformed line", "missing column", "output not empty",
         "output is the source"]


@pytest.mark.parametrize("case", CASES)
def test_command_errors_exit_2_and_write_nothing(case, source_export, corpus_file, other_exports, tmp_path, capsys):
    (model_dir, corpus, out, *extra), message = error_cases(source_export, corpus_file, tmp_path, other_exports)[case]
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert pv.main(["--model_name_or_path", str(model_dir), "--corpus", str(corpus), "--output_dir", str(out),
                    *extra, "--log_level", "error"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_dry_run_writes_nothing_and_reports(source_export, corpus_file, pruned_export, tmp_path, capsys):
    out = tmp_path / "dry"
    assert pv.main(["--model_name_or_path", str(source_export), "--corpus", str(corpus_file), "--output_dir",
                    str(out), "--dry_run", "--pad_to_multiple_of", "8", "--log_level", "warning"]) == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
    stdout = capsys.readouterr().out
    record = json.loads((pruned_export / "prune_info.json").read_text(encoding="utf-8"))
    rows = (record["kept_vocab"] + 7) // 8 * 8
    assert f"kept pieces: {record['kept_pieces']:,} of {VOCAB_PIECES:,}" in stdout
    assert f"embedding rows {VOCAB_PIECES + 104:,} -> {rows:,}" in stdout
    assert f"{record['token_coverage']:.2%} of corpus tokens are kept pieces" in stdout
    assert f"{record['distinct_pieces_seen']:,} distinct pieces seen" in stdout
    projected = pv.projected_parameters(record["parameters_before"], VOCAB_PIECES + 104, rows, 64, tied=False)
    assert f"parameters: {record['parameters_before']:,} -> {projected:,}" in stdout
    assert "dry run: nothing written" in stdout


def test_training_with_prune_vocabulary(source_export, corpus_records, tmp_path, caplog):
    """--prune_vocabulary prunes the pretrained model to the training and validation texts before the first
    step, trains and exports the pruned model, and a resumed run reuses the pruned copy."""
    import logging

    import train_decoder
    from conftest import reset_accelerate_state

    train = write_jsonl(tmp_path / "train.jsonl", corpus_records[:24])
    val = write_jsonl(tmp_path / "val.jsonl", corpus_records[24:32])
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(source_export), "--prune_vocabulary", "true", "--train_file", str(train),
            "--validation_file", str(val), "--output_dir", str(out), "--segmenter", "char", "--max_train_steps", "4",
            "--per_device_train_batch_size", "4", "--optimizer", "adamw", "--learning_rate", "1e-3",
            "--max_source_length", "64", "--max_target_length", "16", "--eval_max_new_tokens", "4",
            "--eval_every_epoch", "false", "--save_steps", "2", "--logging_steps", "1"]
    with caplog.at_level(logging.INFO):
        assert train_decoder.main(argv, stop_after_steps=2) == 0
    info = json.loads((out / "pruned_model" / "prune_info.json").read_text(encoding="utf-8"))
    assert info["kept_rows"] < info["original_rows"] and info["num_texts"] == 2 * 32
    assert f"--prune_vocabulary: kept {info['kept_pieces']:,} of {info['original_pieces']:,} pieces" in caplog.text
    pruned_at = (out / "pruned_model" / "model.safetensors").stat().st_mtime_ns
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    assert (out / "pruned_model" / "model.safetensors").stat().st_mtime_ns == pruned_at  # reused, not redone
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    best = AutoModelForSeq2SeqLM.from_pretrained(out / "best")
    assert best.config.vocab_size == best.lm_head.weight.shape[0] == info["kept_rows"]
    assert not pv.lm_head_is_tied(best)  # mT5's untied head stays untied (its config always says tied)
    assert len(AutoTokenizer.from_pretrained(out / "best")) == info["kept_vocab"]
