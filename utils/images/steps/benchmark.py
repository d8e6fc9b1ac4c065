"""-b: each image captioned several times, and each stage's min, median and max; a table at the end."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from utils.images.steps import CaptionedImage, Step
from utils.output.records import Section, rounded

if TYPE_CHECKING:
    from utils.engine.captioner import Captioner
    from utils.images.job import ImageJob

Stats = dict[str, float]  # min, median, max


def stats(values: list[float]) -> Stats:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@dataclass(frozen=True)
class StageTimes(Section):
    """One image's stages over its runs, in milliseconds."""

    key = "benchmark"

    stages: dict[str, Stats]

    def json(self) -> Any:
        return {stage: rounded(values) for stage, values in self.stages.items()}


class Benchmark(Step):
    section = StageTimes

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self._times: dict[str, list[float]] = {}  # every run's time per stage, all images (-b is bounded)
        self._images = 0
        self._heading = ""
        self._load_ms = 0.0

    @classmethod
    def from_job(cls, job: ImageJob) -> Benchmark | None:
        return cls(job.benchmark_count) if job.benchmark_count else None

    @property
    def runs_per_image(self) -> int:
        return self.runs

    def start(self, captioner: Captioner) -> None:
        self._heading = f"{captioner.model} on {captioner.backend}"
        self._load_ms = captioner.load_ms

    def run(self, image: CaptionedImage, earlier: list[Section]) -> StageTimes:
        # The model stages of every run; the steps before this one (saving) ran once, after the last run.
        times = {stage: [run[stage] for run in image.runs] for stage in image.runs[0]}
        for section in earlier:
            times.update({stage: [ms] for stage, ms in section.timings.items()})
        for stage, values in times.items():
            self._times.setdefault(stage, []).extend(values)
        self._images += 1
        return StageTimes({stage: stats(values) for stage, values in times.items()})

    def finish(self) -> str | None:
        if not self._times:
            return None
        lines = [
            f"benchmark: {self._heading}, {self.runs} runs x {self._images} images (ms)",
            f"{'stage':<12}{'min':>10}{'median':>10}{'max':>10}",
            f"{'load':<12}{self._load_ms:>10.1f}",
        ]
        for stage, values in self._times.items():
            s = stats(values)
            lines.append(f"{stage:<12}{s['min']:>10.1f}{s['median']:>10.1f}{s['max']:>10.1f}")
        return "\n".join(lines)
