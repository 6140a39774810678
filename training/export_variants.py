"""The ONNX files of an export: fp32 from PyTorch, int8 (CPU) and fp16 (GPU) derived from it, and `explain`.

Every classifier variant has two outputs: "logits" (N, C), first, as it always was, and "embedding"
(N, D), the CLS embedding the head reads (training/embeddings.py). The `explain` variant (fp32) adds
the attention maps of training/attention.py: "heads" (N, H, g, g) and "rollout" (N, g, g).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from galaxyvit.card import ExplainRecord
from training.attention import AttentionMapsModule, family_of
from training.embeddings import WithEmbedding, head_of
from training.export_gate import (
    CLASSIFIER_OUTPUTS,
    EXPLAIN_OUTPUTS,
    INPUT_NAME,
    ExportError,
    GateInputs,
    explain_gate,
    torch_outputs,
)
from training.onnx_graph import export_ready

OPSET = 17
EXPLAIN_FILE = "explain.onnx"
KNOWN_FILES = (".onnx", ".json", ".png", ".npz")  # what an export folder holds; anything else is external data


def classifier_module(model: nn.Module) -> nn.Module:
    """`model` with the outputs of the classifier variants: (logits, embedding)."""
    return WithEmbedding(model, head_of(model))


def explain_module(model: nn.Module) -> nn.Module:
    """`model` with the outputs of the explain variant: (logits, embedding, heads, rollout), see EXPLAIN_OUTPUTS.

    For the Linformer, "rollout" is the head mean of the last layer's back-projected maps (it has no rollout)."""
    return WithEmbedding(AttentionMapsModule(model.eval()), head_of(model))


def export_onnx(model: nn.Module, path: Path, image_size: int = 224) -> None:
    """One self-contained ONNX file, opset OPSET, dynamic batch, input "images", outputs "logits", "embedding".

    The graph is that of training/onnx_graph.export_ready (same function, faster in ONNX Runtime).

    The TorchScript exporter is used on purpose: on this stack it exports in well under a second
    (the dynamo exporter takes 5-10 s), and its graph lets ONNX Runtime fuse Bias+GELU, which the
    dynamo graph (Erf/Div/Mul/Add) did not, so it also runs faster. Both passed parity.
    """
    _export(classifier_module(export_ready(model)), path, image_size, CLASSIFIER_OUTPUTS)


def export_explain_onnx(model: nn.Module, path: Path, image_size: int = 224) -> None:
    """The explain variant: outputs EXPLAIN_OUTPUTS, traced from the model itself (no graph rewrite: the
    attention hooks need the original attention modules)."""
    _export(explain_module(model), path, image_size, EXPLAIN_OUTPUTS)


def write_explain(model: nn.Module, folder: Path, inputs: GateInputs, size: int) -> ExplainRecord:
    """folder/explain.onnx, gated against PyTorch like fp32 (ExportError if it fails); its card record."""
    export_explain_onnx(model, folder / EXPLAIN_FILE, size)
    reference = torch_outputs(explain_module(model), inputs.images)
    parity = explain_gate(folder / EXPLAIN_FILE, inputs, reference)
    heads = reference[EXPLAIN_OUTPUTS.index("heads")]
    return {
        "outputs": list(EXPLAIN_OUTPUTS),
        "map_method": "linformer-value-projection" if family_of(model) == "linformer" else "rollout",
        "grid": int(heads.shape[-1]),
        "heads": int(heads.shape[1]),
        "parity": parity,
    }


def _export(module: nn.Module, path: Path, image_size: int, output_names: tuple[str, ...]) -> None:
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.suffix not in KNOWN_FILES)
    if leftovers:
        raise ExportError(f"export wrote external data files {leftovers}; expected one self-contained .onnx")


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation for CPU: MatMul weights int8, activations quantised at run time.

    Only MatMul is quantised: the single patch-embedding Conv stays fp32, since ORT's ConvInteger
    kernel is slower than its fp32 Conv on CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quiet its "consider pre-processing" advice, printed on every call
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """Weights and compute in float16 (for GPU); inputs/outputs stay float32 so clients need not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
