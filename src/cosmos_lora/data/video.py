"""Video decoding and encoding through the ffmpeg binary that ships with imageio-ffmpeg.

Frames are always uint8 RGB arrays, `[T, H, W, 3]` for a video and `[H, W, 3]` for one frame.
Files are written as H.264 yuv420p mp4, the format the official Cosmos datasets use, to a temporary
sibling that is renamed into place only once ffmpeg has finished, so a crash never leaves a
truncated clip behind, and that is removed on every other way out (`VideoWriter`).
"""

import contextlib
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cosmos_lora.errors import UserError
from cosmos_lora.files import publish, remove_quietly, temporary_sibling

# x264 constant rate factor per quality name: lower is closer to the input and larger on disk.
# "high" keeps a decode -> encode -> decode round trip within a few grey levels.
QUALITY_CRF = {"high": 12, "medium": 18, "low": 23}
X264_PRESETS = ("veryfast", "faster", "fast", "medium")


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    fps: float


def probe_video(path: Path, max_frames: int | None = None) -> VideoInfo:
    """Size and frame rate from the stream header, frame count by decoding.

    Container metadata (duration x fps, `nb_frames`) is wrong for variable-frame-rate files and
    for mp4 edit lists, and a clip one frame short breaks the 1 + 8k latent layout, so frames are
    counted the way `read_video` will see them. With `max_frames`, counting stops there (the
    result is then min(frames, max_frames)), which keeps probing long sources cheap.
    """
    header = _read_header(path)
    frames = count_frames(path, limit=max_frames)
    return VideoInfo(frames=frames, height=header["height"], width=header["width"], fps=header["fps"])


