"""ONNX Runtime sessions for exported models: provider choice, thread settings, prediction.

Shared by the service, the GPU check and the tests' offline reference, so "offline ONNX Runtime
prediction" and "what the service answers" run the very same code.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from galaxyvit.card import CardError, ModelCard, load_verified
from inference.scoring import softmax

logger = logging.getLogger("galaxyvit.serving")


def cuda_usable() -> bool:
    """CUDA EP compiled in and an NVIDIA device visible (ORT itself falls back silently otherwise)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    return Path("/dev/nvidiactl").exists() or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def requested_providers(device: str) -> list[str]:
    """auto: CUDA when usable, else CPU; cuda: CUDA (CPU as ORT's fallback); cpu: CPU only."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    if device == "cuda" or (device == "auto" and cuda_usable()):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def default_threads(workers: int = 1) -> int:
    """Intra-op threads so that all inference workers together use every core once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


@dataclass
class LoadedModel:
    """One verified ONNX model ready to run."""

    name: str
    card: ModelCard
    session: ort.InferenceSession
    onnx_path: Path

    @property
    def provider(self) -> str:
        """The provider ORT actually placed the model on (first of get_providers())."""
        return self.session.get_providers()[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, K) float32 probabilities of the card's K classes."""
        (logits,) = self.session.run([self.card.output_name], {self.card.input_name: batch})
        return softmax(logits.astype(np.float32))

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, H, W) float32 -> raw logits (N, K) and the CLS embedding (N, D) (None on an older export)."""
        names = [self.card.output_name] + ([self.card.embedding_name] if self.card.embedding_name else [])
        results = self.session.run(names, {self.card.input_name: batch})
        return results[0], (results[1] if len(results) > 1 else None)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2)) -> None:
        size = self.card.prep.size
        for n in batch_sizes:
            self.predict(np.zeros((n, 3, size, size), np.float32))


def load_model(
    name: str,
    model_dir: str | Path,
    variant: str = "fp32",
    device: str = "auto",
    threads: int = 0,
    spinning: bool = False,
) -> LoadedModel:
    """Verify (sha256) and open a model directory's variant with the requested providers.

    `spinning`: let ONNX Runtime's intra-op threads busy-wait for work (faster hand-offs on cores of
    their own, CPU taken from every other process on shared ones)."""
    onnx_path, card = load_verified(model_dir, variant)
    session = open_session(onnx_path, device, threads, spinning)
    outputs = session.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and outputs != len(card.class_names):
        raise CardError(f"{onnx_path} outputs {outputs} classes but its card names {len(card.class_names)}")
    model = LoadedModel(name=name, card=card, session=session, onnx_path=onnx_path)
    logger.info("model %s (%s, %s) on %s", name, card.family, variant, model.provider)
    return model


def open_session(
    onnx_path: Path, device: str = "auto", threads: int = 0, spinning: bool = False
) -> ort.InferenceSession:
    """An ONNX Runtime session of an already verified file, with the service's thread and provider settings."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = requested_providers(device)
    if providers[0] == "CUDAExecutionProvider":
        # CUDA and cuDNN from the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn]) are not on the loader path.
        ort.preload_dlls(directory="")
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    actual = session.get_providers()[0]
    if actual != providers[0]:
        logger.warning("%s: requested %s but ONNX Runtime runs it on %s", onnx_path, providers[0], actual)
    return session
