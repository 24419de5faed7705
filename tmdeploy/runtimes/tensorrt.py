"""TensorRT: an engine built from the ONNX file for every batch size it is given, run by polygraphy's
TrtRunner with inputs and outputs on the GPU (``pip install "tmdeploy[gpu]"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tmdeploy.errors import TmdeployError
from tmdeploy.runtimes.base import Line, Runtime


class Session:
    """A TensorRT engine run by polygraphy's TrtRunner (the bench stage's Session interface)."""

    def __init__(self, proto, workdir: Path, batches: tuple[int, ...], name: str) -> None:
        """Built into ``workdir/name.plan`` (with its sidecar) for every batch size in ``batches``."""
        import onnx

        from tmdeploy.engines.profiles import BatchProfile
        from tmdeploy.engines.tensorrt import INPUT_NAME, build_engine, open_engine

        onnx_path = workdir / f"{name}.onnx"
        if not onnx_path.exists():  # optimize has written the candidate's file there already
            onnx.save(proto, str(onnx_path))
        profile = BatchProfile(min(batches), max(batches), max(batches))
        engine = build_engine(onnx_path, batch=profile)
        self.artifact_bytes = Path(engine).stat().st_size
        self.runner, _ = open_engine(engine)
        self.input_name = INPUT_NAME

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        xt = torch.from_numpy(x).cuda()
        return lambda: self.runner.infer({self.input_name: xt}, copy_outputs_to_host=False)["logits"]

    def fetch(self, output) -> np.ndarray:
        host = output.cpu() if hasattr(output, "cpu") else output.numpy()  # torch tensor or polygraphy DeviceView
        return np.asarray(host, dtype=np.float32)

    def close(self) -> None:
        self.runner.deactivate()


def _probe() -> str | None:
    from tmdeploy.engines.tensorrt import import_tensorrt

    try:
        import_tensorrt()
    except TmdeployError as err:
        return str(err)
    return None


def _reproduce(runtime: Runtime, line: Line) -> dict:
    """polygraphy's own line on the engine itself, as built and timed."""
    return {"command": f"polygraphy run candidates/{line.name}.plan --trt {line.loads}", "cwd": "the output folder",
            "tolerances": line.what}


RUNTIMES = (
    Runtime("tensorrt", "cuda", "TensorRT", ("fp32", "fp16", "int8"),
            open=lambda runtime, proto, request: Session(proto, request.workdir, request.batches, request.name),
            reproduce=_reproduce, probe=_probe, suffix="trt", missing="skip",
            bench=("fp32", "fp16", "int8"), bench_prefix="trt", bench_int8_recipe="tensorrt"),
)
