"""Read sound and pictures from media files (PyAV), write sound files (soundfile).

One timeline: every time here is in seconds from the start of the file as FFmpeg defines it (the container's
``start_time``), exactly as ``ffmpeg -ss`` counts. Sound and pictures share it, so the frame returned for ``t`` is
the one on screen while the sample at ``t`` plays. A track that begins later than the file is preceded by silence.
Every problem with a file (missing, empty, truncated, not media, no such stream, times outside it, undecodable
data) raises :class:`MediaError` naming the file; PyAV's exceptions never escape.
"""

from clipsonic.media._container import MediaError, MediaInfo, probe
from clipsonic.media.audio import load_audio, save_audio
from clipsonic.media.frames import load_frames

__all__ = ["MediaError", "MediaInfo", "probe", "load_audio", "load_frames", "save_audio"]
