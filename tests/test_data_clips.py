"""The clip rule of clipsonic.data.clips: where clips start, and what a short video gives."""

import io

import numpy as np
import pytest
import soundfile as sf
from support.media_files import write_video

from clipsonic.audio import MelConfig
from clipsonic.data import clips as clips_module
from clipsonic.data.clips import ClipOptions, ClipPlan, extract_clips, plan_clips
from clipsonic.data.preprocess import PreprocessOptions
from clipsonic.data.sources import SourceItem
from clipsonic.errors import ClipsonicError

MEL = MelConfig(clip_samples=16384)  # 1.024-s clips
CLIP = MEL.clip_seconds


def plan(seconds, segment_start=0.0, **options):
    return plan_clips(segment_start, seconds, MEL, ClipOptions(**options))


def starts(seconds, segment_start=0.0, **options):
    return plan(seconds, segment_start, **options).starts


def test_back_to_back_clips_pad_a_long_tail_and_drop_a_short_one():
    assert plan(2.5) == ClipPlan([0.0, CLIP], dropped_tail=round(2.5 - 2 * CLIP, 6))  # 0.452 s < half a clip
    assert plan(2 * CLIP) == ClipPlan([0.0, CLIP])  # an exact fit keeps the last clip, no tail
    assert plan(2 * CLIP - 0.0005) == ClipPlan([0.0, CLIP])  # container durations are rounded: 1 ms of slack
    assert plan(2 * CLIP - 0.01) == ClipPlan([0.0, CLIP], padded=round(CLIP - 0.01, 6))  # 1.014 s of audio: padded
    assert plan(4.0) == ClipPlan([0.0, CLIP, 2 * CLIP, 3 * CLIP], padded=round(4.0 - 3 * CLIP, 6))  # the 0.93-s tail
    assert plan(1.5 * CLIP) == ClipPlan([0.0, CLIP], padded=CLIP / 2)  # exactly the fraction
    assert plan(1.5 * CLIP, min_clip_fraction=0.6) == ClipPlan([0.0], dropped_tail=CLIP / 2)


def test_stride_and_segment_start():
    # clips every 0.5 s while they fit (the last whole one starts at 1.5), then one at 2.0 with 1 s of audio, padded
    assert plan(3.0, stride_seconds=0.5) == ClipPlan([0.0, 0.5, 1.0, 1.5, 2.0], padded=1.0)
    # a VGGSound row 10 s into its video: times stay on the video's clock
    assert starts(3.0, segment_start=10.0, stride_seconds=0.5) == [10.0, 10.5, 11.0, 11.5, 12.0]
    # a clip at 1.6 would hold 0.4 s: the 0.176 s after the last clip (0.8 + 1.024) is dropped
    assert plan(2.0, stride_seconds=0.8) == ClipPlan([0.0, 0.8], dropped_tail=round(2.0 - 0.8 - CLIP, 6))
    # a stride longer than a clip leaves gaps: what counts is the audio from the next start (4.0)
    assert plan(5.0, stride_seconds=2.0) == ClipPlan([0.0, 2.0, 4.0], padded=1.0)
    assert plan(4.3, stride_seconds=2.0) == ClipPlan([0.0, 2.0], dropped_tail=0.3)


