"""Bad inputs to ``preprocess`` and ``preprocess --merge``: one line, exit 2, nothing written
(tests/support/bad_input.py). ``{in}`` is a module-wide folder of valid and broken sources, datasets and parts (it
must not change: a refused run touches nothing), ``{tmp}`` the test's own folder, ``{clip}`` the tiny CLIP."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image
from support.bad_input import Case, check, snapshot
from support.media_files import write_video

from clipsonic.audio import MelConfig
from clipsonic.data.clips import ClipOptions
from clipsonic.data.preprocess import PreprocessOptions, preprocess


def _pre(*extra: str, source: str = "{in}/videos", out: str = "{tmp}/ds") -> tuple[str, ...]:
    return ("-q", "preprocess", source, "--out", out, "--clip-model", "{clip}", "--workers", "0",
            "--clip-seconds", "1.024", *extra)


def _merge(data: str, *extra: str) -> tuple[str, ...]:
    return ("-q", "preprocess", "--merge", data, *extra)


RANGE = r"must be (>=|>|<=|in|a finite)"
CASES = [
    # the source
    Case("preprocess-source-missing", _pre(source="{in}/nope"), r"nope: no such file or folder"),
    Case("preprocess-source-empty-folder", _pre(source="{in}/empty"), r"empty: no video files found"),
    Case("preprocess-source-folder-of-non-videos", _pre(source="{in}/pictures"), r"pictures: no video files found"),
    Case("preprocess-source-all-videos-broken", _pre(source="{in}/broken"),
         r"broken: no clip came out of its 3 video\(s\), all rejected \(first: .*broken/"),
    Case("preprocess-source-png-named-mp4", _pre(source="{in}/png_video"),
         r"no clip came out .*png_video/still\.mp4: .*a still image \(png\), not a video"),
    Case("preprocess-source-unknown-type", _pre(source="{in}/notes.txt"), r"notes\.txt: unknown source type"),
    Case("preprocess-source-no-args", ("-q", "preprocess"), r"give SOURCE and --out DIR"),
    Case("preprocess-source-no-out", ("-q", "preprocess", "{in}/videos"), r"give SOURCE and --out DIR"),
    # manifests
    Case("preprocess-csv-empty", _pre(source="{in}/empty.csv"), r"empty\.csv: empty CSV"),
    Case("preprocess-csv-no-path-column", _pre(source="{in}/nopath.csv"),
         r"nopath\.csv: no 'path' column \(found \['file', 'label'\]\); a manifest CSV needs a header row"),
    Case("preprocess-csv-not-utf8", _pre(source="{in}/latin1.csv"), r"latin1\.csv: not UTF-8 text .*save it as UTF-8"),
    Case("preprocess-jsonl-not-utf8", _pre(source="{in}/latin1.jsonl"),
         r"latin1\.jsonl: not UTF-8 text .*save it as UTF-8"),
    Case("preprocess-csv-all-rows-missing", _pre(source="{in}/missing.csv"),
         r"missing\.csv: none of its 2 entries can be used \(first: .*gone\.mp4: missing file\)"),
    Case("preprocess-jsonl-all-rows-broken", _pre(source="{in}/broken.jsonl"),
         r"broken\.jsonl: none of its 3 entries can be used \(first: .*broken\.jsonl:1: unreadable manifest row"),
    Case("preprocess-jsonl-bad-times", _pre(source="{in}/times.jsonl"),
         r"none of its 3 entries .*start must be >= 0 and duration > 0 seconds, got -1\.0, None"),
    Case("preprocess-csv-duplicate-rows", _pre(source="{in}/dup.csv"), r"dup\.csv: duplicate entries"),
    Case("preprocess-jsonl-split-escapes", _pre(source="{in}/escape.jsonl"),
         r"escape\.jsonl:1: split '/\.\./\.\./x' is not a plain name"),
    Case("preprocess-csv-split-newline", _pre(source="{in}/newline.csv"),
         r"newline\.csv:1: split 'a\\nb' is not a plain name"),
    Case("preprocess-vggsound-split-dotdot", _pre("--video-dir", "{in}/videos", source="{in}/vgg_escape.csv"),
         r"vgg_escape\.csv:1: split '\.\.' is not a plain name"),
    Case("preprocess-vggsound-without-video-dir", _pre(source="{in}/vgg.csv"), r"vgg\.csv: .*pass --video-dir"),
    Case("preprocess-vggsound-video-dir-a-file", _pre("--video-dir", "{in}/notes.txt", source="{in}/vgg.csv"),
         r"--video-dir .*notes\.txt: not a folder"),
    Case("preprocess-vggsound-all-missing", _pre("--video-dir", "{in}/empty", source="{in}/vgg.csv"),
         r"vgg\.csv: none of its 2 entries can be used \(first: .*missing file"),
    Case("preprocess-vggsound-bad-start", _pre("--video-dir", "{in}/videos", source="{in}/vgg_neg.csv"),
         r"none of its 1 entries .*start_seconds '-5' is not a number of seconds >= 0"),
    Case("preprocess-music-json-not-lists", _pre("--video-dir", "{in}/videos", source="{in}/music_bad.json"),
         r"music_bad\.json: not a MUSIC JSON; each label must map to a list"),
    Case("preprocess-music-json-a-list", _pre("--video-dir", "{in}/videos", source="{in}/music_list.json"),
         r"music_list\.json: not a MUSIC JSON"),
    Case("preprocess-music-json-deeply-nested", _pre("--video-dir", "{in}/videos", source="{in}/deep.json"),
         r"deep\.json: not a readable MUSIC JSON \(nested too deeply\)"),
    Case("preprocess-music-json-truncated", _pre("--video-dir", "{in}/videos", source="{in}/truncated.json"),
         r"truncated\.json: not a readable MUSIC JSON"),
    # the output folder
    Case("preprocess-out-is-a-file", _pre(out="{in}/notes.txt"), r"notes\.txt is a file"),
    Case("preprocess-out-under-a-file", _pre(out="{in}/notes.txt/ds"), r"notes\.txt is a file; preprocess writes the folder"),
    Case("preprocess-out-is-the-source", _pre(out="{in}/videos"), r"--out .*videos is the source folder"),
    Case("preprocess-out-holds-other-options", _pre("--frames-per-clip", "2", out="{in}/done"),
         r"done holds a finished dataset built from other inputs or options; use another --out"),
    Case("preprocess-out-holds-other-clip-seconds", _pre("--clip-seconds", "2.048", out="{in}/done"),
         r"done holds clips of 1\.024 s, this run cuts 2\.048 s"),
    Case("preprocess-out-holds-other-inputs", _pre(source="{in}/videos2", out="{in}/done"),
         r"done holds a finished dataset built from other inputs"),
    Case("preprocess-out-holds-stray-shards", _pre(out="{in}/stray"), r"stray holds shards but no progress journal"),
    Case("preprocess-out-dataset-json-corrupt", _pre(out="{in}/corrupt_json"),
         r"corrupt_json/dataset\.json: not a readable clipsonic-dataset file"),
    Case("preprocess-out-dataset-json-other-version", _pre(out="{in}/v99"), r"dataset version 99 was written by"),
    Case("preprocess-out-journal-corrupt", _pre(out="{in}/bad_journal"), r"\.progress\.json: not a readable"),
    Case("preprocess-out-journal-malformed", _pre(out="{in}/odd_journal"), r"\.progress\.json: malformed progress journal"),
    Case("preprocess-out-interrupted-with-other-options", _pre("--frames-per-clip", "2", source="{in}/videos3",
                                                               out="{in}/interrupted"),
         r"interrupted holds an interrupted run with other settings \(then vs now: .*clips\.frames_per_clip: 3 vs 2"),
    Case("preprocess-clip-model-missing", _pre("--clip-model", "{in}/no_clip"), r"no_clip does not exist"),
    Case("preprocess-clip-model-not-a-clip", _pre("--clip-model", "{in}/empty"), r"empty is not a CLIP model"),
    # option values
    *[Case(f"preprocess-flag{flag}-{value}", _pre(flag, value), match) for flag, value, match in [
        ("--frames-per-clip", "0", RANGE), ("--frames-per-clip", "-3", RANGE), ("--frames-per-clip", "1.5", "int"),
        ("--clip-seconds", "nan", "finite"), ("--clip-seconds", "inf", "finite"), ("--clip-seconds", "0", "shorter"),
        ("--clip-seconds", "-1", "shorter"), ("--clip-seconds", "1e300", "at most"), ("--clip-seconds", "x", "float"),
        ("--test-fraction", "1.5", RANGE), ("--test-fraction", "1", RANGE), ("--test-fraction", "-0.1", RANGE),
        ("--test-fraction", "nan", "finite"), ("--stride", "0", RANGE), ("--stride-seconds", "-1", RANGE),
        ("--stride-seconds", "inf", "finite"), ("--shard-size-mb", "-1", RANGE), ("--shard-size-mb", "0", RANGE),
        ("--shard-size-mb", "nan", "finite"), ("--workers", "-1", "--workers must be >= 0"),
        ("--silence-db", "nan", "finite"), ("--silence-db", "10", RANGE), ("--max-clips-per-video", "0", RANGE),
        ("--min-clip-fraction", "0", RANGE), ("--min-clip-fraction", "1.5", RANGE), ("--encode-group", "0", RANGE),
        ("--group-size", "-1", RANGE), ("--jpg-size", "0", RANGE), ("--max-frame-side", "0", RANGE),
        ("--batch-size", "0", "--batch-size must be >= 1"), ("--num-shards", "0", "--num-shards must be >= 1"),
        ("--shard-index", "-1", "--shard-index must be >= 0"), ("--device", "potato", "not a torch device")]],
    Case("preprocess-shard-index-beyond-num-shards", _pre("--num-shards", "2", "--shard-index", "2"),
         r"--shard-index 2 must be in \[0, --num-shards 2\)"),
    # --merge
    Case("preprocess-merge-missing-folder", _merge("{tmp}/nope"), r"nope: no part-\*-of-\* folders to merge"),
    Case("preprocess-merge-no-parts", _merge("{in}/done"), r"done: no part-\*-of-\* folders to merge"),
    Case("preprocess-merge-a-file", _merge("{in}/notes.txt"), r"notes\.txt is a file"),
    Case("preprocess-merge-odd-part-names", _merge("{in}/odd_parts"), r"odd_parts: no part-\*-of-\* folders"),
    Case("preprocess-merge-unfinished-part", _merge("{in}/half"), r"half: parts \[1\] of 2 are not finished"),
    Case("preprocess-merge-part-dataset-json-corrupt", _merge("{in}/bad_part"),
         r"part-00001-of-00002/dataset\.json: not a readable"),
    Case("preprocess-merge-part-shard-escapes", _merge("{in}/escape_part"),
         r"dataset\.json: shard '\.\./\.\./outside\.tar' leads outside"),
    Case("preprocess-merge-with-source", ("-q", "preprocess", "{in}/videos", "--merge", "{in}/half"),
         r"--merge DIR takes no SOURCE or --out"),
]


def _sources(root: Path) -> None:
    for name in ("videos", "videos2", "videos3", "empty", "pictures", "broken", "png_video"):
        (root / name).mkdir()
    write_video(root / "videos" / "a.mp4", seconds=1.2)
    write_video(root / "videos2" / "b.mp4", seconds=1.2)
    write_video(root / "videos3" / "c.mp4", seconds=1.2)
    write_video(root / "videos3" / "d.mp4", seconds=1.2)
    Image.new("RGB", (16, 16)).save(root / "pictures" / "x.png")
    Image.new("RGB", (16, 16)).save(root / "png_video" / "still.mp4", format="PNG")
    (root / "pictures" / "readme.txt").write_text("no videos here\n")
    (root / "broken" / "empty.mp4").write_bytes(b"")
    (root / "broken" / "text.mp4").write_text("not a video\n" * 20)
    (root / "broken" / "cut.mp4").write_bytes((root / "videos" / "a.mp4").read_bytes()[:400])
    files = {
        "notes.txt": "some notes\n", "empty.csv": "", "nopath.csv": "file,label\nvideos/a.mp4,dog\n",
        "missing.csv": "path\ngone.mp4\nalso_gone.mp4\n", "dup.csv": "path\nvideos/a.mp4\nvideos/a.mp4\n",
        "broken.jsonl": '[1, 2]\n{"label": "x"}\nnot json\n',
        "times.jsonl": "".join(json.dumps({"path": "videos/a.mp4", **t}) + "\n" for t in (
            {"start": -1}, {"start": "x"}, {"duration": 0})),
        "escape.jsonl": json.dumps({"path": "videos/a.mp4", "split": "/../../x"}) + "\n",
        "newline.csv": 'path,split\nvideos/a.mp4,"a\nb"\n', "vgg_escape.csv": "a,0,dog,..\n",
        "vgg.csv": "abc,0,dog,train\ndef,10,cat,test\n", "vgg_neg.csv": "a,-5,dog,train\n",
        "music_bad.json": json.dumps({"videos": {"flute": 5}}), "music_list.json": "[1, 2]",
        "deep.json": "[" * 100_000 + "]" * 100_000, "truncated.json": '{"videos": {"flute": ["a"',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.csv").write_bytes("path,label\nvideos/a.mp4,café\n".encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"path": "videos/a.mp4", "label": "café"}\n'.encode("latin-1"))


def _outputs(root: Path, clip: Path) -> None:
    options = PreprocessOptions(clip_model=str(clip), clips=ClipOptions(keep_jpg=False))
    mel = MelConfig().with_clip_seconds(1.024)
    preprocess(root / "videos", root / "done", options=options, mel=mel)
    with pytest.raises(KeyboardInterrupt):  # killed after the first committed shard: an interrupted run
        preprocess(root / "videos3", root / "interrupted", options=options.replace(encode_group=1, shard_size_mb=1e-6), mel=mel,
                   progress=lambda p: _interrupt() if p.items_done == 2 else None)
    for name in ("stray", "corrupt_json", "v99", "bad_journal", "odd_journal", "odd_parts", "half", "bad_part", "escape_part"):
        (root / name).mkdir()
    (root / "stray" / "train-000000.tar").write_bytes(b"")
    (root / "corrupt_json" / "dataset.json").write_text('{"format": "clipsonic-dataset", ')
    (root / "v99" / "dataset.json").write_text(json.dumps({"format": "clipsonic-dataset", "version": 99}))
    (root / "bad_journal" / ".progress.json").write_text("{")
    (root / "odd_journal" / ".progress.json").write_text('{"format": "clipsonic-preprocess-journal", "version": 1}')
    (root / "odd_parts" / "part-a-of-b").mkdir()
    for i in range(2):
        preprocess(root / "videos", root / "half", options=options, mel=mel, num_shards=2, shard_index=i)
    (root / "half" / "part-00001-of-00002" / "dataset.json").unlink()
    for parts in ("bad_part", "escape_part"):
        for i in range(2):
            preprocess(root / "videos", root / parts, options=options, mel=mel, num_shards=2, shard_index=i)
    (root / "bad_part" / "part-00001-of-00002" / "dataset.json").write_text("{")
    info = root / "escape_part" / "part-00000-of-00002" / "dataset.json"
    data = json.loads(info.read_text())
    split = next(iter(data["splits"]))
    data["splits"][split]["shards"] = ["../../outside.tar"]
    info.write_text(json.dumps(data))


def _interrupt():
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_clip_dir) -> Path:
    root = tmp_path_factory.mktemp("data_inputs")
    _sources(root)
    _outputs(root, tiny_clip_dir)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, inputs, tiny_clip_dir, tmp_path, capsys):
    before = snapshot(inputs)
    argv = tuple(a.replace("{in}", str(inputs)).replace("{clip}", str(tiny_clip_dir)) for a in case.argv)
    check(dataclasses.replace(case, argv=argv), tmp_path, capsys)
    after = snapshot(inputs)
    assert after == before, f"{case.id} changed its inputs: {sorted(set(after.items()) ^ set(before.items()))}"


def test_case_ids_are_unique_and_name_the_command():
    assert len({c.id for c in CASES}) == len(CASES)
    assert all(c.id.startswith("preprocess-") for c in CASES)
