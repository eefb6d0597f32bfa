"""Fast title generation with CTranslate2 (https://github.com/OpenNMT/CTranslate2): convert a
``save_pretrained`` export once, cache it beside the export, decode with ``Translator.translate_batch``.

Two details make the converted model decode exactly like transformers (fp32 CT2 == HF on greedy and beam):

* **Output scaling.** CTranslate2's T5 loader multiplies the decoder output by ``d_model**-0.5`` whenever
  ``config.tie_word_embeddings`` is true (the T5 v1.0 convention). transformers 5's ``MT5Config`` always
  reports ``True`` while ``MT5ForConditionalGeneration`` never scales, so a plain conversion gives wrong
  logits (greedy survives because argmax is scale-invariant; beam search and scores do not). We override
  ``TransformersConverter.load_model`` and set the flag to what the loaded model's forward really does,
  measured with one tiny forward pass (:func:`hf_scales_decoder_outputs`), which is correct for T5, for mT5,
  and for tied or untied ``lm_head`` weights on any transformers version.
* **Vocabulary.** The T5 loader lists ``tokenizer.get_vocab()`` by id, then pads up to the model's
  ``vocab_size`` with ``<extra_id_N>`` for N = 0, 1, ...; for mT5 (250,100 tokens, 250,112 rows) and for any
  small-vocabulary model whose tokenizer already holds ``<extra_id_0..99>`` this **duplicates** existing
  tokens, so a token string no longer names one id, and a row id beyond the tokenizer comes back as a
  string that looks like a real sentinel. We hand the converter a vocabulary with exactly one unique string
  per row (the tokenizer's pieces, then ``<ct2_unused_ID>`` for rows the tokenizer does not know) and map
  CTranslate2's output strings back to ids with the converted model's own vocabulary file, then decode ids
  with the tokenizer exactly as the HF path does (rows beyond the tokenizer decode to nothing there too).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from export import PROMPT_ADAPTER_DIR, TOKENIZER_FILES, WEIGHT_FILES
from generation import clean_title, length_sorted_batches

logger = logging.getLogger(__name__)

UNUSED_TOKEN = "<ct2_unused_{}>"  # name of a model row the tokenizer has no piece for
# files of the export (export.py's contract) that change the converted model: weights, architecture, vocabulary
SOURCE_FILES = WEIGHT_FILES + ("config.json",) + TOKENIZER_FILES
CONVERSION_INFO = "title_ct2.json"
T5_FAMILY = ("t5", "mt5")  # CTranslate2's T5Loader; the fixes below are specific to it

# GenerationConfig fields CTranslate2 cannot reproduce, with their neutral values
_UNSUPPORTED_NEUTRAL = {
    "num_beam_groups": 1, "diversity_penalty": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "min_p": None, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "force_words_ids": None, "constraints": None, "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0, "exponential_decay_length_penalty": None, "sequence_bias": None,
    "penalty_alpha": None, "guidance_scale": None,
}


# ----------------------------------------------------------------------------------------------- conversion

def default_compute_type(device: str) -> str:
    """The quantization used when none is asked for: ``int8`` on CPU; on CUDA the first supported of
    ``int8_bfloat16``, ``int8_float16``, ``bfloat16``, ``float32`` (bf16 first: mT5 activations are known to
    overflow in float16)."""
    import ctranslate2

    if device.startswith("cuda"):
        supported = ctranslate2.get_supported_compute_types("cuda")
        for compute_type in ("int8_bfloat16", "int8_float16", "bfloat16", "float32"):
            if compute_type in supported:
                return compute_type
        return "float32"
    return "int8"


@torch.no_grad()
def hf_scales_decoder_outputs(model) -> bool:
    """Whether ``model``'s forward multiplies the decoder output by ``d_model**-0.5`` before ``lm_head``.

    Measured, not read from the config: one forward pass on a 1-token source and 2-token target compares
    the logits with ``lm_head(decoder last hidden state)``.

    Raises:
        RuntimeError: the logits match neither form (an architecture this module does not know).
    """
    was_training = model.training
    model.eval()
    try:
        config = model.config
        input_ids = torch.tensor([[config.eos_token_id]], device=model.device)
        decoder_input_ids = torch.tensor([[config.decoder_start_token_id, config.eos_token_id]], device=model.device)
        out = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids)
        hidden = model.get_decoder()(input_ids=decoder_input_ids,
                                     encoder_hidden_states=out.encoder_last_hidden_state).last_hidden_state
        plain = model.lm_head(hidden).float()
        logits = out.logits.float()
        scale = config.d_model ** -0.5
        tol = dict(rtol=1e-3, atol=1e-4 * float(plain.abs().max()) + 1e-6)
        if torch.allclose(logits, plain, **tol):
            return False
        if torch.allclose(logits, plain * scale, **tol):
            return True
        raise RuntimeError("cannot tell whether the model scales its decoder output before lm_head")
    finally:
        model.train(was_training)


class _FullVocabularyTokenizer:
    """What CTranslate2's T5 loader needs from a tokenizer, with one unique string per model row."""

    def __init__(self, tokenizer, vocab_size: int):
        pieces = {i: tok for tok, i in tokenizer.get_vocab().items()}
        if pieces and max(pieces) >= vocab_size:
            raise ValueError(f"the tokenizer has ids up to {max(pieces)} but the model has only {vocab_size} "
                             "embedding rows: tokenizer and model do not belong together")
        tokens = [pieces.get(i) or UNUSED_TOKEN.format(i) for i in range(vocab_size)]
        if len(set(tokens)) != len(tokens):
            raise ValueError("the tokenizer's vocabulary has duplicate token strings")
        self._tokens = tokens
        self._tokenizer = tokenizer
        self.pad_token, self.eos_token, self.unk_token = tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token

    def get_vocab(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self._tokens)}

    def convert_ids_to_tokens(self, ids):
        return self._tokens[ids] if isinstance(ids, int) else [self._tokens[i] for i in ids]