def test_a_long_video_gives_many_clips_up_to_the_cap():
    ten_minutes = starts(600.0)
    assert len(ten_minutes) == int((600.0 - CLIP) // CLIP) + 2 == 586  # 585 whole clips, then 0.96 s padded
    np.testing.assert_allclose(np.diff(ten_minutes), CLIP)
    assert ten_minutes[-2] + CLIP <= 600.0 and plan(600.0).padded == round(600.0 - 585 * CLIP, 6)
    assert plan(600.0, max_clips_per_video=50) == ClipPlan(ten_minutes[:50])  # the cap comes before the tail
    assert starts(600.0, stride_seconds=0.25, max_clips_per_video=3) == [0.0, 0.25, 0.5]
    assert plan(2.9, max_clips_per_video=2) == ClipPlan([0.0, CLIP])  # the 0.85-s tail is past the cap


@pytest.mark.parametrize("seconds, min_fraction, expected", [
    (0.7, 0.5, [0.0]),  # shorter than a clip but >= half of it: one (padded) clip
    (0.512, 0.5, [0.0]),  # exactly the fraction
    (0.3, 0.5, []),  # too short
    (0.7, 0.8, []),  # a stricter fraction rejects it
    (0.0, 0.5, []),
])
def test_a_video_shorter_than_a_clip(seconds, min_fraction, expected):
    assert starts(seconds, min_clip_fraction=min_fraction) == expected


def test_the_single_short_clip_is_zero_padded_and_its_frames_stay_inside_the_video(tmp_path):
    path = write_video(tmp_path / "short.mp4", seconds=0.7, tone_hz=440.0)
    result = extract_clips(SourceItem(path, key="short.mp4"), MEL, ClipOptions(keep_audio=True))
    assert result.reason is None and len(result.clips) == 1
    assert 0.7 <= result.padded < 0.75 and result.dropped_tail == 0  # the container's duration (AAC frames)
    clip = result.clips[0]
    audio, rate = sf.read(io.BytesIO(clip.flac), dtype="float32")
    assert rate == 16000 and audio.shape == (MEL.clip_samples,)
    real = int(0.7 * rate)
    assert np.abs(audio[:real - 1600]).max() > 0.3  # the tone (amplitude 0.5; AAC edges aside)
    assert not audio[real + 800:].any()  # silence after the end, to the clip's length
    # the K frames are the centres of 3 equal parts of the decoded audio's span (AAC rounds 0.7 s
    # up to whole codec frames), not of the whole padded clip: all inside the video
    span = 2 * clip.meta["frame_times"][1]
    assert 0.7 <= span < 0.75
    np.testing.assert_allclose(clip.meta["frame_times"], [span / 6, span / 2, span * 5 / 6], atol=1e-6)
    assert clip.meta["frame_times"][-1] < 0.7
    assert clip.mel.shape == (MEL.n_mels, MEL.clip_samples // MEL.hop_length)


def test_a_four_second_video_gives_its_tail_as_a_padded_clip_unless_the_tail_is_silent(tmp_path):
    four = write_video(tmp_path / "four.mp4", seconds=4.0, tone_hz=440.0)
    result = extract_clips(SourceItem(four, key="four.mp4"), MEL, ClipOptions())
    assert [c.meta["start"] for c in result.clips] == [0.0, CLIP, 2 * CLIP, 3 * CLIP]
    assert 0.92 < result.padded < 0.96 and result.dropped_tail == 0  # 4.0 - 3.072 s of audio, then zeros
    quiet_end = write_video(tmp_path / "quiet_end.mp4", seconds=2.9,
                            audio=lambda t: 0.5 * np.sin(2 * np.pi * 440 * t) * (t < 2.0)[None].repeat(2, 0))
    result = extract_clips(SourceItem(quiet_end, key="quiet_end.mp4"), MEL, ClipOptions())
    assert len(result.clips) == 2 and result.silent_clips == 1 and result.padded == 0  # the padded clip was silent


def test_a_too_short_video_is_rejected_with_the_numbers(tmp_path):
    path = write_video(tmp_path / "tiny.mp4", seconds=0.3)
    result = extract_clips(SourceItem(path, key="tiny.mp4"), MEL, ClipOptions())
    assert result.clips == [] and result.reason.startswith("too short")
    assert "need 0.51 s" in result.reason


@pytest.mark.parametrize("cls, field, value, problem", [
    (MelConfig, "sample_rate", 0, "sample_rate must be >= 1"), (MelConfig, "n_mels", 0, "n_mels must be >= 1"),
    (MelConfig, "hop_length", 0, "hop_length must be >= 1"), (MelConfig, "clip_samples", 0, "clip_samples must be"),
    (MelConfig, "fmax", 0.0, "fmax must be > 0"), (MelConfig, "fmin", -1.0, "fmin must be >= 0"),
    (MelConfig, "hop_length", 4096, "hop_length 4096 exceeds n_fft 2048"),
    (MelConfig, "log_max", float("nan"), "finite"),
    (ClipOptions, "frames_per_clip", 0, "frames_per_clip must be >= 1"),
    (ClipOptions, "max_clips_per_video", 0, "max_clips_per_video must be >= 1"),
    (ClipOptions, "stride_seconds", 0.0, "stride_seconds must be > 0"),
    (ClipOptions, "silence_db", float("nan"), "silence_db must be a finite number"),
    (ClipOptions, "min_clip_fraction", 0.0, r"min_clip_fraction must be in \(0, 1\]"),
    (PreprocessOptions, "test_fraction", 1.0, r"test_fraction must be in \[0, 1\)"),
    (PreprocessOptions, "shard_size_mb", -1.0, "shard_size_mb must be > 0"),
    (PreprocessOptions, "encode_group", 0, "encode_group must be >= 1"),
])
def test_options_that_shape_the_data_refuse_values_outside_their_range(cls, field, value, problem):
    with pytest.raises(ClipsonicError, match=problem):
        cls.from_dict({field: value}, source="test")


def test_clip_seconds_must_be_finite():
    for seconds in (float("nan"), float("inf"), 1e300):
        with pytest.raises(ClipsonicError, match="finite number of seconds"):
            MelConfig().with_clip_seconds(seconds)


def test_non_finite_audio_is_rejected_not_kept(tmp_path, monkeypatch):
    write_video(tmp_path / "v.mp4", seconds=1.5)
    good = clips_module.load_audio
    monkeypatch.setattr(clips_module, "load_audio", lambda *a, **k: good(*a, **k) * np.float32(np.inf))
    result = extract_clips(SourceItem(tmp_path / "v.mp4", key="v"), MelConfig(clip_samples=16384), ClipOptions())
    assert result.clips == [] and result.reason == "the audio holds NaN or infinite samples (a corrupt float track)"
