"""The submission kit: package_model.py (deterministic archive, model.lock, bf16), download.sh (checksum,
atomic unpack, failures leave nothing), run.sh's default model, the grading rehearsal, and report.py
(numbers read back from the runs' own files). Network: only a loopback HTTP server on 127.0.0.1 that each
test starts and stops itself."""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

import handin
import package_model
import predict
import report
from conftest import REPO, TINY_MT5, read_jsonl, save_tiny_export, write_jsonl
from export import TitleConfig
from generation import load_presets, resolve_generation_config

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT = 300  # seconds, for every subprocess


# --------------------------------------------------------------------------------------------- helpers

class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold the server

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, mode = route
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":  # promise the whole file, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    """A loopback HTTP server: ``server.routes[path] = (bytes, "ok"|"cut")``, ``server.requests`` the paths
    asked for, ``server.url(path)``. Stopped (and its thread joined) at the end of the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.requests = {}, []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def kit_env(**extra) -> dict[str, str]:
    """The environment the kit's shell scripts get: this interpreter's venv (so nothing is installed), one
    thread, no proxy for 127.0.0.1, and no MODEL_DIR / PRESET / MODEL_URL from the caller."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "PRESET", "MODEL_URL", "MODEL_SHA256")}
    env.update(VENV=sys.prefix, OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


def bash(script: Path, *args, cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *map(str, args)], cwd=cwd, env=kit_env(**env), capture_output=True,
                          text=True, timeout=TIMEOUT)


def package(export: Path, out: Path, lock: Path, *extra: str) -> dict[str, str]:
    assert package_model.main([str(export), "--output", str(out), "--lock", str(lock), *extra]) == 0
    return handin.read_lock(lock)


def mini_root(tmp_path: Path, lock_values: dict) -> Path:
    """A directory with only download.sh and a model.lock: all download.sh needs."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "download.sh", root / "download.sh")
    handin.write_lock(root / "model.lock", lock_values)
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny export as training writes it (greedy strategy in generation_config.json and title_config.json),
    plus what must never be packed: a CTranslate2 cache, eval predictions, a checkpoint folder."""
    out = tmp_path_factory.mktemp("export")
    model = save_tiny_export(tiny_tokenizer, out, max_new_tokens=12)
    resolve_generation_config(model.generation_config, "greedy").save_pretrained(str(out))
    TitleConfig(generation_preset="greedy", generation_preset_reason="test", step=7,
                metrics={"eval/rouge-1": 1.0}).save(out)
    (out / "ct2-int8").mkdir()
    (out / "ct2-int8" / "model.bin").write_bytes(b"ct2")
    (out / "checkpoints").mkdir()
    (out / "optimizer.pt").write_bytes(b"state")
    write_jsonl(out / "eval_predictions.jsonl", [{"title": "x", "id": 1}])
    return out


@pytest.fixture(scope="module")
def archive(export, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("archive")
    lock = package(export, work / "model.tar.gz", work / "model.lock")
    return work / "model.tar.gz", lock


@pytest.fixture(scope="module")
def articles(lcsts_val, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.jsonl"
    return write_jsonl(path, [{"id": r["id"], "maintext": r["maintext"]} for r in lcsts_val[:6]])


def predict_titles(model_dir: Path, inp: Path, out: Path, *extra: str) -> list[str]:
    assert predict.main(["--model_dir", str(model_dir), "--input_file", str(inp), "--output_file", str(out),
                         *extra]) == 0
    return [r["title"] for r in read_jsonl(out)]


# --------------------------------------------------------------------------------------------- package + download

def test_packaged_model_downloads_and_run_sh_gives_the_exports_titles(export, archive, articles, server, tmp_path):
    path, lock = archive
    server.routes["/model.tar.gz"] = (path.read_bytes(), "ok")
    repo = handin.copy_repository(tmp_path / "repo")
    assert not (repo / "outputs").exists() and not (repo / "models").exists()
    lock = {**lock, "url": server.url("/model.tar.gz")}
    handin.write_lock(repo / "model.lock", lock)

    proc = bash(repo / "download.sh", cwd=tmp_path)  # from another directory: paths are the script's
    assert proc.returncode == 0, proc.stderr
    model_dir = repo / "models" / "title-model"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(handin.read_archive_names(path) + [".download-info"])
    assert handin.read_lock(model_dir / ".download-info")["sha256"] == lock["sha256"]
    assert {p.name for p in repo.joinpath("models").iterdir()} == {"title-model"}  # no temp dirs left

    # run.sh with no MODEL_DIR and no third argument loads the downloaded model
    proc = bash(repo / "run.sh", articles, tmp_path / "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "preset greedy (the export's own" in proc.stderr
    expected = predict_titles(export, articles, tmp_path / "expected.jsonl")
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["title"] for r in rows] == expected and any(expected)
    assert handin.check_submission(articles, tmp_path / "out.jsonl") == []

    # a second run finds the marker: no request reaches the server
    proc = bash(repo / "download.sh")
    assert proc.returncode == 0 and "nothing to do" in proc.stderr
    assert server.requests == ["/model.tar.gz"]


def test_archive_holds_only_what_prediction_loads(archive):
    path, lock = archive
    names = handin.read_archive_names(path)
    assert names == sorted(names)
    assert set(names) == {"config.json", "generation_config.json", "title_config.json", "model.safetensors",
                          "tokenizer.json", "tokenizer_config.json"}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.mode) == (0, 0, 0, "", 0o644)
    assert lock["sha256"] == handin.sha256_file(path) and int(lock["size"]) == path.stat().st_size
    assert handin.is_placeholder_url(lock["url"]) and lock["unpack_to"] == "models/title-model"
    assert (lock["dtype"], lock["step"], lock["generation_preset"]) == ("fp32", "7", "greedy")


def test_packaging_is_deterministic_and_refuses_what_is_not_an_export(export, archive, tmp_path, capsys,
                                                                      monkeypatch):
    path, lock = archive
    again = package(export, tmp_path / "again.tar.gz", tmp_path / "model.lock")
    assert again["sha256"] == lock["sha256"] and (tmp_path / "again.tar.gz").read_bytes() == path.read_bytes()
    assert lock["sha256"] in capsys.readouterr().out  # printed with the size
    # a URL given once is kept while the archive stays the same, dropped when it changes
    package(export, tmp_path / "again.tar.gz", tmp_path / "model.lock", "--url", "https://example.org/m.tar.gz")
    assert package(export, tmp_path / "again.tar.gz", tmp_path / "model.lock")["url"] == "https://example.org/m.tar.gz"

    not_export = tmp_path / "run"
    not_export.mkdir()
    (not_export / "metrics.jsonl").write_text("{}\n")
    lock_before = (tmp_path / "model.lock").read_text()
    code = package_model.main([str(not_export), "--output", str(tmp_path / "bad.tar.gz"),
                               "--lock", str(tmp_path / "model.lock")])
    assert code == 2 and "not a model directory (no config.json)" in capsys.readouterr().err
    assert not (tmp_path / "bad.tar.gz").exists() and (tmp_path / "model.lock").read_text() == lock_before
    assert not list(tmp_path.glob(".*"))  # no temp files or staging dirs
    # a reference check that could not score is refused before anything is packed
    monkeypatch.setenv("TW_ROUGE_CKIP_DIR", str(tmp_path / "no-ckip"))
    ref = write_jsonl(tmp_path / "ref.jsonl", [{"id": 1, "maintext": "台北今天下雨", "title": "台北下雨"}])
    code = package_model.main([str(export), "--output", str(tmp_path / "bad.tar.gz"), "--lock",
                               str(tmp_path / "model.lock"), "--reference", str(ref), "--segmenter", "ckip"])
    assert code == 2 and "ckiptagger data not found" in capsys.readouterr().err
    assert not (tmp_path / "bad.tar.gz").exists() and (tmp_path / "model.lock").read_text() == lock_before


def test_bf16_archive_halves_the_weights_predicts_and_records_the_rouge_change(export, archive, tmp_path, lcsts_val,
                                                                              caplog):
    from safetensors import safe_open
    from transformers import AutoModelForSeq2SeqLM

    from tw_rouge import get_rouge

    ref = write_jsonl(tmp_path / "ref.jsonl", [{k: r[k] for k in ("id", "maintext", "title")} for r in lcsts_val[:6]])
    lock = package(export, tmp_path / "bf16.tar.gz", tmp_path / "model.lock", "--dtype", "bf16",
                   "--reference", str(ref), "--segmenter", "char")
    unpacked = handin.unpack_archive(tmp_path / "bf16.tar.gz", tmp_path / "bf16")
    fp32_bytes = (export / "model.safetensors").stat().st_size
    bf16_bytes = (unpacked / "model.safetensors").stat().st_size
    assert 0.49 < bf16_bytes / fp32_bytes < 0.51 and int(lock["weight_bytes"]) == bf16_bytes
    assert int(lock["check_bytes_saved"]) == fp32_bytes - bf16_bytes
    with safe_open(str(unpacked / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    assert AutoModelForSeq2SeqLM.from_pretrained(str(unpacked)).dtype.is_floating_point  # loads
    assert str(AutoModelForSeq2SeqLM.from_pretrained(str(unpacked)).dtype) == "torch.bfloat16"  # as stored

    # predict.py computes in float32 on the CPU; the titles come out, and the lock's numbers are theirs
    refs = [r["title"] for r in read_jsonl(ref)]
    bf16_titles = predict_titles(unpacked, ref, tmp_path / "bf16.jsonl", "--seed", "0")
    assert "weights stored as torch.bfloat16, computing in float32" in caplog.text
    assert len(bf16_titles) == 6 and any(bf16_titles)
    fp32_titles = predict_titles(export, ref, tmp_path / "fp32.jsonl", "--seed", "0")
    for titles, tag in ((bf16_titles, "bf16"), (fp32_titles, "source")):
        scores = get_rouge(titles, refs, segmenter="char")
        for m in ("rouge-1", "rouge-2", "rouge-l"):
            assert float(lock[f"check_{m.replace('-', '_')}_{tag}"]) == pytest.approx(100 * scores[m]["f"], abs=1e-4)
    for m in ("rouge_1", "rouge_2", "rouge_l"):
        assert float(lock[f"check_{m}_change"]) == pytest.approx(
            float(lock[f"check_{m}_bf16"]) - float(lock[f"check_{m}_source"]), abs=2e-4)
    assert lock["check_articles"] == "6" and lock["check_segmenter"] == "char"


# --------------------------------------------------------------------------------------------- download failures

def _good_lock(archive, url) -> dict:
    path, lock = archive
    return {**lock, "url": url}


@pytest.mark.parametrize("case", ["wrong checksum", "404", "cut short", "short file", "placeholder url"])
def test_a_failed_download_leaves_no_model_and_no_temp_files(case, archive, server, tmp_path):
    path, lock = archive
    body = path.read_bytes()
    server.routes["/m.tar.gz"] = (body, "ok")
    server.routes["/cut.tar.gz"] = (body, "cut")
    server.routes["/short.tar.gz"] = (body[:-100], "ok")
    values, env = _good_lock(archive, server.url("/m.tar.gz")), {}
    message = {"wrong checksum": "checksum mismatch", "404": "HTTP error such as 404",
               "cut short": "download failed", "short file": "incomplete download",
               "placeholder url": "still has the placeholder"}[case]
    if case == "wrong checksum":
        env["MODEL_SHA256"] = "0" * 64  # the environment wins over model.lock
    elif case == "404":
        values["url"] = server.url("/missing.tar.gz")
    elif case == "cut short":
        values["url"] = server.url("/cut.tar.gz")
    elif case == "short file":
        values["url"] = server.url("/short.tar.gz")
    else:
        values["url"] = handin.PLACEHOLDER_URL
    root = mini_root(tmp_path, values)
    proc = bash(root / "download.sh", **env)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert files_under(root) == {"download.sh", "model.lock"}  # no models/, no .title-model.download.*
    assert (server.requests != []) == (case != "placeholder url")


def test_a_failed_update_keeps_the_previous_model(archive, server, tmp_path):
    path, lock = archive
    server.routes["/m.tar.gz"] = (path.read_bytes(), "ok")
    root = mini_root(tmp_path, _good_lock(archive, server.url("/m.tar.gz")))
    assert bash(root / "download.sh").returncode == 0
    before = {p: p.read_bytes() for p in (root / "models" / "title-model").iterdir()}
    proc = bash(root / "download.sh", MODEL_SHA256="f" * 64)  # a new model is announced, the file does not match
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr
    assert {p: p.read_bytes() for p in (root / "models" / "title-model").iterdir()} == before
    assert {p.name for p in (root / "models").iterdir()} == {"title-model"}


def test_too_little_disk_space_is_refused_before_downloading(archive, server, tmp_path):
    path, lock = archive
    server.routes["/m.tar.gz"] = (path.read_bytes(), "ok")
    root = mini_root(tmp_path, _good_lock(archive, server.url("/m.tar.gz")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_df = bin_dir / "df"  # a disk with 1 MB free
    fake_df.write_text("#!/usr/bin/env bash\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                       "echo '/dev/x 100000 99000 1000 99% /'\n")
    fake_df.chmod(0o755)
    proc = bash(root / "download.sh", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert proc.returncode == 1 and "not enough free disk space" in proc.stderr and "0 MB free" in proc.stderr
    assert server.requests == [] and files_under(root) == {"download.sh", "model.lock"}


def test_wget_and_a_google_drive_link_through_gdown(archive, server, tmp_path):
    path, lock = archive
    server.routes["/m.tar.gz"] = (path.read_bytes(), "ok")
    root = mini_root(tmp_path, _good_lock(archive, server.url("/m.tar.gz")))
    proc = bash(root / "download.sh", MODEL_DOWNLOADER="wget")
    assert proc.returncode == 0, proc.stderr
    assert "with wget" in proc.stderr and (root / "models" / "title-model" / "config.json").is_file()

    # a Drive share link goes to gdown with the file id (a stand-in gdown records its arguments)
    shutil.rmtree(root / "models")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gdown"
    fake.write_text('#!/usr/bin/env bash\necho "$@" > "$GDOWN_ARGS"\n'
                    'while [ "$#" -gt 0 ]; do if [ "$1" = -O ]; then cp "$ARCHIVE" "$2"; fi; shift; done\n')
    fake.chmod(0o755)
    file_id = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    proc = bash(root / "download.sh", MODEL_URL=f"https://drive.google.com/file/d/{file_id}/view?usp=sharing",
                PATH=f"{bin_dir}:{os.environ['PATH']}", GDOWN_ARGS=str(tmp_path / "args"), ARCHIVE=str(path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "args").read_text().split()[:2] == ["--quiet", file_id]
    assert (root / "models" / "title-model" / "config.json").is_file()


# --------------------------------------------------------------------------------------------- rehearsal

def test_check_submission_names_each_problem(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "maintext": "x"} for i in ("a", "b", "c")])
    cases = {
        "good": ([("a", "甲"), ("b", "乙"), ("c", "丙")], None),
        "dropped": ([("a", "甲"), ("b", "乙")], "2 lines for 3 input articles"),
        "reordered": ([("b", "乙"), ("a", "甲"), ("c", "丙")], "out.jsonl:1: id 'b' where the input has 'a'"),
        "special": ([("a", "甲<extra_id_0>"), ("b", "乙"), ("c", "丙")], "special token '<extra_id_0>'"),
        "empty": ([("a", " "), ("b", "乙"), ("c", "丙")], "out.jsonl:1: empty title"),
        "foreign id": ([("a", "甲"), ("b", "乙"), ("d", "丙")], "ids not in the input: 'd'"),
    }
    for name, (pairs, message) in cases.items():
        out = write_jsonl(tmp_path / "out.jsonl", [{"title": t, "id": i} for i, t in pairs])
        problems = handin.check_submission(inp, out)
        assert (problems == []) if message is None else any(message in p for p in problems), (name, problems)
    (tmp_path / "out.jsonl").write_text('{"id": "a"}\n')
    assert "missing field 'title'" in handin.check_submission(inp, tmp_path / "out.jsonl")[0]


def rehearse(articles, url, tmp_path, *extra, **env) -> subprocess.CompletedProcess:
    return bash(REPO / "scripts" / "rehearse_grading.sh", articles, url, "--work_dir", tmp_path / "rehearsal",
                *extra, **env)


def test_rehearsal_passes_on_a_good_archive(archive, articles, server, tmp_path):
    path, lock = archive
    server.routes["/m.tar.gz"] = (path.read_bytes(), "ok")
    proc = rehearse(articles, server.url("/m.tar.gz"), tmp_path, MODEL_SHA256=lock["sha256"],
                    MODEL_DIR=str(tmp_path / "nowhere"), PRESET="beam5")  # a grader has neither: cleared
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rehearsal passed" in proc.stdout
    table = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert re.search(r"\| 0 \| [\d.]+ s \| \d+ MiB \|", table["download.sh"])
    assert f"{handin.human_bytes(path.stat().st_size)} downloaded" in table["download.sh"]
    assert re.search(r"\| 0 \| [\d.]+ s \| \d+ MiB \|", table["run.sh"])
    assert "6 titles for 6 articles" in table["run.sh"]
    rows = read_jsonl(tmp_path / "rehearsal" / "output.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(articles)]
    assert not (tmp_path / "rehearsal" / "repo" / "outputs").exists()  # the copy had only the downloaded model


BROKEN_RUN_SH = """#!/usr/bin/env bash
set -euo pipefail
"$VENV/bin/python" - "$1" "$2" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
out = [{"title": "標題", "id": r["id"]} for r in rows]
out = %s
with open(sys.argv[2], "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r, ensure_ascii=False) + "\\n" for r in out))
EOF
"""


@pytest.mark.parametrize("breakage, message", [("out[:-1]", "5 lines for 6 input articles"),
                                               ("out[1:2] + out[:1] + out[2:]", "ids out of input order")])
def test_rehearsal_fails_clearly_on_a_run_sh_that_drops_or_reorders(breakage, message, archive, articles, server,
                                                                   tmp_path):
    path, lock = archive
    server.routes["/m.tar.gz"] = (path.read_bytes(), "ok")
    broken = tmp_path / "broken_run.sh"
    broken.write_text(BROKEN_RUN_SH % breakage)
    proc = rehearse(articles, server.url("/m.tar.gz"), tmp_path, "--run_sh", broken, MODEL_SHA256=lock["sha256"])
    assert proc.returncode == 1
    assert "rehearsal FAILED: run.sh's output is not what graders need" in proc.stderr
    assert message in proc.stderr


def test_rehearsal_fails_clearly_when_the_download_fails(articles, server, tmp_path):
    proc = rehearse(articles, server.url("/gone.tar.gz"), tmp_path, MODEL_SHA256="0" * 64)
    assert proc.returncode == 1
    assert "rehearsal FAILED: download.sh exited with status 1" in proc.stderr
    assert "HTTP error" in proc.stderr and "| download.sh | 1 |" in proc.stdout


# --------------------------------------------------------------------------------------------- presets

def test_the_documented_sweep_tries_two_settings_of_every_strategy():
    presets = load_presets()
    raw = json.loads((REPO / "configs" / "generation_presets.json").read_text(encoding="utf-8"))
    command = raw["_sweep"]
    assert command.split("--sweep ")[1] in (REPO / "README.md").read_text(encoding="utf-8")
    swept = command.split("--sweep ")[1].split()
    assert set(swept) <= set(presets)
    families = [report.strategy_of(presets[name])[0] for name in swept]
    for family in report.FAMILIES:
        assert families.count(family) >= (1 if family == "greedy" else 2), family
    assert len({report.strategy_of(presets[n])[1] for n in swept}) == len(swept)  # all different settings
    # the names that existed before keep their meaning
    assert presets["beam4"]["num_beams"] == 4 and presets["top_p0.9"]["top_p"] == 0.9
    assert presets["sample_t0.7"]["temperature"] == 0.7 and presets["top_k50"]["top_k"] == 50


# --------------------------------------------------------------------------------------------- report

@pytest.fixture(scope="module")
def runs(tmp_path_factory, lcsts_train, tiny_tokenizer_dir):
    """A tiny supervised run, an RL run from its export, the same-budget control, and a sweep."""
    import train_decoder
    from conftest import reset_accelerate_state

    tmp = tmp_path_factory.mktemp("runs")
    records = lcsts_train[:24]
    train = write_jsonl(tmp / "train.jsonl", records)
    val = write_jsonl(tmp / "val.jsonl", records[:12])
    config = tmp / "tiny.json"
    config.write_text(json.dumps(TINY_MT5), encoding="utf-8")
    common = ["--train_file", str(train), "--validation_file", str(val), "--segmenter", "char",
              "--max_source_length", "48", "--max_target_length", "12", "--per_device_eval_batch_size", "32",
              "--eval_every_epoch", "false", "--save_steps", "0", "--logging_steps", "1", "--optimizer", "adamw",
              "--lr_scheduler_type", "constant", "--select_generation_presets", "greedy", "beam2"]
    budget = ["--max_train_steps", "4", "--eval_steps", "2", "--learning_rate", "1e-3",
              "--per_device_train_batch_size", "4", "--rl_from", str(tmp / "sup" / "best")]
    argvs = {"sup": ["--config_name", str(config), "--tokenizer_name", str(tiny_tokenizer_dir), "--max_train_steps",
                     "6", "--eval_steps", "3", "--eval_on_start", "true", "--learning_rate", "3e-3",
                     "--per_device_train_batch_size", "8"],
             "rl": [*budget, "--rl_num_samples", "2", "--rl_gamma", "0.9", "--rl_kl_coef", "0.1"],
             "control": [*budget, "--rl_control", "true"]}
    for name, argv in argvs.items():
        assert train_decoder.main([*argv, *common, "--output_dir", str(tmp / name)]) == 0, name
        reset_accelerate_state()
    assert predict.main(["--model_dir", str(tmp / "sup" / "best"), "--sweep", "greedy", "beam2", "beam4", "top_k10",
                         "top_p0.5", "sample_t0.7", "--reference", str(val), "--output_dir", str(tmp / "sweep"),
                         "--segmenter", "char", "--seed", "0", "--max_new_tokens", "8"]) == 0
    return tmp


def md_tables(text: str, heading: str) -> list[list[dict[str, str]]]:
    """The Markdown tables under ``heading`` (up to the next heading of the same or a higher level), as rows
    of {column header: cell}."""
    lines = text.splitlines()
    level = heading.split(" ")[0]
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i].split(" ")[0]) <= len(level)), len(lines))
    tables, current = [], []
    for line in lines[start + 1:end] + [""]:
        if line.startswith("|"):
            current.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            header, rows = current[0], current[2:]
            tables.append([dict(zip(header, row)) for row in rows])
            current = []
    return tables


def close(cell: str, value: float, decimals: int) -> bool:
    return abs(float(cell) - value) <= 0.51 * 10 ** -decimals


def metrics_rows(path: Path) -> list[dict]:
    return [r for r in read_jsonl(path / "metrics.jsonl")]


@pytest.fixture(scope="module")
def full_report(runs):
    out = runs / "report"
    assert report.main(["--run", str(runs / "sup"), "--rl_run", str(runs / "rl"), "--control_run",
                        str(runs / "control"), "--sweep", str(runs / "sweep"), "--reference", str(runs / "val.jsonl"),
                        "--output_dir", str(out), "--num_examples", "5", "--seed", "3"]) == 0
    return out, (out / "report.md").read_text(encoding="utf-8")


def test_report_writes_every_section_and_figure(full_report):
    out, text = full_report
    for section in ("Runs", "Learning curves", "Decoding strategies", "RL against supervised", "Sample titles",
                    "ROUGE by reference length"):
        assert f"## {section}" in text and f"](#{section.lower().replace(' ', '-')})" in text
    for png in ("learning_curves.png", "decoding_strategies.png", "rl_vs_supervised.png", "rouge_by_length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in text


def test_report_learning_curve_and_runs_tables_equal_the_runs_files(full_report, runs):
    _, text = full_report
    evals = [r for r in metrics_rows(runs / "sup") if "eval/rouge-1" in r]
    (table,) = md_tables(text, "## Learning curves")
    assert [int(r["step"]) for r in table] == [r["step"] for r in evals]
    for row, want in zip(table, evals):
        for key, header, decimals in report.EVAL_COLUMNS:
            assert close(row[header], want[key], decimals), (key, row, want)
    best_step = TitleConfig.load(runs / "sup" / "best").step
    assert [r[""] for r in table] == ["best" if r["step"] == best_step else "" for r in evals]

    (runs_table,) = md_tables(text, "## Runs")
    for row, name in zip(runs_table, ("sup", "rl", "control")):
        tc = TitleConfig.load(runs / name / "best")
        assert int(row["best step"]) == tc.step and row["decoding strategy"].startswith(tc.generation_preset + " (")
        for key, header, decimals in report.EVAL_COLUMNS:
            assert close(row[header], tc.metrics[key], decimals), (name, key)


def test_report_strategy_table_equals_the_sweep_and_marks_the_exports_choice(full_report, runs):
    _, text = full_report
    sweep_table, selection = md_tables(text, "## Decoding strategies")[:2]
    with open(runs / "sweep" / "sweep.csv", encoding="utf-8") as f:
        csv_rows = {r["preset"]: r for r in csv.DictReader(f)}
    assert {r["preset"] for r in sweep_table} == set(csv_rows)
    order = [r["strategy"] for r in sweep_table]
    assert order == sorted(order, key=report.FAMILIES.index)
    for row in sweep_table:
        want = csv_rows[row["preset"]]
        for header, key in (("ROUGE-1", "rouge-1"), ("ROUGE-2", "rouge-2"), ("ROUGE-L", "rouge-l"),
                            ("title chars", "mean_title_chars")):
            assert close(row[header], float(want[key]), 2)
        assert close(row["ROUGE-sum"], sum(float(want[k]) for k in ("rouge-1", "rouge-2", "rouge-l")), 2)
    chosen = TitleConfig.load(runs / "sup" / "best")
    assert [r["preset"] for r in sweep_table if r[""] == "**final choice**"] == [chosen.generation_preset]
    assert {r["preset"]: r["settings"] for r in sweep_table}["top_p0.5"] == "p=0.5"
    # training's selection on the same export, from title_config.json's preset_scores
    assert {r["preset"] for r in selection} == set(chosen.preset_scores)
    for row in selection:
        assert close(row["ROUGE-sum"], chosen.preset_scores[row["preset"]]["eval/rouge-sum"], 2)
        assert (row[""] == "**selected**") == (row["preset"] == chosen.generation_preset)


def test_report_rl_tables_equal_the_runs_files(full_report, runs):
    _, text = full_report
    setup, scores, stats = md_tables(text, "## RL against supervised")
    rl_args = json.loads((runs / "rl" / "args.json").read_text())
    control_args = json.loads((runs / "control" / "args.json").read_text())
    setup = {r["hyperparameter"]: r for r in setup}
    assert setup["rl_kl_coef"]["RL"] == str(rl_args["rl"]["rl_kl_coef"]) == "0.1"
    assert setup["rl_control"]["control"] == "True" and setup["learning_rate"]["RL"] == "0.001"
    assert setup["max_train_steps"]["RL"] == setup["max_train_steps"]["control"] == str(
        control_args["train"]["max_train_steps"])
    assert "Same budget" in text

    scores = {r["model"]: r for r in scores}
    rl_rows, control_rows = metrics_rows(runs / "rl"), metrics_rows(runs / "control")
    start = next(r for r in rl_rows if r["step"] == 0 and "eval/rouge-1" in r)
    last_control = [r for r in control_rows if "eval/rouge-1" in r][-1]
    expected = {"supervised start (RL step 0)": start, "control last": last_control,
                "RL best": TitleConfig.load(runs / "rl" / "best").metrics,
                "control best": TitleConfig.load(runs / "control" / "best").metrics}
    for model, want in expected.items():
        for key, header, decimals in report.EVAL_COLUMNS:
            assert close(scores[model][header], want[key], decimals), (model, key)
    assert scores["RL best"]["decoding"] == TitleConfig.load(runs / "rl" / "best").generation_preset

    train_rows = [r for r in rl_rows if "rl/kl" in r]
    stats = {r["statistic"]: r for r in stats}
    assert "rl/kl" in stats and train_rows  # logged with --rl_kl_coef > 0
    for key in ("train/loss", "rl/sample_reward", "rl/kl"):
        logged = [r for r in rl_rows if key in r]
        assert int(stats[key]["first step"]) == logged[0]["step"] and close(stats[key]["first"], logged[0][key], 4)
        assert int(stats[key]["last step"]) == logged[-1]["step"] and close(stats[key]["last"], logged[-1][key], 4)


def test_report_sample_titles_are_the_runs_predictions(full_report, runs):
    _, text = full_report
    (table,) = md_tables(text, "## Sample titles")
    refs = {r["id"]: r for r in read_jsonl(runs / "val.jsonl")}
    predictions = {label: {p["id"]: p["title"] for p in read_jsonl(runs / name / "best" / "eval_predictions.jsonl")}
                   for label, name in (("supervised", "sup"), ("RL", "rl"), ("control", "control"))}
    assert len(table) == 5 and len({r["id"] for r in table}) == 5
    order = list(refs)
    assert [order.index(r["id"]) for r in table] == sorted(order.index(r["id"]) for r in table)
    for row in table:
        assert row["reference"] == refs[row["id"]]["title"]
        assert refs[row["id"]]["maintext"].startswith(row["article (start)"].rstrip("…"))
        for label, titles in predictions.items():
            assert row[label] == titles[row["id"]]
    # the sample is seeded: another seed picks other articles, the same seed the same ones
    chosen = {r["id"] for r in table}
    out2 = runs / "report-seed"
    argv = ["--run", str(runs / "sup"), "--reference", str(runs / "val.jsonl"), "--num_examples", "5"]
    assert report.main([*argv, "--output_dir", str(out2), "--seed", "3"]) == 0
    (again,) = md_tables((out2 / "report.md").read_text(encoding="utf-8"), "## Sample titles")
    assert {r["id"] for r in again} == chosen
    assert report.main([*argv, "--output_dir", str(out2), "--seed", "4"]) == 0
    (other,) = md_tables((out2 / "report.md").read_text(encoding="utf-8"), "## Sample titles")
    assert {r["id"] for r in other} != chosen


def test_report_length_buckets_score_each_pair_and_add_up_to_the_exports_scores(full_report, runs):
    from tw_rouge import get_rouge

    _, text = full_report
    (table,) = md_tables(text, "## ROUGE by reference length")
    rows = {r["reference length (chars)"]: r for r in table}
    assert list(rows) == ["<=10", "11-15", "16-20", "21-30", ">30", "all"]
    refs = {r["id"]: r["title"] for r in read_jsonl(runs / "val.jsonl")}
    assert sum(int(rows[b]["articles"]) for b in list(rows)[:-1]) == int(rows["all"]["articles"]) == len(refs)
    for label, name in (("supervised", "sup"), ("RL", "rl"), ("control", "control")):
        tc = TitleConfig.load(runs / name / "best")
        for metric, short in (("rouge-1", "R-1"), ("rouge-2", "R-2"), ("rouge-l", "R-L")):
            # the mean over every pair is the export's own validation score (same titles, same segmenter)
            assert close(rows["all"][f"{label} {short}"], tc.metrics[f"eval/{metric}"], 2)
        preds = read_jsonl(runs / name / "best" / "eval_predictions.jsonl")
        bucket = [p for p in preds if 11 <= len(refs[p["id"]]) <= 15]
        if bucket:
            scores = get_rouge([p["title"] for p in bucket], [refs[p["id"]] for p in bucket], segmenter="char")
            assert close(rows["11-15"][f"{label} R-1"], 100 * scores["rouge-1"]["f"], 2)


def test_report_drops_the_sections_of_inputs_not_given_and_refuses_a_missing_one(runs, tmp_path, capsys,
                                                                                 monkeypatch):
    assert report.main(["--run", str(runs / "sup"), "--output_dir", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "## Learning curves" in text and "## Decoding strategies" in text  # training's selection is in best/
    for absent in ("## RL against supervised", "## Sample titles", "## ROUGE by reference length", "sweep.csv"):
        assert absent not in text
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "learning_curves.png"}
    assert report.main(["--run", str(runs / "sup"), "--sweep", str(tmp_path / "nope"),
                        "--output_dir", str(tmp_path / "r2")]) == 2
    assert "no sweep.csv" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    monkeypatch.setenv("TW_ROUGE_CKIP_DIR", str(tmp_path / "no-ckip"))
    assert report.main(["--run", str(runs / "sup"), "--reference", str(runs / "val.jsonl"), "--segmenter", "ckip",
                        "--output_dir", str(tmp_path / "r3")]) == 2
    assert "ckiptagger data not found" in capsys.readouterr().err and not (tmp_path / "r3").exists()