def _converter_class():
    from ctranslate2.converters import TransformersConverter

    class TitleConverter(TransformersConverter):
        """``TransformersConverter`` with the output-scaling flag and vocabulary fixed (see module doc)."""

        scale_outputs: bool | None = None
        vocab_size: int | None = None

        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = model_class.from_pretrained(model_name_or_path, **kwargs)
            if model.config.model_type not in T5_FAMILY:
                raise ValueError(f"{model_name_or_path}: model type {model.config.model_type!r} is not supported "
                                 f"by this backend (expected one of {', '.join(T5_FAMILY)})")
            self.scale_outputs = hf_scales_decoder_outputs(model)
            # the CT2 T5 loader reads this flag only to decide the d_model**-0.5 output scaling
            model.config.tie_word_embeddings = self.scale_outputs
            self.vocab_size = model.get_input_embeddings().weight.shape[0]
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            tokenizer = tokenizer_class.from_pretrained(model_name_or_path, **kwargs)
            return _FullVocabularyTokenizer(tokenizer, self.vocab_size)

    return TitleConverter


def default_ct2_dir(model_dir: str | os.PathLike, quantization: str) -> Path:
    """Where the converted model is cached: ``MODEL_DIR/ct2-<quantization>``."""
    return Path(model_dir) / f"ct2-{quantization}"


def _source_mtime(model_dir: Path) -> float:
    times = [(model_dir / name).stat().st_mtime for name in SOURCE_FILES if (model_dir / name).exists()]
    times += [p.stat().st_mtime for p in model_dir.glob("model-*.safetensors")]
    return max(times, default=0.0)


def is_fresh(ct2_dir: str | os.PathLike, model_dir: str | os.PathLike, quantization: str | None = None) -> bool:
    """True when ``ct2_dir`` holds a complete conversion (of ``quantization``, when given) newer than every
    weight/config/tokenizer file of ``model_dir``."""
    ct2_dir = Path(ct2_dir)
    needed = [ct2_dir / "model.bin", ct2_dir / "config.json", ct2_dir / CONVERSION_INFO]
    if not all(p.exists() for p in needed):
        return False
    if quantization is not None:
        try:
            recorded = json.loads((ct2_dir / CONVERSION_INFO).read_text(encoding="utf-8")).get("quantization")
        except (OSError, ValueError, AttributeError):
            return False
        if recorded != quantization:
            return False
    return min(p.stat().st_mtime for p in needed) >= _source_mtime(Path(model_dir))


