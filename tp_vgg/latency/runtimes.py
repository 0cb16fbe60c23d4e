"""The runtimes a model is timed in (``--runtime``): what the user deploys with.

* ``torch``: eager PyTorch on the device (the model as :func:`tp_vgg.latency.timing.prepare` made it:
  BN folded, channels-last by default).
* ``onnxruntime``: the same prepared model exported to ONNX (opset 17, fixed input shape, in
  memory) and run by an ONNX Runtime session built as a deployment would build it: all graph
  optimizations (``ORT_ENABLE_ALL``: constant folding, Conv+BN/Conv+ReLU fusion, NCHWc layout),
  sequential execution, ``intra_op_num_threads`` = the measurement's thread count, no spin-waiting
  between runs (several sessions are alive while models are timed interleaved). On ``cuda`` it
  needs onnxruntime's CUDA provider and is fed through I/O binding, so no host copy is timed.

A runtime turns a prepared model and one input into a *runner*: a function that runs one forward
pass. ``torch.compile`` is not offered: on this project's CPU it took 18 s to compile
``cifar_vgg16_bn`` and ran at the eager speed (BENCHMARKS.md), and the latency table times
hundreds of layer shapes, each of which it would compile anew.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from tp_vgg.errors import UserError
from tp_vgg.registry import Registry

ORT_INSTALL = "pip install 'tp-vgg[export]'"


@dataclass
class Runner:
    """One forward pass of a model on a fixed input. ``wall_clock``: time it with the host's
    clock (the runtime runs on its own streams, so CUDA events of torch's stream do not see it)."""

    run: Callable[[], object]
    wall_clock: bool = False

    def __call__(self) -> object:
        return self.run()


class Runtime:
    name = ""

    def check(self, device: torch.device, dtype: str) -> None:
        """UserError (one line) when this runtime cannot time on ``device`` in ``dtype`` here."""

    def version(self) -> str:
        raise NotImplementedError

    def load(self, model: nn.Module, x: torch.Tensor, threads: int,
             output_key: Optional[object] = None) -> Runner:
        raise NotImplementedError


class TorchRuntime(Runtime):
    name = "torch"

    def version(self) -> str:
        return torch.__version__

    def load(self, model, x, threads, output_key=None) -> Runner:
        return Runner(lambda: model(x))


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def check(self, device: torch.device, dtype: str) -> None:
        if not onnxruntime_installed():
            raise UserError(f"--runtime onnxruntime needs onnxruntime, which is not installed: "
                            f"{ORT_INSTALL}; accepted here: --runtime torch")
        if dtype != "fp32":
            raise UserError(f"--runtime onnxruntime times fp32 models; --dtype {dtype} is not "
                            "accepted with it (accepted: fp32)")
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("--runtime onnxruntime --device cuda needs onnxruntime's CUDA "
                                "provider (pip install onnxruntime-gpu); this onnxruntime has "
                                f"{', '.join(ort.get_available_providers())}")
        elif device.type != "cpu":
            raise UserError(f"--runtime onnxruntime runs on cpu or cuda, not {device.type}")

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def load(self, model, x, threads, output_key=None) -> Runner:
        import onnxruntime as ort

        from tp_vgg.models.zoo import LogitsOnly

        from tp_vgg.export.folding import fold_adaptive_pools

        xc = x.detach().float().cpu().contiguous()
        # the deployment form `tp-vgg export --onnx` writes: an adaptive pool ONNX cannot export
        # at this size is folded into the layer after it (exact)
        cpu_model = LogitsOnly(fold_adaptive_pools(_cpu_copy(model), xc, output_key)[0],
                               output_key).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(cpu_model, (xc,), buf, input_names=["input"],
                              output_names=["output"], opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        # idle sessions must not spin: models are timed interleaved, several sessions alive at
        # once, and a spinning pool of one steals the cores of the next (measured: a 14x
        # distortion at batch 1 on 2 cores)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        if x.device.type == "cuda":
            session = ort.InferenceSession(
                buf.getvalue(), sess_options=opts,
                providers=[("CUDAExecutionProvider", {"device_id": x.device.index or 0,
                                                      "cudnn_conv_algo_search": "EXHAUSTIVE"})])
            binding = session.io_binding()
            value = ort.OrtValue.ortvalue_from_numpy(xc.numpy(), "cuda", x.device.index or 0)
            binding.bind_ortvalue_input("input", value)
            binding.bind_output("output", "cuda", x.device.index or 0)
            return Runner(lambda: session.run_with_iobinding(binding), wall_clock=True)
        session = ort.InferenceSession(buf.getvalue(), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
        feed = {"input": xc.numpy()}
        return Runner(lambda: session.run(None, feed), wall_clock=True)


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to("cpu", dtype=torch.float32,
                                   memory_format=torch.contiguous_format).eval()


RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.register("torch", TorchRuntime(), "eager PyTorch (BN folded, channels-last)")
RUNTIMES.register("onnxruntime", OnnxRuntime(),
                  "ONNX Runtime, all graph optimizations, the same thread count")


def get(name: str) -> Runtime:
    """The runtime named ``name``; UserError naming it and the accepted ones otherwise."""
    if name not in RUNTIMES:
        raise UserError(f"--runtime {name!r} is not supported; accepted: "
                        f"{', '.join(RUNTIMES.names())}")
    return RUNTIMES.get(name)