def count_frames(path: Path, limit: int | None = None) -> int:
    """Decodes the first video stream (up to `limit` frames) and returns how many frames came out.

    Both this and `read_video` pass decoded frames through one for one (`-fps_mode passthrough`),
    so they agree on the count. ffmpeg's default for a raw pipe is constant frame rate instead: it
    would invent duplicate frames to fill timestamp gaps (a damaged or variable-rate stream).
    """
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-progress", "pipe:1", "-nostats"]
    cmd += ["-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
    if limit is not None:
        cmd += ["-frames:v", str(limit)]
    cmd += ["-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    counts = [line.split("=", 1)[1] for line in result.stdout.splitlines() if line.startswith("frame=")]
    frames = int(counts[-1]) if counts and counts[-1].strip().isdigit() else 0
    if result.returncode != 0 or frames == 0:
        raise _undecodable(path, result.stderr or "no video frames could be decoded")
    return frames


def iter_video_frames(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yields `[H, W, 3]` uint8 frames one at a time, so long sources never sit in memory whole."""
    reader, header = _open_reader(path, max_frames)
    yield from _decode(path, reader, header)


def read_video(path: Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes the first `max_frames` frames (all by default). Returns uint8 `[T, H, W, 3]` and fps.

    ffmpeg is told to stop after `max_frames`, so asking for the start of a long video is cheap.
    """
    reader, header = _open_reader(path, max_frames)
    frames = list(_decode(path, reader, header))
    if not frames:
        raise _undecodable(path, "no video frames could be decoded")
    return np.stack(frames), header["fps"]


def write_video(path: Path, frames: np.ndarray, fps: float, quality: str = "high", preset: str = "medium") -> None:
    """Writes uint8 `[T, H, W, 3]` frames as an H.264 yuv420p mp4 (see `VideoWriter`)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"write_video expects uint8 frames [T, H, W, 3] with T >= 1, got {frames.shape}.")
    with VideoWriter(path, height=frames.shape[1], width=frames.shape[2], fps=fps, quality=quality, preset=preset) as writer:
        writer.write(frames)


class VideoWriter:
    """Streams frames into an H.264 yuv420p mp4 that appears at `path` only when closed cleanly.

    The writer owns its ffmpeg process, which runs in its own session so a terminal's Ctrl-C cannot
    cut a file short behind the writer's back. `close` publishes the file; `abort`, and `close` when
    anything (KeyboardInterrupt and SIGTERM's exceptions included) interrupts it, kills ffmpeg, waits
    for it to be gone and removes the temporary file, so no exit path leaves `.<name>.tmp*` behind.
    Use as a context manager, or call `close`/`abort` yourself.
    """

    def __init__(self, path: Path, height: int, width: int, fps: float, quality: str = "high", preset: str = "medium"):
        """`quality` sets the picture (CRF); `preset` x264's effort per frame: "veryfast" encodes the same
        quality about 2.6x faster into a file about 30% larger (the comparison videos use it)."""
        if height % 2 or width % 2:
            raise UserError(
                f"Cannot write {path}: frames are {height}x{width} (HxW), but H.264 yuv420p needs an even "
                "height and width.",
                "resize or crop the frames to even sizes first (training sizes are multiples of 16).",
            )
        if quality not in QUALITY_CRF:
            raise ValueError(f"quality must be one of {sorted(QUALITY_CRF)}, got {quality!r}.")
        if preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {preset!r}.")
        self.path = Path(path)
        self.shape = (height, width, 3)
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_sibling(self.path)
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ffmpeg can never block on it
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", str(Fraction(fps).limit_denominator()), "-i", "-",  # a rational rate keeps 24000/1001 exact
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(QUALITY_CRF[quality]), "-preset", preset,
            "-f", "mp4", str(self._tmp),
        ]
        self._process = None
        try:
            # a stop arriving while ffmpeg starts would leave it running unseen and writing the file
            with _stops_deferred():
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                 stderr=self._stderr, start_new_session=True)
        except BaseException:
            self.abort()
            raise

    def write(self, frames: np.ndarray) -> None:
        """Appends one frame `[H, W, 3]` or several `[T, H, W, 3]` (uint8)."""
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise ValueError(f"{self.path}: expected uint8 frames of shape [T, {self.shape}], got "
                             f"{frames.dtype} {frames.shape}.")
        try:
            self._process.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {self._ffmpeg_error()}") from None
        self.frames_written += len(frames)

    def close(self) -> None:
        """Waits for ffmpeg to finish the file and publishes it; on any failure the temporary file goes."""
        try:
            if self.frames_written == 0:
                raise ValueError(f"{self.path}: refusing to write a video with no frames.")
            self._process.stdin.close()
            if self._process.wait() != 0:
                raise RuntimeError(f"ffmpeg could not write {self.path}: {self._ffmpeg_error()}")
            publish(self._tmp, self.path)
            self._stderr.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Kills ffmpeg, waits until it is gone (so it cannot create the file again) and removes the
        temporary file. Safe to call more than once."""
        with _stops_deferred():
            if self._process is not None:
                if self._process.poll() is None:
                    self._process.kill()
                self._process.wait()
                with contextlib.suppress(OSError):  # unflushed frames into a dead pipe
                    self._process.stdin.close()
            remove_quietly(self._tmp)
            self._stderr.close()

    def _ffmpeg_error(self) -> str:
        self._stderr.seek(0)
        return _ffmpeg_reason(self._stderr.read().decode(errors="replace") or "no message")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect as it ends, with the handlers the
    process had. Only the main thread owns signal handlers; elsewhere this does nothing."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    pending = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending:
            signal.raise_signal(signum)


def cover_scale(src_h: int, src_w: int, height: int, width: int) -> float:
    """The factor `resize_cover_crop` scales a src_h x src_w frame by: above 1, it is upscaled."""
    return max(height / src_h, width / src_w)


def resize_cover_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scales `[T, h, w, 3]` frames to cover `height` x `width`, then centre-crops to exactly that.

    Cover-then-crop keeps the aspect ratio (no stretching) and fills the whole frame (no bars).
    PIL's bilinear filter widens its support when shrinking, so downscaling is antialiased, and
    the crop box is fractional, so the crop stays centred to the sub-pixel.
    """
    frames = np.asarray(frames)
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames
    scale = cover_scale(src_h, src_w, height, width)
    crop_h, crop_w = height / scale, width / scale
    top, left = (src_h - crop_h) / 2, (src_w - crop_w) / 2
    box = (left, top, left + crop_w, top + crop_h)
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR, box=box))
    return out


def side_by_side(videos: list[np.ndarray], labels: list[str], gap: int = 8) -> np.ndarray:
    """Puts equally long videos next to each other, each under a dark strip that carries its label.

    Used to compare base and LoRA generations: the label strip sits above each panel instead of
    over it so no generated pixels are hidden. Heights are bottom-padded to the tallest panel and
    all sizes stay even, so the result can be written with `write_video` directly.
    """
    if len(videos) != len(labels) or not videos:
        raise ValueError(f"side_by_side needs one label per video, got {len(videos)} videos and {len(labels)} labels.")
    lengths = {len(v) for v in videos}
    if len(lengths) != 1:
        raise ValueError(f"side_by_side needs equally long videos, got lengths {[len(v) for v in videos]}.")
    font = ImageFont.load_default()
    strip_h = _even(_text_height(font) + 6)
    panel_h = strip_h + _even(max(v.shape[1] for v in videos))
    num_frames = lengths.pop()
    panels = [_labelled_panel(v, label, font, strip_h, panel_h) for v, label in zip(videos, labels)]
    spacer = np.full((num_frames, panel_h, gap, 3), 16, dtype=np.uint8)
    pieces = [panels[0]]
    for panel in panels[1:]:
        pieces += [spacer, panel]
    return np.concatenate(pieces, axis=2)


def _labelled_panel(video: np.ndarray, label: str, font, strip_h: int, panel_h: int) -> np.ndarray:
    num_frames, h, w, _ = video.shape
    panel = np.full((num_frames, panel_h, _even(w), 3), 16, dtype=np.uint8)
    strip = Image.new("RGB", (_even(w), strip_h), (32, 32, 32))
    ImageDraw.Draw(strip).text((4, 3), _fit_text(label, font, _even(w) - 8), fill=(235, 235, 235), font=font)
    panel[:, :strip_h] = np.asarray(strip)  # drawn once, broadcast to every frame
    panel[:, strip_h : strip_h + h, :w] = video
    return panel


def _fit_text(text: str, font, max_width: int) -> str:
    """Shortens `text` with '...' until it fits `max_width` pixels."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "...") > max_width:
        text = text[:-1]
    return text + "..."


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom


def _even(n: int) -> int:
    return n + (n % 2)


def _open_reader(path: Path, max_frames: int | None):
    """Starts ffmpeg decoding to raw RGB; returns (raw frame generator, header dict)."""
    if not Path(path).is_file():
        raise UserError(f"Video {path} does not exist.", "check the path.")
    output_params = ["-map", "0:v:0", "-fps_mode", "passthrough"]  # see `count_frames`
    output_params += ["-frames:v", str(max_frames)] if max_frames is not None else []
    reader = imageio_ffmpeg.read_frames(str(path), output_params=output_params, input_params=["-nostdin"])
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration, IndexError, AttributeError) as err:
        # IndexError/AttributeError: imageio's header parser found no video stream line.
        reader.close()
        raise _undecodable(path, str(err) or "no video stream") from None
    width, height = meta["size"]
    return reader, {"height": height, "width": width, "fps": _exact_fps(meta["fps"])}


def _decode(path: Path, reader, header: dict) -> Iterator[np.ndarray]:
    shape = (header["height"], header["width"], 3)
    index = 0
    try:
        for index, raw in enumerate(reader):
            yield np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    except RuntimeError as err:  # imageio-ffmpeg reports a stream that breaks mid-way this way
        raise _undecodable(path, str(err), at_frame=index + 1) from None
    finally:
        reader.close()


def _read_header(path: Path) -> dict:
    reader, header = _open_reader(path, max_frames=1)
    reader.close()
    if header["fps"] <= 0:
        raise UserError(f"Video {path} has no frame rate in its header.", "re-encode it with a constant frame rate.")
    return header


def _exact_fps(printed_fps: float) -> float:
    """ffmpeg prints 24000/1001 as '23.98'; recover the NTSC rate so durations do not drift."""
    ntsc = round(printed_fps * 1.001) / 1.001
    if printed_fps != round(printed_fps) and abs(printed_fps - ntsc) < 0.006:
        return ntsc
    return float(printed_fps)


def _undecodable(path: Path, ffmpeg_text: str, at_frame: int | None = None) -> UserError:
    where = f" at frame {at_frame}" if at_frame else ""
    return UserError(
        f"Video {path} could not be decoded{where}: {_ffmpeg_reason(ffmpeg_text)}.",
        "re-encode or remove the file (it may be truncated or not a video).",
    )


def _ffmpeg_reason(text: str) -> str:
    """The most telling line of ffmpeg's stderr (it ends with the error), kept short."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("===")]
    errors = [line for line in lines if "error" in line.lower() or "invalid" in line.lower() or "not found" in line]
    reason = (errors or lines or ["unknown error"])[-1]
    return reason[:200].rstrip(".")
