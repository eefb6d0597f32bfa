"""Pack a trained export into one archive that graders fetch with ``bash download.sh``.

    python package_model.py outputs/mt5-small/best --output model.tar.gz
    python package_model.py outputs/mt5-small/best --output model.tar.gz --dtype bf16 --reference data/public.jsonl
    python package_model.py outputs/mt5-small/best --output model.tar.gz --url https://...   # after uploading

The archive holds only what prediction loads (safetensors weights, ``config.json``,
``generation_config.json``, ``title_config.json``, tokenizer files); checkpoints, optimizer state, CTranslate2
caches and evaluation files are left out. It is deterministic (see ``handin``): the same export gives the
same sha256. Its size, sha256, the URL (``--url``, else a placeholder) and where ``download.sh`` unpacks it
go into the tracked ``model.lock``.

``--dtype bf16`` stores bfloat16 weights (half the bytes). With ``--reference FILE`` the packed model and
the float32 export are both decoded the same way (``predict.py`` in-process, the export's own strategy,
``--seed 0``) and scored with tw_rouge, and the change in ROUGE is printed and recorded beside the bytes saved.

Exit status: 0; 2 for a directory that is not an export, or a bad argument or output path (nothing is
written); 1 when the reference check fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from data_io import DataError, check_output_path, read_jsonl
from export import TITLE_CONFIG_FILE, TOKENIZER_FILES, ExportError, TitleConfig, check_export
from handin import (
    DEFAULT_UNPACK_TO,
    LOCK_FILE,
    PLACEHOLDER_URL,
    check_segmenter,
    human_bytes,
    is_placeholder_url,
    read_lock,
    write_archive,
    write_lock,
)

# what prediction loads, besides the weights; anything else in an export stays out of the archive
PACKED_FILES = ("config.json", "generation_config.json", TITLE_CONFIG_FILE, *TOKENIZER_FILES,
                "special_tokens_map.json", "added_tokens.json", "prune_info.json")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class PackageArguments:
    output: str = field(default="model.tar.gz", metadata={"help": "The archive to write (atomically)."})
    dtype: str = field(default="fp32", metadata={"help": "Weights in the archive: fp32 (as trained) or bf16 (half "
                                                         "the size).", "choices": list(DTYPES)})
    url: Optional[str] = field(
        default=None, metadata={"help": "Where the archive will be downloaded from (https link, Google Drive link or "
                                        "file id). Default: the URL already in the lock file when the sha256 is "
                                        "unchanged, else a placeholder to fill in after uploading."})
    lock: str = field(default=str(LOCK_FILE), metadata={"help": "The lock file download.sh reads."})
    reference: Optional[str] = field(
        default=None, metadata={"help": "Labelled JSON lines (article + title + id): decode and score the packed model "
                                        "(and the fp32 export, when the dtype changes) on it."})
    segmenter: str = field(default="jieba", metadata={"help": "tw_rouge segmenter for --reference (ckip grades)."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "--reference: only the first N articles."})
    device: str = field(default="auto", metadata={"help": "--reference: device for decoding (auto, cpu, cuda)."})


class PackageError(Exception):
    """A problem with the arguments or the export (exit status 2)."""


# ----------------------------------------------------------------------------------------------- files

def select_files(export_dir: Path) -> tuple[list[Path], list[Path], list[str]]:
    """``(weight files, other packed files, names left out)`` of an export.

    Raises:
        PackageError: no safetensors weights (a ``pytorch_model.bin`` export must be re-saved first).
    """
    if (export_dir / "model.safetensors").is_file():
        weights = [export_dir / "model.safetensors"]
    elif (export_dir / "model.safetensors.index.json").is_file():
        index = json.loads((export_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not (export_dir / s).is_file()]
        if not shards or missing:
            raise PackageError(f"{export_dir}/model.safetensors.index.json: shard(s) missing: "
                               f"{missing or 'none listed'}")
        weights = [export_dir / "model.safetensors.index.json", *(export_dir / s for s in shards)]
    else:
        raise PackageError(f"{export_dir}: no safetensors weights (pytorch_model.bin only); re-save the model with "
                           "save_pretrained() (safetensors) and package that")
    others = [export_dir / name for name in PACKED_FILES if (export_dir / name).is_file()]
    packed = {p.name for p in weights + others}
    left_out = sorted(p.name + ("/" if p.is_dir() else "") for p in export_dir.iterdir() if p.name not in packed)
    return weights, others, left_out


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """``(header length, header)`` of a safetensors file: 8 bytes of little-endian length, then JSON."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        return header_len, json.loads(f.read(header_len))


