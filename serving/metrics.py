"""Prometheus metrics of the service (prometheus_client, multiprocess mode under BentoML).

BentoML gives every worker process PROMETHEUS_MULTIPROC_DIR and its /metrics endpoint merges all
the processes' files with prometheus_client's MultiProcessCollector. prometheus_client picks its
storage when it is first imported, so the metrics are created lazily by `get_metrics()` in each
worker, never at module import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    inference_seconds: Any  # Histogram[model]: one ONNX Runtime call (a whole batch)
    queue_seconds: Any  # Histogram[model]: per image, hand-off by the API worker -> its batch starts
    batch_size: Any  # Histogram[model]: images per ONNX Runtime call
    predictions: Any  # Counter[model, class_name]: predicted classes
    errors: Any  # Counter[kind]: 4xx/5xx answers by error kind
    provider: Any  # Gauge[model, provider] = 1: the execution provider ORT actually uses
    offline_accuracy: Any  # Gauge[model, split]: the model card's validation/test accuracy
    feedback: Any  # Counter[model, class_name]: feedback received, by true class
    feedback_correct: Any  # Counter[model, class_name]: ... of which the prediction was right
    online_accuracy: Any  # Gauge[model, class_name]: correct/total from feedback ("all" = every class)


_METRICS: Metrics | None = None


def get_metrics() -> Metrics:
    """This process's metric objects, created on first use (after BentoML set PROMETHEUS_MULTIPROC_DIR)."""
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Gauge, Histogram

        batch_buckets = tuple(float(2**i) for i in range(0, 11))
        _METRICS = Metrics(
            inference_seconds=Histogram(
                "galaxyvit_inference_seconds", "ONNX Runtime time per batch", ["model"], buckets=LATENCY_BUCKETS
            ),
            queue_seconds=Histogram(
                "galaxyvit_queue_seconds", "Time an image waits for its batch", ["model"], buckets=LATENCY_BUCKETS
            ),
            batch_size=Histogram(
                "galaxyvit_batch_size", "Images per ONNX Runtime call", ["model"], buckets=batch_buckets
            ),
            predictions=Counter("galaxyvit_predictions", "Predictions by predicted class", ["model", "class_name"]),
            errors=Counter("galaxyvit_errors", "Error answers by kind", ["kind"]),
            provider=Gauge(
                "galaxyvit_provider", "Active ONNX Runtime provider (1)", ["model", "provider"], multiprocess_mode="max"
            ),
            offline_accuracy=Gauge(
                "galaxyvit_offline_accuracy", "Model card accuracy", ["model", "split"], multiprocess_mode="max"
            ),
            feedback=Counter("galaxyvit_feedback", "Feedback received by true class", ["model", "class_name"]),
            feedback_correct=Counter(
                "galaxyvit_feedback_correct", "Feedback where the prediction was right", ["model", "class_name"]
            ),
            online_accuracy=Gauge(
                "galaxyvit_online_accuracy",
                "Online accuracy from feedback (class_name=all: every class)",
                ["model", "class_name"],
                multiprocess_mode="mostrecent",
            ),
        )
    return _METRICS


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
