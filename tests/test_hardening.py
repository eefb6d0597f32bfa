"""Faults found by trying to break the tools (the numbered findings of the hardening issue), each with a
test that failed before its fix: a used output directory, signals, special files, unwritable outputs,
empty inputs, small data, changed hyperparameters on resume, invalid values, metric fidelity with the
course's eval.py, TensorFlow's GPU memory, and the supply chain."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import predict
import train_decoder
from conftest import REPO, read_jsonl, read_rows, reset_accelerate_state, save_tiny_export, train_losses, write_jsonl
from export import TitleConfig, latest_checkpoint, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["--optimizer", "adamw", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
         "--per_device_train_batch_size", "4", "--logging_steps", "1", "--eval_max_new_tokens", "4"]


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("export")
    save_tiny_export(tiny_tokenizer, out)
    return out


def articles(tmp_path: Path, records, name="in.jsonl") -> Path:
    return write_jsonl(tmp_path / name, [{"id": r["id"], "maintext": r["maintext"]} for r in records])


# ------------------------------------------------------------------------------------- 1. used output dir

def test_a_used_output_dir_is_refused_and_left_intact(tiny_run, tmp_path, capsys):
    argv = tiny_run(n_train=12, n_eval=4, extra=TRAIN + ["--max_train_steps", "2", "--save_steps", "2"])
    assert train_decoder.main(argv) == 0
    out = tmp_path / "out"
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    reset_accelerate_state()
    capsys.readouterr()
    assert train_decoder.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} is not empty" in err and "--resume_from_checkpoint latest" in err
    assert "--overwrite_output_dir" in err
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_output_dir_starts_over(tiny_run, tmp_path):
    argv = tiny_run(n_train=12, n_eval=4, extra=TRAIN + ["--max_train_steps", "4", "--save_steps", "2"])
    assert train_decoder.main(argv) == 0
    out = tmp_path / "out"
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # not a run file: kept
    reset_accelerate_state()
    argv2 = tiny_run(n_train=12, n_eval=4, extra=TRAIN + ["--max_train_steps", "2", "--save_steps", "2",
                                                          "--overwrite_output_dir", "true"])
    assert train_decoder.main(argv2) == 0
    assert sorted(train_losses(out)) == [1, 2]  # only the new run's rows
    assert [p.name for p in list_checkpoints(out)] == ["step_2"]
    assert TitleConfig.load(out / "best").step == 2
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_pruning_never_deletes_the_checkpoint_just_written(tiny_run, tmp_path):
    """Resuming from an earlier checkpoint: the new checkpoints have lower steps than the abandoned run's,
    yet they are kept (pruning goes by the order of writing), and 'latest' is the last one written."""
    extra = TRAIN + ["--max_train_steps", "6", "--save_steps", "2", "--save_total_limit", "2"]
    assert train_decoder.main(tiny_run(n_train=12, n_eval=4, extra=extra)) == 0
    out = tmp_path / "out"
    assert [p.name for p in list_checkpoints(out)] == ["step_4", "step_6"]
    reset_accelerate_state()
    earlier = str(out / "checkpoints" / "step_4")
    argv = tiny_run(n_train=12, n_eval=4, extra=TRAIN + ["--max_train_steps", "5", "--save_steps", "1",
                                                         "--save_total_limit", "2",
                                                         "--resume_from_checkpoint", earlier])
    assert train_decoder.main(argv) == 0
    assert [p.name for p in list_checkpoints(out)] == ["step_6", "step_5"]  # the two written last
    assert latest_checkpoint(out).name == "step_5"
    assert json.loads((out / "checkpoints" / "step_5" / "training_state.json").read_text())["completed_steps"] == 5


def test_resume_keeps_a_better_exported_best_and_drops_rows_after_the_checkpoint(tiny_run, tmp_path):
    extra = TRAIN + ["--max_train_steps", "6", "--save_steps", "2", "--eval_steps", "3",
                     "--select_generation_presets", "none"]  # the selection would rescore best/ at the end
    argv = tiny_run(n_train=12, n_eval=4, extra=extra)
    assert train_decoder.main(argv, stop_after_steps=5) == 0  # an interruption at step 5: checkpoint 4
    out = tmp_path / "out"
    best = TitleConfig.load(out / "best")
    best.metrics["eval/rouge-sum"] = 999.0  # pretend the export after the checkpoint was excellent
    best.save(out / "best")
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 0
    assert TitleConfig.load(out / "best").metrics["eval/rouge-sum"] == 999.0  # not replaced by a worse model
    steps = [r["step"] for r in read_rows(out) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5 of the interrupted run was dropped, then logged again


# ------------------------------------------------------------------------------------------- 2. signals

def _train_sh(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["bash", str(REPO / "train.sh"), *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes_to_the_uninterrupted_curve(tiny_run, tmp_path):
    extra = TRAIN + ["--max_train_steps", "60", "--save_steps", "0"]
    full = tiny_run(n_train=24, n_eval=4, out="full", extra=extra, config_overrides={"dropout_rate": 0.1})
    assert _train_sh(full, tmp_path).wait(timeout=600) == 0
    expected = train_losses(tmp_path / "full")

    argv = tiny_run(n_train=24, n_eval=4, out="stopped", extra=extra, config_overrides={"dropout_rate": 0.1})
    proc = _train_sh(argv, tmp_path)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 8):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr and "--resume_from_checkpoint latest" in stderr
    assert _processes_mentioning(str(tmp_path / "stopped")) == []  # nothing left running
    stopped_at = latest_checkpoint(tmp_path / "stopped")
    assert stopped_at is not None and 8 <= int(stopped_at.name[5:]) < 60

    resume = _train_sh(argv + ["--resume_from_checkpoint", "latest"], tmp_path)
    assert resume.wait(timeout=600) == 0, resume.stderr.read()
    resumed = train_losses(tmp_path / "stopped")
    assert sorted(resumed) == list(range(1, 61))
    for step in range(1, 61):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_stop_signals_turn_the_first_signal_into_a_request():
    # a job started in the background by a non-interactive shell inherits SIGINT ignored: start from Python's own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with train_decoder.StopSignals() as stops:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the loop is asked to stop
        assert stops.received == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second Ctrl-C acts at once
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ------------------------------------------------------------------------ 3, 4, 5. outputs and their paths

def test_special_files_are_written_through_not_replaced(export, tmp_path, lcsts_val):
    inp = articles(tmp_path, lcsts_val[:3])
    assert predict.main(["--model_dir", str(export), "--input_file", str(inp), "--output_file", "/dev/null"]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)

    fifo = tmp_path / "titles.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text(encoding="utf-8")))
    reader.start()
    assert predict.main(["--model_dir", str(export), "--input_file", str(inp), "--output_file", str(fifo)]) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [json.loads(line)["id"] for line in received[0].splitlines()] == [r["id"] for r in lcsts_val[:3]]


def test_tw_rouge_per_example_never_overwrites_an_input_and_writes_through_stdout(tmp_path, lcsts_val):
    refs = write_jsonl(tmp_path / "ref.jsonl", [{"id": r["id"], "title": r["title"]} for r in lcsts_val[:5]])
    sub = write_jsonl(tmp_path / "sub.jsonl", [{"id": r["id"], "title": r["maintext"][:20]} for r in lcsts_val[:5]])
    before = refs.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tw_rouge", "-r", str(refs), "-s", str(sub), "--segmenter", "char"]
    proc = subprocess.run(cmd + ["--per-example", str(refs)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "refusing to overwrite the input file" in proc.stderr
    assert refs.read_bytes() == before
    proc = subprocess.run(cmd + ["--per-example", "/dev/stdout"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"id"')]
    assert [r["id"] for r in rows] == [r["id"] for r in lcsts_val[:5]]
    assert os.path.islink("/dev/stdout") or stat.S_ISCHR(os.stat("/dev/stdout").st_mode)


@pytest.mark.parametrize("output, message", [
    ("sub/", "is a directory"),
    ("a_file/out.jsonl", "is a file, not a directory"),
    ("/proc/self/out.jsonl", "cannot write in /proc/self"),
])
def test_an_unwritable_output_is_refused_before_the_model_loads(export, tmp_path, lcsts_val, monkeypatch,
                                                                capsys, output, message):
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    inp = articles(tmp_path, lcsts_val[:2])

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict.TitleEngine, "__init__", no_model)
    target = output if output.startswith("/") else str(tmp_path / output) + ("/" if output.endswith("/") else "")
    assert predict.main(["--model_dir", str(export), "--input_file", str(inp), "--output_file", target]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


# --------------------------------------------------------------------------------------- 6. empty inputs

def test_empty_and_blank_input_give_an_empty_output(export, tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\t\n")):
        inp = tmp_path / name
        inp.write_text(text, encoding="utf-8")
        out = tmp_path / f"out-{name}"
        proc = subprocess.run(["bash", str(REPO / "run.sh"), str(inp), str(out), str(export)], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert out.read_text(encoding="utf-8") == ""
        for backend in ("hf", "ct2"):
            out2 = tmp_path / f"{backend}-{name}"
            argv = ["--model_dir", str(export), "--input_file", str(inp), "--output_file", str(out2),
                    "--backend", backend, "--ct2_dir", str(tmp_path / "ct2")]
            assert predict.main(argv) == 0 and out2.read_text(encoding="utf-8") == ""


def test_the_ct2_generator_and_generate_titles_accept_no_texts(export, tiny_tokenizer, tmp_path):
    import ct2_backend
    from generation import generate_titles, resolve_generation_config
    from modeling import get_model

    config = resolve_generation_config(None, "beam4")
    assert generate_titles(get_model(str(export)), tiny_tokenizer, [], config) == []
    converted = ct2_backend.convert_export(export, "float32", output_dir=tmp_path / "ct2")
    assert ct2_backend.CT2TitleGenerator(converted, tiny_tokenizer).generate_titles([], config) == []


def test_empty_sweep_reference_and_validation_file_fail_clearly(export, tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert predict.main(["--model_dir", str(export), "--sweep", "greedy", "--reference", str(empty),
                         "--output_dir", str(tmp_path / "sweep"), "--segmenter", "char"]) == 2
    assert "no labelled articles" in capsys.readouterr().err
    argv = tiny_run(n_train=8, extra=TRAIN + ["--max_train_steps", "1"])
    argv[argv.index("--validation_file") + 1] = str(empty)
    assert train_decoder.main(argv) == 2
    assert f"{empty}: no validation pairs" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 7. small data from scratch

@pytest.mark.parametrize("n_texts, vocab, message", [
    (48, 4000, "--tokenizer_vocab_size 4000: a 4000-piece tokenizer cannot be built from 96 texts: they support "
               "at most"),
    (300, 1000, "--tokenizer_vocab_size 1000: a 1000-piece tokenizer cannot hold the"),
])
def test_tokenizer_size_errors_name_the_flag_and_the_bound(tmp_path, lcsts_train, capsys, n_texts, vocab, message):
    data = write_jsonl(tmp_path / "train.jsonl", lcsts_train[:n_texts])
    argv = ["--config_name", str(REPO / "configs" / "tiny-mt5.json"), "--tokenizer_vocab_size", str(vocab),
            "--train_file", str(data), "--validation_file", str(data), "--output_dir", str(tmp_path / "out"),
            "--segmenter", "char", "--max_train_steps", "1"]
    assert train_decoder.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -------------------------------------------------------------------------- 8. resume with other settings

def test_resume_applies_a_new_learning_rate_and_warns_about_a_new_batch_size(tiny_run, tmp_path, caplog):
    extra = TRAIN + ["--max_train_steps", "4", "--save_steps", "2"]
    assert train_decoder.main(tiny_run(n_train=12, n_eval=4, extra=extra), stop_after_steps=2) == 0
    reset_accelerate_state()
    resumed = [a if a != "1e-3" else "5e-4" for a in tiny_run(n_train=12, n_eval=4, extra=extra)]
    resumed[resumed.index("--per_device_train_batch_size") + 1] = "3"
    assert train_decoder.main(resumed + ["--resume_from_checkpoint", "latest"]) == 0
    lrs = {r["step"]: r["train/lr"] for r in read_rows(tmp_path / "out") if "train/lr" in r}
    assert lrs == {1: 1e-3, 2: 1e-3, 3: 5e-4, 4: 5e-4}
    assert "changed learning_rate: 0.001 -> 0.0005 (applied)" in caplog.text
    assert "changed per_device_train_batch_size: 4 -> 3" in caplog.text and "no longer reproduces" in caplog.text


def test_resume_refuses_another_optimizer_and_names_a_corrupt_checkpoint(tiny_run, tmp_path, capsys):
    extra = TRAIN + ["--max_train_steps", "6", "--save_steps", "2"]
    argv = tiny_run(n_train=12, n_eval=4, extra=extra)
    assert train_decoder.main(argv, stop_after_steps=4) == 0
    reset_accelerate_state()
    other = [a if a != "adamw" else "adafactor" for a in argv]
    assert train_decoder.main(other + ["--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err
    assert "optimizer: 'adamw' -> 'adafactor'" in err and "KeyError" not in err

    out = tmp_path / "out"
    weights = out / "checkpoints" / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a checkpoint cut short (disk full, killed copy)
    reset_accelerate_state()
    assert train_decoder.main(argv + ["--resume_from_checkpoint", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoints' / 'step_4'}: cannot load this checkpoint" in err
    assert f"--resume_from_checkpoint {out / 'checkpoints' / 'step_2'}" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- 9. invalid values

@pytest.mark.parametrize("flags, message", [
    (["--per_device_batch_size", "0"], "--per_device_batch_size must be positive, got 0"),
    (["--max_source_length", "0"], "--max_source_length must be positive, got 0"),
    (["--num_beam", "4"], "unknown option(s) --num_beam"),
])
def test_predict_refuses_invalid_values(export, tmp_path, lcsts_val, capsys, flags, message):
    inp = articles(tmp_path, lcsts_val[:2])
    code = predict.main(["--model_dir", str(export), "--input_file", str(inp), "--output_file",
                         str(tmp_path / "o.jsonl"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "inf"], "--learning_rate must be a finite number"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number"),
])
def test_training_refuses_non_finite_values(tiny_run, capsys, flags, message):
    assert train_decoder.main(tiny_run(n_train=4) + flags) == 2
    assert message in capsys.readouterr().err


def test_a_non_finite_loss_stops_training_before_anything_is_saved(tiny_run, tmp_path, capsys):
    def nan_from_third_step(args, tokenizer):
        model = train_decoder.get_model_for_run(args, tokenizer)
        calls = [0]

        def poison(module, inputs, output):
            if module.training:
                calls[0] += 1
                return output * float("nan") if calls[0] >= 3 else output

        model.lm_head.register_forward_hook(poison)
        return model

    argv = tiny_run(n_train=12, n_eval=4, extra=[*TRAIN, "--max_train_steps", "6", "--save_steps", "1",
                                                 "--logging_steps", "10"])
    code = train_decoder.main(argv, factories=train_decoder.Factories(model=nan_from_third_step))
    err = capsys.readouterr().err
    assert code == 1 and "the training loss became inf or NaN at optimizer step 3" in err
    out = tmp_path / "out"
    assert [p.name for p in list_checkpoints(out)] == ["step_1", "step_2"]  # no NaN weights checkpointed
    assert not (out / "best").exists()


# --------------------------------------------------------------------------------------- 10. smaller ones

def test_lone_surrogates_are_refused_with_the_line(tmp_path):
    from data_io import DataError
    from data_io import read_jsonl as read

    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "maintext": "ok", "title": "t"}\n{"id": 2, "maintext": "bad \\ud800", "title": "t"}\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"in.jsonl:2: field 'maintext' holds an unpaired surrogate"):
        read(path)


@pytest.mark.parametrize("case, content, message", [
    ("bom", None, None),
    ("list id", '{"id": ["x"], "title": "a"}\n', "field 'id' must be a string or integer"),
    ("empty reference", "", "no reference titles"),
])
def test_tw_rouge_cli_bad_references(tmp_path, case, content, message):
    sub = write_jsonl(tmp_path / "sub.jsonl", [{"id": "a", "title": "台北下雨"}])
    ref = tmp_path / "ref.jsonl"
    if case == "bom":
        ref.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "title": "台北下雨"}, ensure_ascii=False).encode())
    else:
        ref.write_text(content, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "tw_rouge", "-r", str(ref), "-s", str(sub), "--segmenter", "char"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in proc.stderr
    if message is None:
        assert proc.returncode == 0 and json.loads(proc.stdout)["rouge-1"]["f"] == pytest.approx(1.0, abs=1e-6)
    else:
        assert proc.returncode == 2 and message in proc.stderr


def test_tw_rouge_cli_unknown_segmenter_in_the_environment(tmp_path):
    sub = write_jsonl(tmp_path / "sub.jsonl", [{"id": "a", "title": "台北"}])
    proc = subprocess.run([sys.executable, "-m", "tw_rouge", "-r", str(sub), "-s", str(sub)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO), "TW_ROUGE_SEGMENTER": "bert"})
    assert proc.returncode == 2 and "unknown segmenter 'bert'" in proc.stderr and "Traceback" not in proc.stderr


def test_titles_of_thousands_of_words_score_without_recursion_error():
    from rouge import Rouge

    from tw_rouge import get_rouge

    words = [f"w{i % 97}" for i in range(1500)]
    pred, ref = "".join(words), "".join(reversed(words))
    scores = get_rouge(pred, ref, segmenter="char")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        expected = Rouge().get_scores(" ".join(pred), " ".join(ref))[0]
    finally:
        sys.setrecursionlimit(limit)
    assert scores == expected and sys.getrecursionlimit() == limit


def test_run_sh_takes_an_input_named_like_an_option(export, tmp_path, lcsts_val):
    articles(tmp_path, lcsts_val[:2], name="-in.jsonl")
    proc = subprocess.run(["bash", str(REPO / "run.sh"), "-in.jsonl", "-out.jsonl", str(export)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_jsonl(tmp_path / "-out.jsonl")] == [r["id"] for r in lcsts_val[:2]]


def test_figures_get_the_usual_file_mode(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plotting import save_figure_atomic

    old = os.umask(0o022)
    try:
        save_figure_atomic(plt.figure(), tmp_path / "curve.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "curve.png").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------ 11. metric fidelity

class StandInWS:
    """ckiptagger's WS without its 2 GB model: one token per character, whitespace (the newline eval.py
    appends) included, as ckiptagger keeps every character."""

    def __call__(self, sentences):
        return [list(s) for s in sentences]


def course_eval(reference: Path, submission: Path, ws) -> dict:
    """The course's eval.py with its tw_rouge.get_rouge, line by line (ws = ckiptagger's WS)."""
    from rouge import Rouge

    refs, preds = {}, {}
    with open(reference) as file:
        for line in file:
            line = json.loads(line)
            refs[line["id"]] = line["title"].strip() + "\n"
    with open(submission) as file:
        for line in file:
            line = json.loads(line)
            preds[line["id"]] = line["title"].strip() + "\n"
    keys = refs.keys()
    refs = [refs[key] for key in keys]
    preds = [preds[key] for key in keys]
    preds, refs = [" ".join(toks) for toks in ws(preds)], [" ".join(toks) for toks in ws(refs)]
    return Rouge().get_scores(preds, refs, avg=True, ignore_empty=False)


def test_the_cli_gives_the_course_eval_numbers_on_titles_ending_with_a_period(tmp_path, lcsts_val):
    from tw_rouge import CkipSegmenter, get_rouge
    from tw_rouge.__main__ import evaluate

    class StandInCkip(CkipSegmenter):
        def check_data(self):
            pass

        def _load(self):
            self._ws = StandInWS()

    titles = [("a", "台北今天下雨.", "台北下雨."), ("b", "Apple. Inc.", "Apple Inc."), ("c", "", "空白."),
              ("d", " 前後空白 ", "前後空白"), ("e", "台北。", "台北.")]
    titles += [(r["id"], r["maintext"][:20], r["title"]) for r in lcsts_val[:40]]
    ref = write_jsonl(tmp_path / "ref.jsonl", [{"id": i, "title": t} for i, _, t in titles])
    sub = write_jsonl(tmp_path / "sub.jsonl", [{"id": i, "title": p} for i, p, _ in titles])
    ours = evaluate(str(ref), str(sub), StandInCkip(tmp_path), None)
    assert ours == course_eval(ref, sub, StandInWS())  # exact
    # the API keeps the course package's own behaviour (no appended newline), which differs here
    assert get_rouge([p for _, p, _ in titles], [t for _, _, t in titles], segmenter=StandInCkip(tmp_path)) != ours


# ------------------------------------------------------------------------------ 12. TensorFlow GPU memory

def test_ckip_ws_is_built_with_gpu_memory_growth(tmp_path, monkeypatch):
    import types

    from tw_rouge import CkipSegmenter
    from tw_rouge.segment import CKIP_REQUIRED_FILES

    for name in CKIP_REQUIRED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"") if "." in name else (tmp_path / name).mkdir(exist_ok=True)
    seen = {}

    class RecordingWS:
        def __init__(self, data_dir, disable_cuda=True):
            seen["growth"] = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")

        def __call__(self, sentences):
            return [list(s) for s in sentences]

    monkeypatch.setitem(sys.modules, "ckiptagger", types.SimpleNamespace(WS=RecordingWS))
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    assert CkipSegmenter(tmp_path).segment(["台北"]) == [["台", "北"]]
    assert seen == {"growth": "true"}


# ------------------------------------------------------------------------------------- 13. supply chain

def test_every_dependency_is_pinned():
    def pins(name):
        lines = (REPO / name).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]

    for line in pins("requirements.txt") + pins("constraints.txt"):
        assert "==" in line and not any(c in line for c in "<>~*"), line
    constrained = {line.split("==")[0].lower().replace("_", "-") for line in pins("constraints.txt")}
    for line in pins("requirements.txt"):
        assert line.split("==")[0].lower().replace("_", "-") in constrained, line
    assert "constraints.txt" in (REPO / "scripts" / "ensure_venv.sh").read_text(encoding="utf-8")


def test_jieba_caches_its_dictionary_in_the_user_cache_dir(tmp_path):
    code = ("import tempfile, tw_rouge; tw_rouge.get_rouge('台北今天下雨', '台北下雨', segmenter='jieba'); "
            "import jieba; print(jieba.dt.tmp_dir)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    cache_dir = tmp_path / "tw_rouge" / "jieba"
    assert proc.stdout.strip() == str(cache_dir) and list(cache_dir.glob("jieba*.cache"))
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700


def _ckip_zip(path: Path, complete: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/embedding_character/token_list.npy", b"tokens")
        z.writestr("data/embedding_character/vector_list.npy", b"vectors" * 1000)
        if complete:
            z.writestr("data/model_ws/model.index", b"index")
    return path


@pytest.mark.parametrize("case", ["good", "good with checksum", "wrong checksum", "truncated", "incomplete"])
def test_ckip_download_is_verified_before_it_is_installed(tmp_path, monkeypatch, case):
    import hashlib

    import tw_rouge.__main__ as cli

    archive = _ckip_zip(tmp_path / "data.zip", complete=case != "incomplete")
    if case == "truncated":
        archive.write_bytes(archive.read_bytes()[:-200])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cli, "fetch_archive", lambda target: (target.write_bytes(archive.read_bytes()), "test")[1])
    data_dir = tmp_path / "cache" / "data"
    expected = {"good with checksum": digest, "wrong checksum": "0" * 64}.get(case)
    if case.startswith("good"):
        cli.download(data_dir, expected)
        assert (data_dir / "model_ws" / "model.index").read_bytes() == b"index"
    else:
        with pytest.raises(RuntimeError, match={"wrong checksum": "checksum mismatch", "truncated": "zip",
                                                "incomplete": "lacks model_ws"}[case]):
            cli.download(data_dir, expected)
        assert not data_dir.exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == (["data"] if case.startswith("good") else [])