def safetensors_dtypes(path: Path) -> set[str]:
    """Dtypes of the floating-point tensors in a safetensors file (read from its header only)."""
    _, header = _safetensors_header(path)
    floats = ("F64", "F32", "F16", "BF16")
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"] in floats}


def convert_safetensors(src: Path, dst: Path, dtype: str) -> None:
    """Copy ``src`` to ``dst`` with every floating-point tensor cast to ``dtype`` (``float32``/``bfloat16``)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    tensors = {}
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        for key in f.keys():
            tensor = f.get_tensor(key)
            tensors[key] = tensor.to(target) if tensor.is_floating_point() else tensor
    save_file(tensors, str(dst), metadata=metadata)


def stage_export(export_dir: Path, weights: list[Path], others: list[Path], dtype: str,
                 stage: Path) -> tuple[Path, bool]:
    """Build the directory to pack in ``stage/model``: links to the export's files, and for weights not yet
    in ``dtype`` converted copies (with ``config.json``'s dtype and the shard index's size updated).
    Returns ``(that directory, whether the weights were converted)``."""
    model = stage / "model"
    model.mkdir()
    target = DTYPES[dtype]
    safetensors_type = {"float32": "F32", "bfloat16": "BF16"}[target]
    files = [p for p in weights if p.suffix == ".safetensors"]
    convert = any(safetensors_dtypes(p) - {safetensors_type} for p in files)
    for path in weights + others:
        if convert and path.suffix == ".safetensors":
            convert_safetensors(path, model / path.name, target)
        elif convert and path.name == "config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            config["torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"] = target
            (model / path.name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        elif convert and path.name == "model.safetensors.index.json":
            index = json.loads(path.read_text(encoding="utf-8"))
            index.setdefault("metadata", {})["total_size"] = sum(
                _tensor_bytes(model / s) for s in sorted(set(index["weight_map"].values())))
            (model / path.name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            (model / path.name).symlink_to(path.resolve())
    return model, convert


def _tensor_bytes(path: Path) -> int:
    header_len, _ = _safetensors_header(path)
    return path.stat().st_size - 8 - header_len


# ----------------------------------------------------------------------------------------------- reference check

def score_model(model_dir: Path, reference: str, args: PackageArguments, work: Path) -> dict[str, float]:
    """Decode ``reference`` with ``model_dir`` through ``predict.py`` (the export's own strategy, seed 0) and
    return tw_rouge F x100 (``rouge-1``, ``rouge-2``, ``rouge-l``).

    Raises:
        RuntimeError: prediction failed (its message is on stderr).
    """
    import predict
    from tw_rouge import get_rouge

    out = work / f"pred-{model_dir.name}-{len(list(work.iterdir()))}.jsonl"
    argv = ["--model_dir", str(model_dir), "--input_file", reference, "--output_file", str(out), "--seed", "0",
            "--device", args.device, "--log_level", "warning"]
    if args.max_samples:
        argv += ["--max_samples", str(args.max_samples)]
    if predict.main(argv) != 0:
        raise RuntimeError(f"decoding {reference} with {model_dir} failed (see above)")
    refs = {r["id"]: r["title"] for r in read_jsonl(reference, require_summary=True)}
    rows = read_jsonl(out, text_column=None)
    scores = get_rouge([r["title"] for r in rows], [refs[r["id"]] for r in rows], avg=True, segmenter=args.segmenter)
    return {m: 100 * scores[m]["f"] for m in ("rouge-1", "rouge-2", "rouge-l")} | {"num_articles": len(rows)}


# ----------------------------------------------------------------------------------------------- main

def package(export_dir: str, args: PackageArguments) -> dict[str, str]:
    """Check, stage, pack, optionally score, write the lock; returns the lock's values."""
    try:
        export = check_export(export_dir)
        title_config = TitleConfig.load(export)  # valid: check_export read it
    except ExportError as err:
        raise PackageError(str(err)) from err
    if title_config.prompt_adapter:
        raise PackageError(f"{export_dir}: a prompt-tuned export keeps its soft prompt in "
                           f"{title_config.prompt_adapter}/, and the archive holds flat files only (nor can "
                           "CTranslate2 run it); hand in a full or LoRA fine-tuned export")
    weights, others, left_out = select_files(export)
    output = Path(args.output)
    check_output_path(output, protected=[*weights, *others, args.lock])
    if args.reference:  # fail before the work: a bad reference file, a segmenter without its data
        read_jsonl(args.reference, text_column=title_config.text_column, require_summary=True)
        try:
            check_segmenter(args.segmenter)
        except ValueError as err:
            raise PackageError(str(err)) from err
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".package-", dir=output.parent) as tmp:
        staged, converted = stage_export(export, weights, others, args.dtype, Path(tmp))
        check_export(staged)
        weight_bytes = sum((staged / p.name).stat().st_size for p in weights)
        source_weight_bytes = sum(p.stat().st_size for p in weights)
        # score before anything is written: a failed check leaves the archive and the lock as they were
        checks = reference_check(export, staged, args, Path(tmp), converted, weight_bytes,
                                 source_weight_bytes) if args.reference else {}
        members = sorted(staged.iterdir())
        sha256, size = write_archive(((p.name, p) for p in members), output)
        print(f"packed {export} -> {output}")
        for p in members:
            print(f"  {p.name:28s} {human_bytes(p.stat().st_size):>10s}")
        if left_out:
            print(f"  left out: {', '.join(left_out)}")
    print(f"  archive: {size:,} bytes ({human_bytes(size)}), sha256 {sha256}")
    if checks:
        print(f"  {checks.pop('_summary')}")
    if size > 4e9:
        print("  WARNING: over the course's 4 GB download limit; try --dtype bf16 or prune_vocab.py", file=sys.stderr)

    old = read_lock(args.lock)
    if args.url:
        url = args.url
    elif old.get("sha256") == sha256 and not is_placeholder_url(old.get("url")):
        url = old["url"]  # the same archive: the uploaded copy is still right
    else:
        url = PLACEHOLDER_URL
    values = {"url": url, "sha256": sha256, "size": size, "unpack_to": old.get("unpack_to", DEFAULT_UNPACK_TO),
              "archive": output.name, "dtype": args.dtype, "export": export_dir,
              "step": "" if title_config.step is None else title_config.step,
              "generation_preset": title_config.generation_preset, "weight_bytes": weight_bytes, **checks}
    comments = {"archive": "what was packed (informational)"}
    if checks:
        comments[next(iter(checks))] = ("package_model.py --reference: tw_rouge F x100 of the packed model"
                                        + (" and of the fp32 export" if args.dtype != "fp32" else ""))
    write_lock(args.lock, values, comments)
    print(f"wrote {args.lock}" + (" (url is a placeholder: upload the archive, then put its link in url= or run "
                                  "again with --url)" if is_placeholder_url(url) else f" (url {url})"))
    return {k: str(v) for k, v in values.items()}


