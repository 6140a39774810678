"""The yardstick: the served ONNX model run in-process by ONNX Runtime, no HTTP, no decoding.

The session is opened by inference.runtime.load_model and its outputs scored by inference.scoring.Scorer,
the very code the service's inference worker runs (same sha256-verified file, provider choice, thread
settings, calibration and not-a-galaxy score), and fed batches of the load test's own images,
preprocessed once with the evaluation transform. Its images/s at the batch
size the service formed is what the service could reach if HTTP, decoding, preprocessing and
batching cost nothing; service efficiency = service images/s / engine images/s.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxyvit.preprocess import denormalize, eval_batch


@dataclass
class EngineResult:
    model: str
    batch_size: int
    provider: str
    threads: int
    calls: int
    seconds_per_call: float  # median
    images_per_s: float
    cpu_ms_per_image: float  # this process's CPU time (all threads) over the timed calls, core-ms per image


class Engine:
    """One model's ONNX Runtime session plus a preprocessed image pool; `measure(batch_size)`."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        images: tuple[bytes, ...],
        variant: str,
        device: str,
        threads: int,
        spinning: bool = False,
    ) -> None:
        from PIL import Image

        from inference.runtime import load_model
        from inference.scoring import Scorer

        self.model = load_model(name, model_dir, variant, device, threads, spinning)
        self.scorer = Scorer.for_card(model_dir, self.model.card, calibrate=True)  # the service's default
        self.threads = threads
        prep = self.model.card.prep
        self.pool = eval_batch([Image.open(io.BytesIO(b)) for b in images], prep)

    @property
    def sha256(self) -> str:
        return self.model.card.sha256

    def batch(self, size: int) -> np.ndarray:
        index = np.arange(size) % len(self.pool)
        return np.ascontiguousarray(self.pool[index])

    def infer(self, batch: np.ndarray) -> list[dict]:
        """What an inference worker does with a batch (serving/inference.py): the model, then its scorer (with the
        uint8 crops, back from the batch as the catalogue gets them, when the card has a pixel rule)."""
        crops = denormalize(batch, self.model.card.prep) if self.scorer.needs_crops else None
        return self.scorer.score(*self.model.outputs(batch), crops)

    def measure(self, batch_size: int, seconds: float = 3.0, min_calls: int = 3, max_calls: int = 1000) -> EngineResult:
        """Median time of back-to-back calls at `batch_size` for about `seconds` (at least `min_calls`)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        x = self.batch(batch_size)
        self.infer(x)  # first call of this shape: allocations, kernel choice
        times: list[float] = []
        cpu_start = time.process_time()
        deadline = time.perf_counter() + seconds
        while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            self.infer(x)
            times.append(time.perf_counter() - t0)
        cpu_ms = 1000 * (time.process_time() - cpu_start)
        median = statistics.median(times)
        return EngineResult(
            model=self.model.name,
            batch_size=batch_size,
            provider=self.model.provider,
            threads=self.threads,
            calls=len(times),
            seconds_per_call=median,
            images_per_s=batch_size / median,
            cpu_ms_per_image=cpu_ms / (batch_size * len(times)),
        )
