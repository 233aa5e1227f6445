"""``dsod predict`` on video files, cameras and network streams (PyAV: FFmpeg's decoders, wheels with
FFmpeg included; ``pip install av``).

A source is a stream when it is a video file (by suffix), a camera (an index ``0`` or ``/dev/video0``;
FFmpeg's ``v4l2`` on Linux, ``avfoundation`` on macOS, ``dshow`` on Windows) or a URL (``rtsp://``,
``rtmp://``, ``http(s)://``). Frames are decoded in a thread of their own into a small queue while
the network runs on the previous batch (PyAV releases the GIL while FFmpeg decodes), so decoding
overlaps the forward pass. Each frame's detections go to ``<name>.jsonl`` (one JSON object per
frame: index, time in seconds, detections in pixels with class names), the annotated frames to
``<name>.mp4`` (H.264 where the FFmpeg build has an encoder for it, else MPEG-4 Part 2).

A source that cannot be opened, a stream that breaks, or one that sends nothing for ``timeout``
seconds ends with one line (``StreamError``), never a hang; what was written up to then is kept
(the video file is closed properly, the JSON lines flushed).
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from ..errors import DsodError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                  ".3gp", ".mts", ".m2ts"}
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
_CAMERA_FORMAT = {"linux": "v4l2", "darwin": "avfoundation", "win32": "dshow"}
_END = object()


class StreamError(DsodError):
    """A video source that cannot be opened or read (one line)."""


def is_stream(source: Union[str, Path]) -> bool:
    """Whether ``source`` names a video file, a camera or a network stream (not images)."""
    s = str(source)
    if Path(s).is_dir():  # a folder of images, even one named "0"
        return False
    return (s.isdigit() or s.startswith("/dev/video") or s.lower().startswith(URL_SCHEMES)
            or Path(s).suffix.lower() in VIDEO_SUFFIXES)


def _av():
    try:
        import av
    except ImportError:
        raise StreamError("video and camera sources need PyAV (pip install av)") from None
    return av


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@dataclass
class StreamInfo:
    width: int
    height: int
    fps: float  # frames per second the source declares (0 when unknown)
    frames: int  # frames in the file (0 when unknown: cameras, streams, some containers)


class VideoSource:
    """Frames of a video file, camera or stream as RGB uint8 arrays, decoded in a background thread.

    Args:
        source: a path, a camera index / device, or a URL.
        timeout: seconds to open the source and to wait for each frame before giving up.
        buffer: frames decoded ahead of the consumer.
    """

    def __init__(self, source: Union[str, Path], timeout: float = 30.0, buffer: int = 16):
        av = _av()
        self.source, self.timeout = str(source), float(timeout)
        url, fmt = self.source, None
        if self.source.isdigit() or self.source.startswith("/dev/video"):
            fmt = _CAMERA_FORMAT.get(sys.platform)
            if sys.platform == "linux" and self.source.isdigit():
                url = f"/dev/video{self.source}"
        elif not self.source.lower().startswith(URL_SCHEMES) and not Path(self.source).is_file():
            raise StreamError(f"source={self.source}: no such video file")
        try:
            self.container = av.open(url, format=fmt, timeout=(self.timeout, self.timeout))
            self.stream = self.container.streams.video[0]
        except IndexError:
            raise StreamError(f"source={self.source}: no video stream in it") from None
        except Exception as e:  # noqa: BLE001 - FFmpeg's errors (not found, refused, invalid data ...)
            raise StreamError(f"source={self.source}: cannot open ({_first_line(e)})") from None
        self.stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads for the decoder
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.info = StreamInfo(int(self.stream.codec_context.width), int(self.stream.codec_context.height),
                               float(rate) if rate else 0.0, int(self.stream.frames or 0))
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, buffer))
        self._stop = threading.Event()
        self.error: Optional[str] = None  # why the stream ended early, if it did
        self._thread = threading.Thread(target=self._decode, name="dsod-video-decode", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        try:
            for frame in self.container.decode(self.stream):
                if self._stop.is_set():
                    return
                t = float(frame.pts * frame.time_base) if frame.pts is not None else None
                self._put((t, frame.to_ndarray(format="rgb24")))
        except Exception as e:  # noqa: BLE001 - a broken stream or a corrupt packet ends the source
            self.error = _first_line(e)
        finally:
            self._put(_END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Tuple[int, Optional[float], np.ndarray]]:
        """(frame index, time in seconds or None, RGB uint8 (H, W, 3)) until the source ends."""
        index = 0
        while True:
            try:
                item = self._queue.get(timeout=self.timeout)
            except queue.Empty:
                self.error = f"no frame for {self.timeout:g} s"
                return
            if item is _END:
                return
            yield index, item[0], item[1]
            index += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - closing a broken stream may fail again; nothing is lost
            pass


class VideoWriter:
    """Annotated RGB frames to an .mp4: H.264 (x264's ``veryfast`` preset: on 2 cores encoding at the
    default preset cost more than the network) where this FFmpeg build encodes it, else MPEG-4.
    Written in the calling thread: on a small CPU a second thread only competes with the network."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        av = _av()
        self.path = path
        codec = next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available)
        self.container = av.open(str(path), mode="w")
        options = {"preset": "veryfast"} if codec == "libx264" else {}
        self.stream = self.container.add_stream(codec, rate=max(1, round(fps or 25)), options=options)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2  # yuv420p: even sizes
        self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        av = _av()
        frame = av.VideoFrame.from_ndarray(rgb[: self.stream.height, : self.stream.width], format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


def detections_json(result: Dict[str, Any]) -> list:
    """One frame's detections as plain JSON (``bbox`` [x, y, w, h] in pixels, as COCO results)."""
    out = []
    for (x1, y1, x2, y2), score, label, name in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                                    result["labels"].tolist(), result["names"]):
        out.append({"bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5), "label": int(label), "name": name})
    return out


def predict_stream(detector, source: Union[str, Path], out_dir: Path, name: str = "video", batch: int = 4,
                   save: bool = True, max_frames: int = 0, timeout: float = 30.0,
                   progress: bool = True) -> Dict[str, Any]:
    """Run ``detector`` (``inference.predict.Detector``) over every frame of ``source``; write
    ``out_dir/<name>.jsonl`` (and ``<name>.mp4`` with ``save``). Returns the figures: frames, seconds,
    end-to-end frames/s and the network's alone (forward + selection, without decoding and writing)."""
    import torch
    from tqdm import tqdm

    from .predict import annotate, preprocess

    video = VideoSource(source, timeout=timeout)
    info = video.info
    total = min(info.frames, max_frames) if info.frames and max_frames else (info.frames or max_frames or None)
    writer = VideoWriter(out_dir / f"{name}.mp4", info.width, info.height, info.fps) if save else None
    frames, net_seconds, t0 = 0, 0.0, time.perf_counter()
    bar = tqdm(total=total, desc=f"predict {Path(str(source)).name}", unit="frame", disable=not progress,
               dynamic_ncols=True)
    jsonl = out_dir / f"{name}.jsonl"
    try:
        # written as it goes, not through a temporary file: an interrupted stream keeps its lines
        with open(jsonl, "w") as lines:
            pending = []

            def flush() -> None:
                nonlocal net_seconds
                t = time.perf_counter()
                x = torch.stack([preprocess(rgb, detector.image_size) for _, _, rgb in pending])
                results = detector.detect(x, [rgb.shape[:2] for _, _, rgb in pending])
                net_seconds += time.perf_counter() - t
                for (index, when, rgb), r in zip(pending, results):
                    lines.write(json.dumps({"frame": index, "time": when, "detections": detections_json(r)}) + "\n")
                    if writer is not None:
                        writer.write(np.asarray(annotate(rgb, r)))
                lines.flush()
                bar.update(len(pending))
                pending.clear()

            for index, when, rgb in video:
                pending.append((index, when, rgb))
                frames += 1
                if len(pending) == batch:
                    flush()
                if max_frames and frames >= max_frames:
                    break
            if pending:
                flush()
    finally:
        bar.close()
        video.close()
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    if frames == 0:
        raise StreamError(f"source={source}: no frame could be read ({video.error or 'empty stream'})")
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds,
            "network_fps": frames / net_seconds if net_seconds else float("nan"),
            "ended_early": video.error, "jsonl": str(jsonl), "video": str(writer.path) if writer else None,
            "source_fps": info.fps, "size": (info.width, info.height)}