def reference_check(export: Path, staged: Path, args: PackageArguments, work: Path, converted: bool,
                    weight_bytes: int, source_weight_bytes: int) -> dict[str, str]:
    """Score the packed model (and the export, when the dtype changed) on ``--reference``; return the lock's
    ``check_*`` values, and a one-line ``_summary`` to print."""
    packed = score_model(staged, args.reference, args, work)
    checks = {"check_reference": args.reference, "check_articles": packed["num_articles"],
              "check_segmenter": args.segmenter, "check_decoding": "the export's own strategy, seed 0"}
    tag = args.dtype
    for m in ("rouge-1", "rouge-2", "rouge-l"):
        checks[f"check_{m.replace('-', '_')}_{tag}"] = f"{packed[m]:.4f}"
    line = f"{tag} {packed['rouge-1']:.2f}/{packed['rouge-2']:.2f}/{packed['rouge-l']:.2f}"
    if converted:
        source = score_model(export, args.reference, args, work)
        for m in ("rouge-1", "rouge-2", "rouge-l"):
            key = m.replace("-", "_")
            checks[f"check_{key}_source"] = f"{source[m]:.4f}"
            checks[f"check_{key}_change"] = f"{packed[m] - source[m]:+.4f}"
        checks["check_bytes_saved"] = source_weight_bytes - weight_bytes
        line = (f"source {source['rouge-1']:.2f}/{source['rouge-2']:.2f}/{source['rouge-l']:.2f}, {line}, change "
                + "/".join(f"{packed[m] - source[m]:+.2f}" for m in ("rouge-1", "rouge-2", "rouge-l"))
                + f"; weights {human_bytes(weight_bytes)} instead of {human_bytes(source_weight_bytes)} "
                  f"(saves {human_bytes(source_weight_bytes - weight_bytes)})")
    checks["_summary"] = (f"ROUGE-1/2/L F x100 on {args.reference} ({packed['num_articles']} articles, "
                          f"{args.segmenter}, the export's own strategy): {line}")
    return checks


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, PackageArguments]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(PackageArguments, description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("export_dir", help="A save_pretrained export, e.g. outputs/mt5-small/best.")
    args, extra = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    return extra.export_dir, args


def main(argv: Sequence[str] | None = None) -> int:
    export_dir, args = parse_args(argv)
    try:
        if args.max_samples is not None and args.max_samples <= 0:
            raise PackageError(f"--max_samples must be positive, got {args.max_samples}")
        package(export_dir, args)
    except (PackageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
