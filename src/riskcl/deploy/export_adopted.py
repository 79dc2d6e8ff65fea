"""The export of a model trained elsewhere (``riskcl adopt``): one graph that decides as riskcl decided.

ONNX: three graphs composed into one with ``onnx.compose``: riskcl's declared preprocessing (``uint8`` images of
any size in, the model's input out; :class:`riskcl.data.adopted.DeclaredPreprocess` exported by
``torch.onnx.export``), the adopted model's own graph (its opset raised to riskcl's when it is older), and the
operating point (the outputs reordered to the taxonomy, declared probabilities turned into their logarithm, the
temperature, p(malignant), the threshold and the superclass-first label). The result has the inputs and outputs of
any riskcl export, so ``riskcl predict`` / ``serve`` on the export folder and the parity check work unchanged.
TorchScript: the same three parts traced into one module. An adopted TorchScript model exports to TorchScript, an
adopted ONNX model to ONNX (each stays in its own runtime).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.adopted import DeclaredPreprocess, class_order, input_hw
from ..decision import OperatingPoint
from ..experiment.folder import RunFolder
from ..io import atomic_write_with
from .graph import OUTPUTS, decide_in_graph

OPSET = 18


class AdoptedHead(nn.Module):
    """The adopted model's raw outputs ``(N, K)`` -> :data:`riskcl.deploy.export.OUTPUTS` at the operating point."""

    def __init__(self, perm, output: str, superclass, op: OperatingPoint) -> None:
        super().__init__()
        self.probs = output == "probs"
        self.register_buffer("perm", torch.as_tensor(np.asarray(perm), dtype=torch.long))
        self.register_buffer("malignant", torch.as_tensor(np.asarray(superclass) == 1))
        self.register_buffer("threshold", torch.tensor(float(op.threshold)))
        self.register_buffer("temperature", torch.tensor(float(op.temperature)))

    def forward(self, y: torch.Tensor):
        y = y.float()
        logits = torch.log(torch.clamp(y, min=1e-12)) if self.probs else y
        return decide_in_graph(logits.index_select(1, self.perm), self.temperature, self.malignant, self.threshold)


def _parts(folder: RunFolder, op: OperatingPoint) -> tuple[DeclaredPreprocess, AdoptedHead, dict]:
    record, cfg = folder.adopted(), folder.read_config()
    perm = class_order(record["classes"], folder.taxonomy().classes, "the model")
    head = AdoptedHead(perm, record["output"], folder.taxonomy().superclass, op).eval()
    return DeclaredPreprocess(cfg.adopt.__dict__).eval(), head, record


def _onnx_of(module: nn.Module, example: torch.Tensor, name: str, dims: dict, outputs: list[str], opset: int):
    import onnx

    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=(dims,), input_names=[name],
                                    output_names=outputs, opset_version=opset, optimize=True)
    return onnx.load_model_from_string(program.model_proto.SerializeToString())


def _at_opset(model, path: Path) -> tuple[object, int]:
    """The adopted graph and the opset the composed graph uses: the graph's own from riskcl's minimum up (riskcl's
    parts are exported at it); an older graph is raised to the minimum."""
    from onnx import version_converter

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version >= OPSET:
        return model, version
    try:
        return version_converter.convert_version(model, OPSET), OPSET
    except Exception as exc:  # the converter's own errors
        raise ValueError(f"{path}: cannot raise the adopted graph from opset {version} to {OPSET} ({exc}); re-export "
                         f"it at opset {OPSET} or later") from None


def _export_onnx(folder: RunFolder, op: OperatingPoint, out: Path) -> None:
    import onnx
    from onnx import compose

    pre, head, record = _parts(folder, op)
    h, w = input_hw(folder.read_config().adopt.input_size)
    source = folder.adopted_file()
    net, opset = _at_opset(onnx.load(str(source)), source)
    batch = torch.export.Dim("batch", min=1, max=4096)
    pre_graph = _onnx_of(pre, torch.zeros(2, h + 3, w + 5, 3, dtype=torch.uint8), "images",
                         {0: batch, 1: torch.export.Dim("height", min=2, max=16384),
                          2: torch.export.Dim("width", min=2, max=16384)}, ["model_input"], opset)
    net_in, net_out = net.graph.input[0].name, net.graph.output[0].name
    head_graph = _onnx_of(head, torch.zeros(2, len(record["classes"])), "scores", {0: batch}, list(OUTPUTS), opset)
    ir = max(net.ir_version, pre_graph.ir_version, head_graph.ir_version)
    for graph in (pre_graph, head_graph, net):
        graph.ir_version = ir
    pre_graph = compose.add_prefix(pre_graph, "pre/", rename_inputs=False)
    net = compose.add_prefix(net, "adopted/")
    joined = compose.merge_models(pre_graph, net, io_map=[("pre/model_input", f"adopted/{net_in}")])
    head_graph = compose.add_prefix(head_graph, "head/", rename_inputs=True, rename_outputs=False)
    joined = compose.merge_models(joined, head_graph, io_map=[(f"adopted/{net_out}", "head/scores")],
                                  outputs=list(OUTPUTS))
    onnx.checker.check_model(joined)
    atomic_write_with(out, lambda tmp: onnx.save(joined, tmp))


class _Traced(nn.Module):
    def __init__(self, pre: nn.Module, net, head: nn.Module) -> None:
        super().__init__()
        self.pre, self.net, self.head = pre, net, head

    def forward(self, images: torch.Tensor):
        y = self.net(self.pre(images))
        return self.head(y[0] if isinstance(y, (tuple, list)) else y)


def _export_torchscript(folder: RunFolder, op: OperatingPoint, out: Path) -> None:
    pre, head, _ = _parts(folder, op)
    net = torch.jit.load(str(folder.adopted_file()), map_location="cpu").eval()
    h, w = input_hw(folder.read_config().adopt.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Traced(pre, net, head), torch.zeros(2, h + 3, w + 5, 3, dtype=torch.uint8),
                                 check_trace=False)
    atomic_write_with(out, lambda tmp: traced.save(tmp))


def export_adopted(folder: RunFolder, op: OperatingPoint, fmt: str, out: Path) -> None:
    """Write the adopted run's graph to ``out`` (see the module docstring)."""
    kind = folder.adopted()["kind"]
    if kind == "table":
        folder.load_model()  # refuses, saying why
    wanted = {"onnx": "onnx", "torchscript": "torchscript"}[kind]
    if fmt != wanted:
        raise ValueError(f"{folder.path}: an adopted {kind} model exports as {wanted} (--format {wanted}): riskcl "
                         f"composes its preprocessing with the model's own graph, in the model's own runtime")
    (_export_onnx if fmt == "onnx" else _export_torchscript)(folder, op, out)
