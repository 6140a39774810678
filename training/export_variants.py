"""The ONNX files of an export: fp32 from PyTorch, and int8 (CPU) and fp16 (GPU) derived from it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from training.export_gate import INPUT_NAME, OUTPUT_NAME, ExportError
from training.onnx_graph import export_ready

OPSET = 17


def export_onnx(model: nn.Module, path: Path, image_size: int = 224) -> None:
    """One self-contained ONNX file, opset OPSET, dynamic batch, input "images", output "logits".

    The TorchScript exporter is used on purpose: on this stack it exports in well under a second
    (the dynamo exporter takes 5-10 s), and its graph lets ONNX Runtime fuse Bias+GELU, which the
    dynamo graph (Erf/Div/Mul/Add) did not, so it also runs faster. Both passed parity.
    """
    graph_model = export_ready(model)
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(
            graph_model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.suffix not in (".onnx", ".json"))
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
