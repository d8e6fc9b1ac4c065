#!/usr/bin/env python3
"""Live video: a 30 fps 640x480 source played in real time, captioned with the full-size benchmark
models, once with the background worker (the program's live mode) and once with the demo's
synchronous loop (--sync), in the same process on the same captioner.

    python3 bench/bench_video.py [--models bench/models] [--seconds 20] [--save]

The source is a generated MJPG file read as a live source (``--live``): frame k is due at k/30 s;
a frame the loop is too late for is skipped, as a camera would overwrite it. Headless: a frame
counts as shown when it is passed to the (absent) display and the writer within one frame period of
its due time. Reports the shown frame rate against the source's, the caption latency (frame
captured -> first frame shown with its caption) median and p95, captions per second and CPU use
(process CPU time / wall time; 2.0 = both cores of this machine busy).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_models  # noqa: E402
from utils.engine.captioner import Captioner, CaptionerOptions  # noqa: E402
from utils.engine.preprocess import read_image  # noqa: E402
from utils.engine.runtime import RuntimeOptions  # noqa: E402
from utils.quantization import Precision  # noqa: E402
from utils.video.job import VideoJob, VideoStats  # noqa: E402
from utils.video.loops import process_video  # noqa: E402
from utils.video.source import open_source  # noqa: E402
from utils.video.video_file import VideoFileWriter  # noqa: E402

FPS = 30.0
SIZE = (640, 480)


def make_video(path: Path, seconds: float) -> int:
    """A slow pan and zoom over the sample photo: every frame differs, as a camera's do."""
    base = read_image(ROOT / "samples" / "chelsea.png")
    big = cv2.resize(base, None, fx=2.2 * SIZE[0] / base.shape[1], fy=2.2 * SIZE[1] / base.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, SIZE)
    count = int(seconds * FPS)
    for k in range(count):
        phase = k / count
        zoom = 1.0 + 0.6 * phase
        w, h = int(big.shape[1] / 2.2 * 2.2 / zoom), int(big.shape[0] / 2.2 * 2.2 / zoom)
        x = int((big.shape[1] - w) * (0.5 + 0.5 * np.sin(6.28 * phase)))
        y = int((big.shape[0] - h) * phase)
        writer.write(cv2.resize(big[y : y + h, x : x + w], SIZE))
    writer.release()
    return count


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run(captioner: Captioner, video: Path, sync: bool, save: Path | None) -> tuple[VideoStats, int]:
    source = open_source(str(video), realtime=True)
    writer = VideoFileWriter(save, source.fps, source.width, source.height) if save else None
    job = VideoJob(source=str(video), format="json", live=True, sync=sync, display=False)
    try:
        stats = process_video(job, captioner, source, video_out=writer, out=io.StringIO())
    finally:
        source.release()
        if writer is not None:
            writer.finish()
    return stats, source.frame_count or 0


COLUMNS = ("all_shown_fps", "shown_fps", "shown_ratio", "latency_median_ms", "latency_p95_ms", "captions_per_s",
           "caption_compute_median_ms", "cpu")


def figures(stats: VideoStats, frames: int) -> dict[str, float]:
    duration = frames / FPS
    return {
        "all_shown_fps": stats.frames_shown / duration,  # frames passed on, on time or not
        "shown_fps": stats.frames_on_time / duration,  # frames passed on within a frame period of their due time
        "shown_ratio": stats.frames_on_time / frames,
        "latency_median_ms": statistics.median(stats.latency_ms) if stats.latency_ms else float("nan"),
        "latency_p95_ms": percentile(stats.latency_ms, 95),
        "captions_per_s": stats.captions / stats.wall_s,
        "caption_compute_median_ms": statistics.median(stats.compute_ms) if stats.compute_ms else float("nan"),
        "cpu": stats.cpu_s / stats.wall_s,
    }


def print_row(name: str, row: dict[str, float]) -> None:
    print(f"{name:<34}{row['all_shown_fps']:>7.2f}{row['shown_fps']:>8.2f}{100 * row['shown_ratio']:>7.1f}%"
          f"{row['latency_median_ms']:>9.0f}{row['latency_p95_ms']:>9.0f}{row['captions_per_s']:>8.2f}"
          f"{row['caption_compute_median_ms']:>9.0f}{row['cpu']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the source (default 20)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each loop, alternating order (medians)")
    parser.add_argument("--save", action="store_true", help="also write the annotated video (mp4v) in each run")
    parser.add_argument("--compare", action="store_true",
                        help="also run ONNX Runtime with spinning threads (its own default) and with one thread")
    parser.add_argument("--int8", action="store_true", help="also run with --precision int8 (video mode's settings)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object as well")
    args = parser.parse_args()
    ensure_models(args.models)
    video_mode = RuntimeOptions(backend="onnxruntime")
    configs: dict[str, tuple[RuntimeOptions, Precision]] = {"": (video_mode, "fp32")}  # what video mode uses
    if args.int8:
        configs["int8, "] = (video_mode, "int8")
    if args.compare:
        configs["ORT spinning, "] = (RuntimeOptions(backend="onnxruntime", spin_wait=True), "fp32")
        configs["ORT 1 thread, "] = (RuntimeOptions(backend="onnxruntime", intra_op_threads=1),
                                     "fp32")
    captioners = {k: Captioner(CaptionerOptions(model_dir=args.models, offline=True, progress=False, runtime=r,
                                                precision=precision))
                  for k, (r, precision) in configs.items()}
    runs = [(k, name, sync) for k in configs for name, sync in (("live (worker)", False), ("demo loop --sync", True))]
    rows: dict[str, list[dict[str, float]]] = {f"{k}{name}": [] for k, name, _ in runs}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "source.avi"
        frames = make_video(video, args.seconds)
        first = open_source(str(video))
        frame = first.read()
        first.release()
        assert frame is not None
        for captioner in captioners.values():
            captioner.caption(frame.image)  # warm-up, as a long-running program's captioner is warm
        print(f"source: {frames} frames {SIZE[0]}x{SIZE[1]} at {FPS:g} fps ({args.seconds:g} s) in real time; "
              f"ONNX Runtime {ort.__version__}; {'writing mp4v' if args.save else 'headless, no writer'}; "
              f"{args.rounds} round(s), medians")
        for round_ in range(args.rounds):
            for k, name, sync in runs if round_ % 2 == 0 else reversed(runs):
                save = Path(tmp) / "out.mp4" if args.save else None
                stats, _ = run(captioners[k], video, sync, save)
                rows[f"{k}{name}"].append(figures(stats, frames))
    print(f"{'loop':<34}{'shown':>7}{'on time':>8}{'':>8}{'lat med':>9}{'lat p95':>9}{'capt/s':>8}{'model':>9}"
          f"{'cpu':>6}")
    results = {}
    for key, found in rows.items():
        results[key] = {c: statistics.median(r[c] for r in found) for c in COLUMNS}
        print_row(key, results[key])
    print(f"shown/on time: frames per second passed on / passed on within 1/{FPS:g} s of their due time "
          f"(target for live: on time >= {0.95 * FPS:.1f}); latency: frame captured -> its caption shown (ms); "
          "model: ms per caption; cpu: process CPU time / wall time (2 cores)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
