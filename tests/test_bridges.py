"""The training-free bridges against closed forms (clipsonic.bridges)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipsonic import bridges
from clipsonic.errors import ClipsonicError


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_zero_shot_is_the_normalised_text_embedding():
    t = torch.tensor([[3.0, 4.0, 0.0]])
    assert torch.allclose(bridges.zero_shot(t), torch.tensor([[0.6, 0.8, 0.0]]))


def test_modality_shift_closed_form_and_centroid_maps_to_image_centroid():
    text = _unit([1, 0, 0], [0.8, 0.6, 0])
    mean_text = text.mean(0)
    mean_image = torch.tensor([0.0, 0.0, 0.7])
    out = bridges.modality_shift(text, mean_image, mean_text)
    expected = F.normalize(text + mean_image - mean_text, dim=-1)
    assert torch.allclose(out, expected)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    # the text centroid lands exactly on the direction of the image centroid
    centre = bridges.modality_shift(mean_text[None], mean_image, mean_text)
    assert torch.allclose(centre, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)


def test_nearest_images_picks_the_k_most_similar_rows():
    bank = _unit([1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1])
    text = _unit([1, 0.05, 0])
    assert torch.allclose(bridges.nearest_images(text, bank, k=1), bank[:1])
    assert torch.allclose(bridges.nearest_images(text, bank, k=2), F.normalize(bank[:2].mean(0, keepdim=True), dim=-1))
    everything = F.normalize(bank.mean(0, keepdim=True), dim=-1)
    assert torch.allclose(bridges.nearest_images(text, bank, k=100), everything)  # k > N: the whole bank


def test_nearest_images_accepts_a_float16_bank_and_batches():
    bank = _unit([1, 0], [0, 1]).half()
    out = bridges.nearest_images(_unit([1, 0.1], [0.1, 1]), bank, k=1)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.eye(2), atol=1e-3)


@pytest.mark.parametrize("bank, k", [(torch.zeros(0, 3), 1), (torch.eye(3), 0)])
def test_nearest_images_refuses_an_empty_bank_or_bad_k(bank, k):
    with pytest.raises(ClipsonicError):
        bridges.nearest_images(_unit([1, 0, 0]), bank, k=k)


def test_shift_prompts_from_labels_or_generic():
    assert bridges.shift_prompts(["dog", None, "cat", "dog"]) == ["cat", "the sound of cat", "dog", "the sound of dog"]
    assert bridges.shift_prompts([None, ""]) == list(bridges.GENERIC_PROMPTS)


def test_mean_text_embedding_is_the_plain_mean(tiny_clip_dir):
    from clipsonic.encoders import load_clip

    encoder = load_clip(tiny_clip_dir, device="cpu")
    prompts = ["a dog barking", "rain", "a violin solo"]
    mean = bridges.mean_text_embedding(encoder, prompts)
    assert torch.allclose(mean, encoder.encode_texts(prompts).mean(0), atol=1e-6)
    assert mean.norm() < 1.0  # not renormalised: it is a centroid
    with pytest.raises(ClipsonicError):
        bridges.mean_text_embedding(encoder, [])