def convert_export(
    model_dir: str | os.PathLike,
    quantization: str = "int8",
    output_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Convert a ``save_pretrained`` export to CTranslate2 once and return the converted directory.

    The result is cached at ``output_dir`` (default ``MODEL_DIR/ct2-<quantization>``) and reused while it
    is newer than the export's weights, config and tokenizer. The conversion is written to a temporary
    sibling directory and renamed into place, so an interrupted run never leaves a half-written model.

    Args:
        model_dir: the export (``config.json``, weights, tokenizer).
        quantization: CTranslate2 weight type: ``int8``, ``int8_float16``, ``int8_bfloat16``, ``float16``,
            ``bfloat16``, ``float32``...
        force: convert even when a fresh cache exists.

    Raises:
        OSError: the cache directory cannot be written.
        ValueError / RuntimeError: the converter's errors (unsupported model, mismatched tokenizer), or a
            prompt-tuned export (a soft prompt has no CTranslate2 form).
    """
    import ctranslate2
    import transformers

    model_dir = Path(model_dir)
    if (model_dir / PROMPT_ADAPTER_DIR).is_dir():
        raise ValueError(f"{model_dir} is a prompt-tuned export: CTranslate2 cannot represent its soft prompt "
                         f"({PROMPT_ADAPTER_DIR}/); decode it with transformers (predict.py --backend hf)")
    target = Path(output_dir) if output_dir else default_ct2_dir(model_dir, quantization)
    if not force and is_fresh(target, model_dir, quantization):
        logger.info("using the cached CTranslate2 model %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        converter = _converter_class()(str(model_dir))
        converter.convert(str(staging / "model"), quantization=quantization)
        info = {"source": str(model_dir.resolve()), "quantization": quantization,
                "scale_outputs": converter.scale_outputs, "vocab_size": converter.vocab_size,
                "ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__}
        (staging / "model" / CONVERSION_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        logger.info("converted %s to CTranslate2 %s in %.1f s (output scaling %s)", model_dir, quantization,
                    time.perf_counter() - start, "on" if converter.scale_outputs else "off")
        if target.exists():  # stale: move it aside first, a directory cannot be renamed over a full one
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "model")
        try:
            os.replace(staging / "model", target)
        except OSError:
            if not is_fresh(target, model_dir, quantization):  # no other process just finished the same one
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for old in target.parent.glob(f".{target.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------- decoding

def _effective(generation_config, name: str):
    """A GenerationConfig field as ``generate`` would use it (transformers 5 fills unset fields late)."""
    value = getattr(generation_config, name, None)
    if value is None:
        from transformers import GenerationConfig

        defaults = getattr(GenerationConfig, "_get_default_generation_params", lambda: {})()
        value = defaults.get(name)
    return value


def translate_options(generation_config) -> dict[str, Any]:
    """Map a ``GenerationConfig`` to ``ctranslate2.Translator.translate_batch`` keyword arguments.

    ``num_beams`` -> ``beam_size`` (``patience=1``, i.e. HF ``early_stopping=True``); ``do_sample`` with
    ``top_k``/``top_p``/``temperature`` -> ``sampling_topk`` (HF 0 = off = CT2 0, unset = HF's default 50),
    ``sampling_topp``, ``sampling_temperature``; ``max_new_tokens`` (else ``max_length - 1``, the decoder
    start token counting in HF's ``max_length``) -> ``max_decoding_length``; ``min_new_tokens`` (else
    ``min_length - 1``) -> ``min_decoding_length``; ``length_penalty``, ``repetition_penalty``,
    ``no_repeat_ngram_size`` as they are. Fields CTranslate2 cannot reproduce are logged as a warning.
    """
    do_sample = bool(_effective(generation_config, "do_sample"))
    num_beams = int(_effective(generation_config, "num_beams") or 1)
    max_new = generation_config.max_new_tokens
    if max_new is None:
        max_new = int(_effective(generation_config, "max_length")) - 1
    min_new = generation_config.min_new_tokens
    if min_new is None:
        min_new = max(int(_effective(generation_config, "min_length") or 0) - 1, 0)
    options: dict[str, Any] = dict(
        beam_size=1 if do_sample else num_beams, patience=1.0, num_hypotheses=1,
        length_penalty=float(_effective(generation_config, "length_penalty")),
        repetition_penalty=float(_effective(generation_config, "repetition_penalty")),
        no_repeat_ngram_size=int(_effective(generation_config, "no_repeat_ngram_size") or 0),
        max_decoding_length=int(max_new), min_decoding_length=int(min_new), max_input_length=0,
        sampling_topk=1, sampling_topp=1.0, sampling_temperature=1.0,
    )
    if do_sample:
        top_k = _effective(generation_config, "top_k")
        options.update(sampling_topk=int(top_k or 0), sampling_topp=float(_effective(generation_config, "top_p")),
                       sampling_temperature=float(_effective(generation_config, "temperature")))
    ignored = {name: getattr(generation_config, name, None) for name in _UNSUPPORTED_NEUTRAL}
    ignored = {k: v for k, v in ignored.items() if v is not None and v != _UNSUPPORTED_NEUTRAL[k]}
    if do_sample and num_beams > 1:
        ignored["num_beams (with do_sample)"] = num_beams
    if not do_sample and num_beams > 1:
        # measured against HF on the same weights (tests/test_ct2.py)
        if _effective(generation_config, "early_stopping") is not True:
            ignored["early_stopping (CT2 beam search stops as with True)"] = _effective(generation_config,
                                                                                       "early_stopping")
        if options["no_repeat_ngram_size"] and not generation_config.renormalize_logits:
            ignored["no_repeat_ngram_size in beam search (CT2 renormalises after blocking, "
                    "as HF with renormalize_logits=True)"] = options["no_repeat_ngram_size"]
        if options["repetition_penalty"] != 1.0:
            ignored["repetition_penalty in beam search (CT2 penalises logits, HF log-probabilities)"] = \
                options["repetition_penalty"]
    if ignored:
        logger.warning("CTranslate2 backend: these generation settings are not reproduced exactly: %s", ignored)
    return options


def default_cpu_threads() -> int:
    """``$OMP_NUM_THREADS`` when set (as torch honours it), else every core."""
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "")), 1)
    except ValueError:
        return os.cpu_count() or 1


class CT2TitleGenerator:
    """Titles from a converted model with ``ctranslate2.Translator`` (same interface as
    :func:`generation.generate_titles`).

    Args:
        ct2_dir: a directory written by :func:`convert_export`.
        tokenizer: the export's transformers tokenizer (encodes sources, decodes titles).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        compute_type: CTranslate2 compute type; ``None`` keeps the type the model was converted to.
        intra_threads: CPU threads per batch (0: ``$OMP_NUM_THREADS`` if set, else all cores).
    """

    def __init__(self, ct2_dir: str | os.PathLike, tokenizer, device: str = "cpu", compute_type: str | None = None,
                 intra_threads: int = 0):
        device_type, _, index = str(device).partition(":")
        self._translator_kwargs = dict(
            model_path=str(ct2_dir), device=device_type, device_index=int(index or 0),
            compute_type=compute_type or "default",
            intra_threads=(intra_threads or default_cpu_threads()) if device_type == "cpu" else intra_threads)
        self.translator = self._make_translator()
        self.tokenizer = tokenizer
        self.token_to_id = {tok: i for i, tok in enumerate(_read_vocabulary(Path(ct2_dir)))}

    def _make_translator(self):
        import ctranslate2

        return ctranslate2.Translator(**self._translator_kwargs)

    def generate_ids(
        self,
        texts: Sequence[str],
        generation_config,
        *,
        batch_size: int = 16,
        max_source_length: int = 512,
        source_prefix: str = "",
        progress: bool = False,
        seed: int | None = None,
    ) -> list[list[int]]:
        """``[n]`` generated token-id lists (no decoder start, no EOS), in input order. Batches are sorted
        by source length; ``generation_config`` is mapped by :func:`translate_options`; ``seed`` seeds
        CTranslate2's sampler (when sampling, this reloads the translator: CTranslate2 seeds its worker
        threads when they start)."""
        import ctranslate2
        from tqdm.auto import tqdm

        if not texts:
            return []
        options = translate_options(generation_config)
        if seed is not None and options["sampling_topk"] != 1:
            # CTranslate2 seeds a worker thread's generator when the thread starts: reload to reseed
            ctranslate2.set_random_seed(int(seed))
            self.translator = None
            self.translator = self._make_translator()
        encoded = self.tokenizer([source_prefix + t for t in texts], truncation=True,
                                 max_length=max_source_length)["input_ids"]
        sources = [self.tokenizer.convert_ids_to_tokens(ids) for ids in encoded]
        results: list[list[int] | None] = [None] * len(texts)
        with tqdm(total=len(texts), unit="article", disable=not progress, desc="generate (ct2)") as bar:
            for batch in length_sorted_batches([len(s) for s in sources], batch_size):
                out = self.translator.translate_batch([sources[i] for i in batch], **options)
                for i, result in zip(batch, out):
                    results[i] = [self.token_to_id[tok] for tok in result.hypotheses[0]]
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def generate_titles(self, texts: Sequence[str], generation_config, **kwargs) -> list[str]:
        """``[n]`` cleaned titles in input order (keyword arguments as :meth:`generate_ids`)."""
        ids = self.generate_ids(texts, generation_config, **kwargs)
        if not ids:
            return []  # batch_decode([]) gives [''] in transformers 5
        size = len(self.tokenizer)
        # rows beyond the tokenizer decode to nothing, as in the HF path
        decoded = self.tokenizer.batch_decode([[i for i in seq if i < size] for seq in ids], skip_special_tokens=True)
        return [clean_title(t) for t in decoded]


def _read_vocabulary(ct2_dir: Path) -> list[str]:
    for name in ("shared_vocabulary.json", "target_vocabulary.json"):
        if (ct2_dir / name).exists():
            return json.loads((ct2_dir / name).read_text(encoding="utf-8"))
    for name in ("shared_vocabulary.txt", "target_vocabulary.txt"):
        if (ct2_dir / name).exists():
            return (ct2_dir / name).read_text(encoding="utf-8").split("\n")[:-1]
    raise FileNotFoundError(f"{ct2_dir}: no vocabulary file in this CTranslate2 model")
