"""train-prior: pair sources, learning (loss down, modality gap narrowed), exact resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from support.bad_input import error_line
from support.synthetic_dataset import make_synthetic_dataset
from support.tiny_pipeline import COLOURS, make_tiny_pipeline, solid_image

from clipsonic.cli import main
from clipsonic.data.dataset import ShardWriter, read_dataset_info
from clipsonic.data.loader import iter_raw_samples
from clipsonic.errors import ClipsonicError
from clipsonic.prior import load_prior, train_prior
from clipsonic.prior.train import PairSet, collect_pairs
from clipsonic.train import read_metrics, read_run

FAST = dict(preset="tiny", batch_size=64, lr=1e-3, warmup_steps=10, log_every=10, val_pairs=48, sample_steps=16,
            save_every=1000, val_every=0)


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    from clipsonic.encoders import load_clip

    return load_clip(tiny_clip_dir, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip_dir, encoder):
    """Labelled synthetic clips whose frame embeddings live in the tiny CLIP's 32-d space (class
    prototypes + noise), recorded as made with the tiny CLIP so its captions can be embedded."""
    root = tmp_path_factory.mktemp("prior_data") / "ds"
    make_synthetic_dataset(root, 96, 6, frames=16, dim=encoder.dim, clip_model=str(tiny_clip_dir))
    info = json.loads((root / "dataset.json").read_text())
    info["clip"]["fingerprint"] = encoder.fingerprint
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def _load(name):
    from clipsonic.encoders import load_clip

    return load_clip(name, device="cpu")


def test_dataset_labels_become_templated_caption_pairs(dataset):
    pairs = collect_pairs(dataset, _load, templates=("the sound of {label}", "{label}"))
    assert pairs.image_emb.shape == (96 * 3, 32) and len(pairs.captions) == 6 * 2
    assert "the sound of class3" in pairs.captions and len(pairs) == 96 * 3 * 2
    # each clip's frames share its group, and a pair's caption names that clip's class
    label_of = {g: int(pairs.captions[pairs.pairs[pairs.group[pairs.pairs[:, 0]] == g][0, 1]].split("class")[1])
                for g in range(3)}
    assert label_of == {0: 0, 1: 1, 2: 2}  # clip i is class i % 6
    train, val = pairs.split(0.2)
    assert len(train) + len(val) == len(pairs) and len(val) > 0
    val_groups = set(pairs.group[pairs.pairs[val, 0]].tolist())
    assert not val_groups & set(pairs.group[pairs.pairs[train, 0]].tolist())  # whole clips held out


def test_csv_and_folder_sources_embed_their_images(tmp_path, encoder, tiny_clip_dir):
    names = sorted(list(COLOURS)[:3])  # the folder is read in file-name order
    for name in names:
        Image.fromarray(solid_image(COLOURS[name])).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"a {name} picture\nthe colour {name}\n")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.txt").write_text("nothing\n")
    folder = collect_pairs(tmp_path, _load, clip_model=str(tiny_clip_dir))
    assert folder.image_emb.shape == (3, 32) and len(folder) == 6  # the unreadable image is skipped
    expected = encoder.encode_images([solid_image(COLOURS[n]) for n in names])
    assert torch.allclose(folder.image_emb, expected, atol=1e-5)
    csv = tmp_path / "pairs.csv"
    csv.write_text("image,caption\n" + "".join(f"{n}.png,a {n} thing\n" for n in names))
    table = collect_pairs(csv, _load, clip_model=str(tiny_clip_dir))
    assert len(table) == 3 and torch.allclose(table.image_emb, expected, atol=1e-5)
    with pytest.raises(ClipsonicError, match="--clip-model"):
        collect_pairs(csv, _load)
    (tmp_path / "bad.csv").write_text("file,label\nx.png,y\n")
    with pytest.raises(ClipsonicError, match="caption column"):
        collect_pairs(tmp_path / "bad.csv", _load, clip_model=str(tiny_clip_dir))


def test_jsonl_and_coco_captions_embed_their_images(tmp_path, encoder, tiny_clip_dir):
    names = sorted(list(COLOURS)[:3])
    (tmp_path / "img").mkdir()
    for name in names:
        Image.fromarray(solid_image(COLOURS[name])).save(tmp_path / "img" / f"{name}.png")
    expected = encoder.encode_images([solid_image(COLOURS[n]) for n in names])
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"img/{n}.png", "caption": f"a {n} thing"}) + "\n" for n in names)
                     + json.dumps({"image": f"img/{names[0]}.png", "caption": "again"}) + "\n")
    pairs = collect_pairs(jsonl, _load, clip_model=str(tiny_clip_dir))
    assert torch.allclose(pairs.image_emb, expected, atol=1e-5) and len(pairs) == 4  # 2 captions for the first
    assert sorted(pairs.captions) == sorted(["again"] + [f"a {n} thing" for n in names])
    coco = {"images": [{"id": 7 + i, "file_name": f"{n}.png"} for i, n in enumerate(names)],
            "annotations": [{"image_id": 7 + i, "caption": f" the {n} one "} for i, n in enumerate(names)]
            + [{"image_id": 7, "caption": "first"}]}
    (tmp_path / "img" / "captions.json").write_text(json.dumps(coco))
    pairs = collect_pairs(tmp_path / "img" / "captions.json", _load, clip_model=str(tiny_clip_dir))
    assert torch.allclose(pairs.image_emb, expected, atol=1e-5) and len(pairs) == 4
    assert f"the {names[1]} one" in pairs.captions
    (tmp_path / "captions.json").write_text(json.dumps(coco))  # beside img/, not inside it
    with pytest.raises(ClipsonicError, match=r"captions\.json: image .* not found; .*put the JSON beside the images"):
        collect_pairs(tmp_path / "captions.json", _load, clip_model=str(tiny_clip_dir))
    (tmp_path / "odd.json").write_text(json.dumps({"images": [], "annotation": []}))
    with pytest.raises(ClipsonicError, match=r"odd\.json: not a COCO captions JSON \(no 'annotations'\)"):
        collect_pairs(tmp_path / "odd.json", _load, clip_model=str(tiny_clip_dir))
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ClipsonicError, match=r"empty\.json: no annotation holds a caption"):
        collect_pairs(tmp_path / "empty.json", _load, clip_model=str(tiny_clip_dir))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "img/x.png", "caption": "x"}) + "\nnot json\n")
    with pytest.raises(ClipsonicError, match=r"bad\.jsonl:2: not a JSON object"):
        collect_pairs(tmp_path / "bad.jsonl", _load, clip_model=str(tiny_clip_dir))


def _relabel(root, split, label):
    """Rewrite ``split``'s shards of the dataset at ``root`` with every clip's label set to ``label``."""
    info = read_dataset_info(root)
    samples = list(iter_raw_samples(info.shard_paths(split), fields=("mel.npy", "clip.npy", "json")))
    writer = ShardWriter(root, split, 0, 1 << 40)
    for raw in samples:
        meta = json.loads(raw["json"]) | {"label": label}
        writer.write({"__key__": raw["__key__"], "mel.npy": raw["mel.npy"], "clip.npy": raw["clip.npy"],
                      "json": json.dumps(meta).encode()})
    info.splits[split]["shards"] = [writer.finalize()]
    info.save()


def test_a_dataset_gives_pairs_of_its_train_split_only(tmp_path, tiny_clip_dir, encoder):
    root = tmp_path / "ds"
    make_synthetic_dataset(root, 12, 3, frames=16, dim=encoder.dim, test_clips=4, clip_model=str(tiny_clip_dir))
    info = json.loads((root / "dataset.json").read_text())
    info["clip"]["fingerprint"] = encoder.fingerprint
    (root / "dataset.json").write_text(json.dumps(info))
    _relabel(root, "test", "only in the test clips")
    pairs = collect_pairs(root, _load, templates=("{label}",))
    assert sorted(pairs.captions) == ["class0", "class1", "class2"]  # not the test clips' label
    assert pairs.image_emb.shape == (12 * 3, 32) and len(pairs) == 12 * 3  # 12 train clips × K = 3 frames


def test_an_unlabeled_dataset_names_every_way_to_a_prior(tmp_path, capsys):
    root = tmp_path / "ds"
    make_synthetic_dataset(root, 6, 2, frames=16, test_clips=2)
    _relabel(root, "train", None)  # labeled test clips must not count either
    line = error_line(["-q", "train-prior", str(root), "--out", str(tmp_path / "run")], capsys)
    assert "no training clip has a label" in line
    for way in ("clipsonic train-prior CAPTIONS --clip-model DIR", "COCO captions JSON", "JSONL",
                "generate --mode knn", "--mode shift", "clipsonic attach prior PIPELINE KARLO_DIR"):
        assert way in line


def test_training_lowers_the_loss_and_narrows_the_modality_gap(tmp_path, dataset):
    run = train_prior(dataset, tmp_path / "run", {"train": {**FAST, "max_steps": 150}}, cpu=True)
    losses = [r["loss"] for r in read_metrics(run, "train")]
    assert losses[-1] < 0.5 * losses[0]
    m = read_metrics(run, "val")[-1]  # val_every=0: validated once, at the end
    assert m["step"] == 150 and len(read_metrics(run, "val")) == 1
    # raw text embeddings of a random CLIP are unrelated to the image prototypes; the prior's samples
    # land near the held-out clips' image embeddings, far closer than the training-free shift
    assert m["cos_zs"] < 0.3 and m["cos_prior"] > 0.8 and m["cos_prior"] > m["cos_shift"] + 0.3
    prior = load_prior(tmp_path / "run")
    assert prior.training["validation"]["cos_prior"] == pytest.approx(m["cos_prior"])
    assert prior.training["steps"] == 150 and prior.training["train_loss"] == losses[-1]
    assert (tmp_path / "run" / "checkpoints" / "step-0000150" / "state.json").is_file()
    record = read_run(run)
    assert record.task == "prior" and record.data["clip"]["dim"] == 32 and record.data["source"] == str(dataset)


def test_resume_continues_exactly(tmp_path, dataset):
    config = dict(FAST, save_every=20)
    straight = train_prior(dataset, tmp_path / "a", {"train": {**config, "max_steps": 40}}, cpu=True)
    train_prior(dataset, tmp_path / "b", {"train": {**config, "max_steps": 20}}, cpu=True)
    with pytest.raises(ClipsonicError, match="--resume"):
        train_prior(dataset, tmp_path / "b", {"train": {**config, "max_steps": 40}}, cpu=True)
    with pytest.raises(ClipsonicError, match="lr="):
        train_prior(dataset, tmp_path / "b", {"train": {**config, "lr": 5e-4, "max_steps": 40}}, cpu=True, resume=True)
    with pytest.raises(ClipsonicError, match="was trained on source="):
        train_prior(tmp_path, tmp_path / "b", {"train": {"max_steps": 40}}, cpu=True, resume=True)
    resumed = train_prior(dataset, tmp_path / "b", {"train": {"max_steps": 40}}, cpu=True, resume=True)
    a, b = load_prior(straight / "prior"), load_prior(resumed / "prior")
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name
    assert PairSet.load(tmp_path / "b" / "pairs.safetensors").source == str(dataset)


def test_cli_train_prior_then_attach(tmp_path, dataset, tiny_clip_dir, capsys):
    run = tmp_path / "run"
    rc = main(["-q", "train-prior", str(dataset), "--out", str(run), "--preset", "tiny", "--max-steps", "30",
               "--batch-size", "32", "--log-every", "10", "--cpu", "--sample-steps", "8"])
    assert rc == 0
    assert f"prior: {run / 'prior'}" in capsys.readouterr().out
    pipe = make_tiny_pipeline(tmp_path / "pipe", tiny_clip_dir, with_prior=False)
    assert main(["-q", "attach", "prior", str(pipe), str(run)]) == 0
    assert json.loads((pipe / "model_index.json").read_text())["components"]["prior"] == "prior"
    assert main(["-q", "train-prior", str(dataset), "--out", str(run), "--max-steps", "40"]) == 2  # no --resume
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main(["-q", "train-prior", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    assert "no such pair source" in capsys.readouterr().err


def test_split_holds_out_at_least_one_group():
    pairs = PairSet(image_emb=torch.zeros(2, 4), text_emb=torch.zeros(1, 4), captions=["x"],
                    pairs=torch.tensor([[0, 0], [1, 0]]), group=torch.tensor([0, 1]),
                    clip=None, source="x")  # type: ignore[arg-type]
    train, val = pairs.split(0.01)
    assert len(train) == 1 and len(val) == 1
    assert np.array_equal(pairs.split(0.0)[1].numpy(), np.array([], dtype=np.int64))


def test_damaged_pairs_cache_is_one_line(tmp_path):
    path = tmp_path / "pairs.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ClipsonicError, match=r"pairs\.safetensors: unreadable embedded pairs .*delete it"):
        PairSet.load(path)
