"""Bad inputs to ``evaluate``, ``listening-test make``, ``listening-test score`` and ``demo``: one line, exit 2, nothing
written (tests/support/bad_input.py). ``{in}`` is a module-wide folder of valid and broken inputs (it must not
change either), ``{tmp}`` the test's own folder. Also: a second writer on any of their output folders (and on
``demo``'s) is refused, naming the pid that holds the lock."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from safetensors.numpy import save_file
from support.bad_input import Case, check, snapshot
from support.eval_dataset import make_eval_dataset, pipeline_refs
from support.tiny_pipeline import tiny_pipeline_dir  # noqa: F401  (fixture)
from test_listening import make_system, write_answers

from clipsonic.cli import main
from clipsonic.listening import make_listening_test, read_key

EVAL = ("evaluate", "--model", "{in}/pipeline", "--data", "{in}/data", "--out", "{tmp}/r", "--embedder", "mel-stats",
        "--steps", "1", "--device", "cpu")


def _eval(*extra: str, model: str = "{in}/pipeline", data: str = "{in}/data") -> tuple[str, ...]:
    argv = list(EVAL)
    argv[2], argv[4] = model, data
    return (*argv, *extra)


def _make(*systems: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("listening-test", "make", "--systems", *systems, "--out", "{tmp}/lt", *extra)


GOOD = ("A={in}/sys/a", "B={in}/sys/b")


def _score(*answers: str, test: str = "{in}/lt", extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("listening-test", "score", *answers, *(("--test", test) if test else ()), "--out", "{tmp}/mos", *extra)


CASES = [
    # evaluate: the model, the dataset, the output folder
    Case("evaluate-model-missing", _eval(model="{in}/nope"), r"nope is not a clipsonic pipeline"),
    Case("evaluate-model-is-a-file", _eval(model="{in}/text.txt"), r"text\.txt is not a clipsonic pipeline"),
    Case("evaluate-model-is-a-dataset", _eval(model="{in}/data"), r"data is not a clipsonic pipeline directory"),
    Case("evaluate-model-index-corrupt", _eval(model="{in}/broken_pipeline"), r"model_index\.json"),
    Case("evaluate-data-missing", _eval(data="{in}/nope"), r"nope is not a clipsonic dataset"),
    Case("evaluate-data-is-a-file", _eval(data="{in}/text.txt"), r"not a clipsonic dataset"),
    Case("evaluate-data-is-a-pipeline", _eval(data="{in}/pipeline"), r"not a clipsonic dataset"),
    Case("evaluate-dataset-json-truncated", _eval(data="{in}/ds_truncated"), r"dataset\.json: not a readable"),
    Case("evaluate-dataset-json-not-utf8", _eval(data="{in}/ds_latin1"), r"dataset\.json: not a readable"),
    Case("evaluate-dataset-json-a-list", _eval(data="{in}/ds_list"), r"dataset\.json: not a clipsonic-dataset"),
    Case("evaluate-dataset-json-deep", _eval(data="{in}/ds_deep"), r"nested too deeply"),
    Case("evaluate-no-test-split", _eval(data="{in}/trainonly"), r"no 'test' split \(has \['train'\]\)"),
    Case("evaluate-unknown-split", _eval("--split", "valid"), r"no 'valid' split"),
    Case("evaluate-no-stored-audio", _eval(data="{in}/noaudio"), r"--keep-audio"),
    Case("evaluate-other-mel-config", _eval(data="{in}/othermel"), r"different mel config"),
    Case("evaluate-shard-missing", _eval(data="{in}/noshard"), r"test-000000\.tar"),
    Case("evaluate-shard-truncated", _eval(data="{in}/cutshard"), r"test-000000\.tar"),
    Case("evaluate-out-is-a-file", _eval()[:6] + ("{in}/text.txt",) + _eval()[7:], r"text\.txt is a file"),
    # evaluate: option values (checked by EvalConfig's annotations)
    Case("evaluate-num-clips-1", _eval("--num-clips", "1"), r"num_clips must be >= 2, got 1"),
    Case("evaluate-num-clips-negative", _eval("--num-clips", "-4"), r"num_clips must be >= 2"),
    Case("evaluate-num-clips-not-int", _eval("--num-clips", "two"), r"--num-clips"),
    Case("evaluate-batch-size-0", _eval("--batch-size", "0"), r"batch_size must be >= 1"),
    Case("evaluate-steps-0", _eval("--steps", "0"), r"steps must be >= 1"),
    Case("evaluate-steps-beyond-schedule", _eval("--steps", "100000"), r"--steps must be in 1\.\.1000"),
    Case("evaluate-guidance-nan", _eval("--guidance-scale", "nan"), r"guidance_scale must be a finite number"),
    Case("evaluate-guidance-inf", _eval("--guidance-scale", "inf"), r"guidance_scale must be a finite number"),
    Case("evaluate-guidance-negative", _eval("--guidance-scale", "-1"), r"guidance_scale must be >= 0"),
    Case("evaluate-sweep-nan", _eval("--sweep", "0,nan"), r"sweep must be a finite number"),
    Case("evaluate-sweep-negative", _eval("--sweep", "0,-2"), r"sweep must be >= 0"),
    Case("evaluate-sweep-not-numbers", _eval("--sweep", "0,loud"), r"--sweep"),
    Case("evaluate-seed-negative", _eval("--seed", "-1"), r"seed must be in \[0, "),
    Case("evaluate-seed-beyond-64-bits", _eval("--seed", str(2**70)), r"seed must be in \[0, "),
    Case("evaluate-unknown-mode", _eval("--modes", "iq,xyz"), r"unknown mode"),
    Case("evaluate-unknown-embedder", _eval("--embedder", "mfcc"), r"--embedder"),
    Case("evaluate-unknown-sampler", _eval("--sampler", "euler-magic"), r"unknown sampler 'euler-magic'"),
    Case("evaluate-unknown-classifier", _eval("--classifier", "oracle9"), r"unknown classifier 'oracle9'"),
    Case("evaluate-device-potato", _eval("--device", "potato"), r"'potato' is not a torch device"),
    Case("evaluate-template-without-label", _eval("--text-template", "a sound"), r"text_template .* \{label\}"),
    Case("evaluate-template-other-field", _eval("--text-template", "{label} {x}"), r"text_template"),
    Case("evaluate-template-lone-brace", _eval("--clap-template", "{label} {"), r"clap_template"),
    # evaluate: captions
    Case("evaluate-captions-missing", _eval("--captions", "{in}/nope.json"), r"nope\.json: no such file"),
    Case("evaluate-captions-not-utf8", _eval("--captions", "{in}/latin1.json"), r"latin1\.json: not a readable"),
    Case("evaluate-captions-a-list", _eval("--captions", "{in}/list.json"), r"holds a JSON list"),
    Case("evaluate-captions-empty-list", _eval("--captions", "{in}/caps_empty.json"), r"label 'red'"),
    Case("evaluate-captions-not-strings", _eval("--captions", "{in}/caps_numbers.json"), r"label 'red'"),
    Case("evaluate-captions-a-folder", _eval("--captions", "{in}/sys"), r"sys: not a readable captions file"),
    # evaluate: embedder weights
    Case("evaluate-vggish-weights-missing", _eval("--embedder", "vggish", "--embedder-weights", "{in}/nope.st"),
         r"nope\.st does not exist"),
    Case("evaluate-vggish-weights-truncated", _eval("--embedder", "vggish", "--embedder-weights", "{in}/cut.safetensors"),
         r"cut\.safetensors"),
    Case("evaluate-vggish-weights-garbage", _eval("--embedder", "vggish", "--embedder-weights",
                                                  "{in}/garbage.safetensors"), r"garbage\.safetensors"),
    Case("evaluate-vggish-weights-of-another-net", _eval("--embedder", "vggish", "--embedder-weights",
                                                         "{in}/other.safetensors"), r"other\.safetensors is not a VGGish"),
    Case("evaluate-vggish-weights-a-pickle", _eval("--embedder", "vggish", "--embedder-weights", "{in}/text.txt"),
         r"text\.txt could not be read"),
    Case("evaluate-panns-weights-truncated", _eval("--embedder", "panns", "--embedder-weights",
                                                   "{in}/panns_cut.safetensors"), r"panns_cut\.safetensors"),
    Case("evaluate-mel-stats-with-weights", _eval("--embedder-weights", "{in}/cut.safetensors"), r"needs no weights"),
    Case("evaluate-weights-folder-without-file", _eval("--embedder", "panns", "--embedder-weights", "{in}/sys"),
         r"does not exist"),

    # listening-test make: systems
    Case("listening-test-make-no-equals", _make("{in}/sys/a"), r"NAME=DIR"),
    Case("listening-test-make-empty-name", _make("={in}/sys/a"), r"NAME=DIR"),
    Case("listening-test-make-duplicate-names", _make("A={in}/sys/a", "A={in}/sys/b"), r"distinct NAME=DIR"),
    Case("listening-test-make-system-missing", _make("A={in}/nope"), r"nope is not a folder"),
    Case("listening-test-make-system-is-a-file", _make("A={in}/text.txt"), r"text\.txt is not a folder"),
    Case("listening-test-make-system-empty", _make("A={in}/empty"), r"no audio in"),
    Case("listening-test-make-no-query-file", _make("A={in}/bare"), r"no query for q\.wav"),
    Case("listening-test-make-no-shared-item", _make(GOOD[0], "Z={in}/sys/other"), r"share no item"),
    # listening-test make: manifests and files that try to leave their folder
    Case("listening-test-make-absolute-path", _make("A={in}/esc/absolute"), r"'/etc/passwd' is not a plain relative"),
    Case("listening-test-make-dotdot-path", _make("A={in}/esc/dotdot"), r"leads outside"),
    Case("listening-test-make-symlink-out", _make("A={in}/esc/symlink"), r"leads outside"),
    Case("listening-test-make-sidecar-symlink-out", _make("A={in}/esc/sidecar"), r"leads outside"),
    Case("listening-test-make-query-symlink-out", _make("A={in}/esc/query"), r"query file 'a\.txt' leads outside"),
    Case("listening-test-make-control-char", _make("A={in}/esc/newline"), r"not a plain relative path"),
    Case("listening-test-make-not-audio", _make("A={in}/esc/notaudio"), r"notes\.txt is not an audio file"),
    Case("listening-test-make-file-is-folder", _make("A={in}/esc/folder"), r"is not an audio file"),
    Case("listening-test-make-file-missing", _make("A={in}/esc/missing"), r"gone\.wav is not an audio file"),
    Case("listening-test-make-manifest-not-utf8", _make("A={in}/esc/latin1"), r"manifest\.jsonl: not UTF-8"),
    Case("listening-test-make-sidecar-not-utf8", _make("A={in}/esc/latin1txt"), r"a\.txt: not UTF-8"),
    Case("listening-test-make-manifest-bad-json", _make("A={in}/esc/badjson"), r"manifest\.jsonl:2: need"),
    Case("listening-test-make-manifest-deep-json", _make("A={in}/esc/deep"), r"manifest\.jsonl:1: need"),
    Case("listening-test-make-manifest-missing-key", _make("A={in}/esc/nokey"), r"manifest\.jsonl:1: need"),
    Case("listening-test-make-manifest-line-a-list", _make("A={in}/esc/list"), r"manifest\.jsonl:1: need"),
    Case("listening-test-make-manifest-number-file", _make("A={in}/esc/number"), r"must be strings"),
    Case("listening-test-make-manifest-empty", _make("A={in}/esc/emptymanifest"), r"no audio in"),
    Case("listening-test-make-duplicate-item", _make("A={in}/esc/dupitem"), r"item 'a1' appears twice"),
    # listening-test make: options and the output folder
    Case("listening-test-make-items-0", _make(*GOOD, extra=("--items", "0")), r"--items must be at least 1"),
    Case("listening-test-make-items-negative", _make(*GOOD, extra=("--items", "-2")), r"--items must be at least 1"),
    Case("listening-test-make-items-not-int", _make(*GOOD, extra=("--items", "many")), r"--items"),
    Case("listening-test-make-seed-not-int", _make(*GOOD, extra=("--seed", "1.5")), r"--seed"),
    Case("listening-test-make-out-is-a-file", _make(*GOOD)[:-1] + ("{in}/text.txt",), r"text\.txt is a file"),
    Case("listening-test-make-existing-test", _make(*GOOD)[:-1] + ("{in}/lt",), r"already holds a listening test"),
    Case("listening-test-make-page-not-empty", _make(*GOOD)[:-1] + ("{in}/pageonly",), r"--overwrite"),

    # listening-test score: answers files
    Case("listening-test-score-answers-missing", _score("{in}/nope.csv"), r"nope\.csv not found"),
    Case("listening-test-score-answers-a-folder", _score("{in}/sys"), r"sys is a folder"),
    Case("listening-test-score-answers-not-utf8", _score("{in}/ans/latin1.csv"), r"latin1\.csv: not UTF-8"),
    Case("listening-test-score-answers-empty", _score("{in}/ans/empty.csv"), r"empty\.csv holds no answers"),
    Case("listening-test-score-answers-header-only", _score("{in}/ans/header.csv"), r"header\.csv holds no answers"),
    Case("listening-test-score-answers-other-columns", _score("{in}/ans/other.csv"), r"missing columns"),
    Case("listening-test-score-answers-short-row", _score("{in}/ans/short.csv"), r"short\.csv:2: the row has fewer"),
    Case("listening-test-score-answers-huge-field", _score("{in}/ans/huge.csv"), r"huge\.csv is not a CSV file"),
    Case("listening-test-score-answers-other-test", _score("{in}/ans/foreign.csv"), r"not to test"),
    Case("listening-test-score-answers-unknown-trial", _score("{in}/ans/trial.csv"), r"trial 't999' is not in test"),
    Case("listening-test-score-answers-twice", _score("{in}/ans/ok.csv", "{in}/ans/ok.csv"), r"in both"),
    Case("listening-test-score-rating-6", _score("{in}/ans/six.csv"), r"fidelity rating '6' is not 1–5"),
    Case("listening-test-score-rating-nan", _score("{in}/ans/nan.csv"), r"rating 'nan' is not 1–5"),
    Case("listening-test-score-rating-word", _score("{in}/ans/word.csv"), r"rating 'good' is not 1–5"),
    # listening-test score: the key and the output folder
    Case("listening-test-score-no-key-found", _score("{in}/ans/ok.csv", test=""), r"no key\.json beside or above"),
    Case("listening-test-score-test-without-key", _score("{in}/ans/ok.csv", test="{in}/sys"), r"key\.json: no such"),
    Case("listening-test-score-key-truncated", _score("{in}/ans/ok.csv", test="{in}/keys/cut"), r"not a readable"),
    Case("listening-test-score-key-not-utf8", _score("{in}/ans/ok.csv", test="{in}/keys/latin1"), r"not a readable"),
    Case("listening-test-score-key-other-format", _score("{in}/ans/ok.csv", test="{in}/keys/format"),
         r"not a clipsonic-listening-key file"),
    Case("listening-test-score-key-version-2", _score("{in}/ans/ok.csv", test="{in}/keys/v2"), r"version 2"),
    Case("listening-test-score-key-trials-a-list", _score("{in}/ans/ok.csv", test="{in}/keys/trials"),
         r"damaged listening-test key"),
    Case("listening-test-score-key-unknown-system", _score("{in}/ans/ok.csv", test="{in}/keys/system"),
         r"damaged listening-test key"),
    Case("listening-test-score-out-is-a-file", _score("{in}/ans/ok.csv")[:-1] + ("{in}/text.txt",),
         r"text\.txt is a file"),
    # demo: only its output folder comes from the user (its settings are the preset's)
    Case("demo-out-is-a-file", ("demo", "--fast", "--out", "{in}/text.txt"), r"text\.txt is a file; demo writes"),
    Case("demo-out-under-a-file", ("demo", "--fast", "--out", "{in}/text.txt/d"), r"text\.txt is a file; demo writes"),
    Case("demo-out-is-a-dataset", ("demo", "--fast", "--out", "{in}/data"), r"data exists and is not a demo folder"),
    Case("demo-out-is-a-pipeline", ("demo", "--out", "{in}/pipeline"), r"pipeline exists and is not a demo folder"),
    Case("demo-unknown-flag", ("demo", "--faster"), r"unrecognized arguments: --faster"),
]


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(800, np.float32), 16000)
    return path


def _manifest(folder: Path, *lines: str | dict, raw: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (folder / "manifest.jsonl").write_bytes(raw if raw is not None else text.encode())


def _escapes(root: Path, outside: Path) -> None:
    """System folders whose manifest or files lead outside them, or are otherwise broken."""
    item = {"item": "a1", "query": "q"}
    _manifest(root / "absolute", {**item, "file": "/etc/passwd"})
    _wav(root / "dotdot" / "x.wav")
    _manifest(root / "dotdot", {**item, "file": "../../sys/a/a1.wav"})
    _manifest(root / "symlink", {**item, "file": "link.wav"})
    (root / "symlink" / "link.wav").symlink_to(outside)
    (root / "sidecar").mkdir()
    (root / "sidecar" / "a.wav").symlink_to(outside)
    (root / "sidecar" / "a.txt").write_text("q")
    _wav(root / "query" / "a.wav")
    (root / "query" / "a.txt").symlink_to(root.parent / "secret.txt")
    _manifest(root / "newline", {**item, "file": "a\n.wav"})
    _wav(root / "notaudio" / "x.wav")
    (root / "notaudio" / "notes.txt").write_text("x")
    _manifest(root / "notaudio", {**item, "file": "notes.txt"})
    (root / "folder" / "d.wav").mkdir(parents=True)
    _manifest(root / "folder", {**item, "file": "d.wav"})
    _manifest(root / "missing", {**item, "file": "gone.wav"})
    _wav(root / "latin1" / "a1.wav")
    _manifest(root / "latin1", raw=json.dumps({**item, "query": "café", "file": "a1.wav"}).replace(
        "\\u00e9", "\xe9").encode("latin-1"))
    _wav(root / "latin1txt" / "a.wav")
    (root / "latin1txt" / "a.txt").write_bytes("café".encode("latin-1"))
    _wav(root / "badjson" / "a1.wav")
    _manifest(root / "badjson", {**item, "file": "a1.wav"}, '{"item": "b", "file": ')
    _manifest(root / "deep", "[" * 100_000)
    _manifest(root / "nokey", {"item": "a1", "file": "a1.wav"})
    _manifest(root / "list", '["a1.wav", "a1", "q"]')
    _manifest(root / "number", {**item, "file": 3})
    _manifest(root / "emptymanifest")
    _wav(root / "dupitem" / "a1.wav")
    _manifest(root / "dupitem", {**item, "file": "a1.wav"}, {**item, "file": "a1.wav"})


def _datasets(inputs: Path, pipeline: Path) -> None:
    mel, clip = pipeline_refs(pipeline)
    make_eval_dataset(inputs / "data", mel, clip, test_clips=2, n_classes=2, label_names=("red", "green"))
    make_eval_dataset(inputs / "trainonly", mel, clip, test_clips=0, train_clips=2)
    make_eval_dataset(inputs / "noaudio", mel, clip, test_clips=2, audio=False)
    make_eval_dataset(inputs / "othermel", mel.replace(n_mels=80), clip, test_clips=2)
    for name, text in (("ds_truncated", b'{"format": "clipsonic-dataset", "ver'), ("ds_list", b"[]"),
                       ("ds_latin1", '{"format": "caf\xe9"}'.encode("latin-1")), ("ds_deep", b"[" * 100_000)):
        (inputs / name).mkdir()
        (inputs / name / "dataset.json").write_bytes(text)
    for name in ("noshard", "cutshard"):
        shutil.copytree(inputs / "data", inputs / name)
    shard = next((inputs / "data").glob("test-*.tar"))
    (inputs / "noshard" / shard.name).unlink()
    (inputs / "cutshard" / shard.name).write_bytes(shard.read_bytes()[:3000])
    shutil.copytree(pipeline, inputs / "pipeline")
    shutil.copytree(pipeline, inputs / "broken_pipeline")
    (inputs / "broken_pipeline" / "model_index.json").write_text('{"_class_name": ')


def _weights(inputs: Path) -> None:
    save_file({"features.0.weight": np.zeros((64, 1, 3, 3), np.float32)}, inputs / "vggish_part.safetensors")
    data = (inputs / "vggish_part.safetensors").read_bytes()
    (inputs / "cut.safetensors").write_bytes(data[:len(data) // 2])
    (inputs / "garbage.safetensors").write_bytes(os.urandom(4096))
    save_file({"something.else": np.zeros(3, np.float32)}, inputs / "other.safetensors")
    (inputs / "panns_cut.safetensors").write_bytes(data[:len(data) - 10])


def _answers(inputs: Path) -> None:
    key = read_key(inputs / "lt")
    ans = inputs / "ans"
    ans.mkdir()
    ok = write_answers(ans / "ok.csv", key, "ann", {"A": [(4, 5)], "B": [(3, 3)]})
    header, first = ok.read_text().splitlines()[:2]
    write_answers(ans / "foreign.csv", key, "eve", {"A": [(4, 4)]}, test_id="0123456789ab")
    for name, rating in (("six", 6), ("nan", "nan"), ("word", "good")):
        write_answers(ans / f"{name}.csv", key, "ann", {"A": [(rating, 3) if name == "six" else (3, rating)]})
    (ans / "latin1.csv").write_bytes(ok.read_text().replace("ann", "ann\xe9").encode("latin-1"))
    (ans / "empty.csv").write_bytes(b"")
    (ans / "header.csv").write_text(header + "\n")
    (ans / "other.csv").write_text("x,y\n1,2\n")
    (ans / "short.csv").write_text(f"{header}\n{first.rsplit(',', 4)[0]}\n")
    (ans / "huge.csv").write_text(f'{header}\n"{"x" * 200_000}",a\n')
    fields = first.split(",")
    (ans / "trial.csv").write_text(f"{header}\n{','.join(fields[:2] + ['t999'] + fields[3:])}\n")
    good = json.loads((inputs / "lt" / "key.json").read_text())
    damaged = {"cut": '{"format": "clipsonic-listening-key", "ver', "latin1": None,
               "format": json.dumps({**good, "format": "something"}), "v2": json.dumps({**good, "version": 2}),
               "trials": json.dumps({**good, "trials": []}),
               "system": json.dumps({**good, "trials": {"t000": {"system": "C", "item": "a1", "query": "q"}}})}
    for name, text in damaged.items():
        (inputs / "keys" / name).mkdir(parents=True)
        payload = text.encode() if text is not None else json.dumps({**good, "title": "caf\xe9"},
                                                                     ensure_ascii=False).encode("latin-1")
        (inputs / "keys" / name / "key.json").write_bytes(payload)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_pipeline_dir) -> Path:  # noqa: F811
    inputs = tmp_path_factory.mktemp("bad_eval_inputs")
    (inputs / "text.txt").write_text("not what it should be\n")
    (inputs / "secret.txt").write_text("outside the system folder\n")
    for name, text in (("latin1.json", '{"red": ["caf\xe9"]}'.encode("latin-1")), ("list.json", b'["red"]'),
                       ("caps_empty.json", b'{"red": []}'), ("caps_numbers.json", b'{"red": [1, 2]}')):
        (inputs / name).write_bytes(text)
    _datasets(inputs, tiny_pipeline_dir)
    _weights(inputs)
    make_system(inputs / "sys" / "a", 300, items={"a1": "one", "b2": "two"})
    make_system(inputs / "sys" / "b", 500, items={"a1": "one", "b2": "two"})
    make_system(inputs / "sys" / "other", 500, items={"zz": "cat"})
    (inputs / "empty").mkdir()
    _wav(inputs / "bare" / "q.wav")
    _escapes(inputs / "esc", _wav(inputs / "outside.wav"))
    make_listening_test({"A": inputs / "sys" / "a", "B": inputs / "sys" / "b"}, inputs / "lt", seed=2)
    (inputs / "pageonly" / "page").mkdir(parents=True)
    (inputs / "pageonly" / "page" / "index.html").write_text("an earlier page\n")
    _answers(inputs)
    return inputs


def _filled(case: Case, inputs: Path) -> Case:
    return dataclasses.replace(case, argv=tuple(a.replace("{in}", str(inputs)) for a in case.argv))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, inputs, tmp_path, capsys):
    before = snapshot(inputs)
    check(_filled(case, inputs), tmp_path, capsys)
    assert snapshot(inputs) == before, f"{case.id} changed its inputs"


def test_case_ids_are_unique_and_name_their_command():
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.id.startswith(("evaluate-", "listening-test-make-", "listening-test-score-", "demo-")) for c in CASES)


def test_make_copies_nothing_from_outside(inputs, tmp_path, capsys):
    """The manifest naming /etc/passwd: refused, and no page, no key, no copy of anything."""
    check(_filled(CASES[[c.id for c in CASES].index("listening-test-make-absolute-path")], inputs), tmp_path, capsys)
    assert not (tmp_path / "lt").exists()
    passwd = Path("/etc/passwd").read_bytes()
    assert not any(p.is_file() and p.read_bytes() == passwd for p in tmp_path.rglob("*"))


# A light process (no torch) holding the flock on a folder, as a running clipsonic would.
HOLD = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('locked', flush=True); sys.stdin.read()")


@pytest.mark.parametrize("argv", [
    _eval(),
    _make(*GOOD),
    _score("{in}/ans/ok.csv")[:-1] + ("{tmp}/lt",),
    ("demo", "--fast", "--out", "{tmp}/lt"),
], ids=["evaluate", "listening-test-make", "listening-test-score", "demo"])
def test_second_writer_is_refused_with_the_holders_pid(argv, inputs, tmp_path, capsys):
    folder = tmp_path / ("r" if argv[0] == "evaluate" else "lt")
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        line = check(_filled(Case(f"{argv[0]}-locked", argv, r"in use by another clipsonic process"), inputs),
                     tmp_path, capsys)
        assert f"(pid {holder.pid})" in line
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    if argv[1] == "make":  # the holder gone, the same command runs
        assert check_ok(_filled(Case("make", argv, ""), inputs).argv, tmp_path, capsys)
        assert len(read_key(folder)["trials"]) == 4


def check_ok(argv: tuple[str, ...], tmp: Path, capsys) -> bool:
    code = main([a.replace("{tmp}", str(tmp)) for a in argv])
    assert code == 0, capsys.readouterr().err
    return True
