"""The parity check: prove the ONNX file computes what the PyTorch checkpoint computes.

Both sides run inside polygraphy's Comparator on the same inputs; polygraphy's compare functions give the
element-wise verdict and the statistics a person needs to judge a deployment (errors and their 99th
percentile, the largest being the smallest tolerance that would pass alone, cosine similarity); top-1
agreement is ours. Inputs and reference outputs can be
saved in polygraphy's own JSON formats so the polygraphy CLI can re-check the file without tmdeploy.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator, RunResults
from polygraphy.common import TensorMetadata
from polygraphy.json import save_json
from polygraphy.logger import G_LOGGER

from tmdeploy import data
from tmdeploy.checkpoint import Deployable, as_deployable
from tmdeploy.errors import TmdeployError, first_line
from tmdeploy.export import int8_saturation, metadata
from tmdeploy.export.to_onnx import INPUT_NAME, DeployModule
from tmdeploy.fileio import atomic_write, json_text
from tmdeploy.sanitize import clean
from tmdeploy.threads import torch_threads
from tmdeploy.runtimes import get as get_runtime
from tmdeploy.values import check_image_memory
from tmdeploy.verify.runners import TorchRunner, onnxrt_runner
from tmdeploy.verify.options import CheckOptions
from tmdeploy.verify.stats import DEFAULT_TOLERANCES, Tolerance, output_stats



@dataclass
class CheckReport:
    onnx: str
    checkpoint: str
    precision: str
    tolerance: dict
    passed: bool
    outputs: dict[str, dict]
    inputs: str
    batches: list[int]
    warnings: list[str] = field(default_factory=list)
    divergence: dict | None = None
    device: str = "cpu"  # onnxruntime's provider; the PyTorch reference ran on the CPU
    runtime: str = "onnxruntime"  # what ran the ONNX file
    arithmetic: str = ""  # INT8 files: whose integer arithmetic was judged (INT8_ARITHMETIC)

    def to_json(self) -> str:
        return json_text(asdict(self))  # int8's infinite tolerances and a NaN graph's errors become null

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"# Parity check: {verdict}", "",
                 f"- ONNX: `{self.onnx}` ({self.precision}), {self.runtime} on {self.device.upper()}", f"- Checkpoint: `{self.checkpoint}`",
                 f"- Inputs: {self.inputs}, batch sizes {', '.join(map(str, self.batches))}",
                 f"- Tolerance: {Tolerance(**self.tolerance).describe()}", ""]
        lines += ["| output | pass | max abs | mean abs | p99 abs | max rel | p99 rel | cosine | top-1 agreement |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, s in self.outputs.items():
            lines.append(
                f"| {name} | {'yes' if s['passed'] else 'no'} | {s['max_abs_error']:.3g} | {s['mean_abs_error']:.3g} "
                f"| {s['p99_abs_error']:.3g} | {s['max_rel_error']:.3g} | {s['p99_rel_error']:.3g} "
                f"| {s['cosine_similarity']:.6f} | {s['top1_agreement']:.2%} |")
        if self.divergence:
            d = self.divergence
            lines += ["", f"First diverging block: `{d['block']}` ({d['type']}), first at `{d['module']}` "
                          f"({d['module_type']}), max abs error {d['max_abs_error']:.3g}"]
        if self.arithmetic:
            lines += ["", f"- INT8 arithmetic judged: {self.arithmetic}"]
        lines += [f"- warning: {w}" for w in self.warnings]
        return clean("\n".join(lines) + "\n", newlines=True)  # names in it come from the files


def _reference_module(ckpt: Deployable, meta: metadata.ModelMetadata) -> DeployModule:
    """The trained model exactly as PyTorch runs it (training form, BatchNorm unfolded), in float32."""
    model = ckpt.copy_module()
    return DeployModule(model, ckpt.card.mean, ckpt.card.std, meta.preprocess == "baked",
                        "patch_logits" in meta.outputs).eval()


def make_feeds(meta: metadata.ModelMetadata, options: CheckOptions) -> tuple[list[dict], str]:
    """Input feed dicts: seeded random tensors (each batch size, ``iterations`` times), or every held-out image
    of ``options.data`` (or its first ``limit``), in batches of each size in turn: a verdict on real images
    rests on all of them, not on a few that one image can flip."""
    if options.data is not None:
        return _data_feeds(meta, options)
    c, h, w = meta.input_size
    check_image_memory("--batch x --iterations", sum(options.batches) * options.iterations, (c, h, w),
                       1 if meta.preprocess == "baked" else 4, fix="lower either")
    rng = np.random.default_rng(options.seed)
    feeds = []
    for batch in options.batches:
        for _ in range(options.iterations):
            if meta.preprocess == "baked":
                x = rng.integers(0, 256, size=(batch, h, w, c), dtype=np.uint8)
            else:
                x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
            feeds.append({INPUT_NAME: np.ascontiguousarray(x)})
    return feeds, f"seeded random (seed {options.seed})"


def _data_feeds(meta: metadata.ModelMetadata, options: CheckOptions) -> tuple[list[dict], str]:
    c, h, _ = meta.input_size
    split = data.load(options.data, image_size=h, in_chans=c, seed=options.seed)
    count = len(split.test) if options.limit is None else min(options.limit, len(split.test))
    check_image_memory(f"--data {clean(split.name)}", count, (c, h, h), fix="bound them with --limit")
    images, _ = data.stack(split.test, limit=options.limit)
    if not len(images):
        raise TmdeployError(f"--data {clean(split.name)}: its test split holds no images")
    feeds, used, sizes = [], 0, itertools.cycle(options.batches)
    while used < len(images):
        batch = next(sizes)
        feeds.append({INPUT_NAME: np.ascontiguousarray(meta.graph_input(images[used:used + batch].numpy(), raw=True))})
        used += batch
    return feeds, f"data '{clean(split.name)}', {len(images)} test images ({split.split_by})"


@dataclass
class Reference:
    """The PyTorch side of a check: its inputs, where they came from, the module and its outputs on them."""

    feeds: list[dict]
    source: str
    module: DeployModule
    results: RunResults  # the module's outputs on ``feeds``, one runner's


class References:
    """The PyTorch side of checks on ``ckpt``, made once per input format and inputs: optimize checks every
    candidate on the same images, and PyTorch need not run them again for each one."""

    def __init__(self, model) -> None:
        self.given = model  # what the caller passes to check() with these references
        self.ckpt = as_deployable(model)
        self._made: dict[tuple, Reference] = {}

    def get(self, meta: metadata.ModelMetadata, options: CheckOptions) -> Reference:
        source = options.data if options.data is None or isinstance(options.data, str) else id(options.data)
        key = (meta.input_format(), tuple(meta.outputs), source, options.limit, options.seed, tuple(options.batches),
               options.iterations)
        if key not in self._made:
            self._made[key] = _reference(self.ckpt, meta, options)
        return self._made[key]


def _reference(ckpt: Deployable, meta: metadata.ModelMetadata, options: CheckOptions) -> Reference:
    feeds, source = make_feeds(meta, options)
    c, h, w = meta.input_size
    dtype, shape = (np.uint8, (-1, h, w, c)) if meta.preprocess == "baked" else (np.float32, (-1, c, h, w))
    module = _reference_module(ckpt, meta)
    torch_runner = TorchRunner(module, TensorMetadata().add(INPUT_NAME, dtype, shape), meta.outputs)
    return Reference(feeds, source, module, Comparator.run([torch_runner], data_loader=feeds))


def check(model, onnx_path, options: CheckOptions = CheckOptions(), runner=None,
          references: References | None = None) -> CheckReport:
    """Run the model (a Deployable or a zoo checkpoint) and the ONNX file side by side and compare every output.

    ``runner``: a polygraphy runner to judge instead of the one ``options`` name (optimize's TensorRT
    candidates, which the runtimes' own runners cannot run); ``onnx_path`` still gives the metadata.
    ``references``: PyTorch's side kept from earlier checks of ``ckpt`` (optimize's candidates)."""
    ckpt = references.ckpt if references is not None else as_deployable(model)
    if references is not None and model is not references.given and model is not ckpt:
        raise ValueError("references: made for another model")
    # polygraphy's per-iteration log, and numpy's warnings on NaN/Inf outputs: the report says it all
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(all="ignore"):
        return _check(ckpt, onnx_path, options, runner, references if references is not None else References(ckpt))


def _check(ckpt: Deployable, onnx_path, options: CheckOptions, runner, references: References) -> CheckReport:
    options.validate()
    onnx_path = Path(onnx_path)
    model, meta = metadata.read_model(onnx_path)
    base = DEFAULT_TOLERANCES.get(meta.precision, DEFAULT_TOLERANCES["fp32"])
    tol = Tolerance(atol=base.atol if options.atol is None else options.atol,
                    rtol=base.rtol if options.rtol is None else options.rtol,
                    min_top1=base.min_top1 if options.min_top1 is None else options.min_top1,
                    elementwise=base.elementwise or options.atol is not None or options.rtol is not None)
    warnings = []
    if meta.source_sha256 and ckpt.sha256 and meta.source_sha256 != ckpt.sha256:
        warnings.append("the checkpoint is not the one this ONNX file was exported from (sha256 differs)")
    if list(meta.input_size) != list(ckpt.card.input_size):
        raise TmdeployError(f"input sizes differ: ONNX {meta.input_size}, checkpoint {list(ckpt.card.input_size)}")
    arithmetic = None  # a key of INT8_ARITHMETIC: how an INT8 file is judged on onnxruntime's CPU provider
    if meta.precision == "int8" and runner is None and options.runtime == "onnxruntime" and options.device == "cpu":
        arithmetic, warning = _int8_arithmetic(model, onnx_path, options)
        warnings += [warning] if warning else []
    with torch_threads(1):  # small batches: more threads only wait on each other, badly so on a shared machine
        reference = references.get(meta, options)
        if runner is None:
            if arithmetic == "tensorrt":  # TensorRT's arithmetic: onnxruntime without its fusions
                runner = onnxrt_runner(onnx_path, fuse=False)
            else:
                runtime = get_runtime(options.runtime, options.device)
                runner = runtime.runner(runtime, onnx_path, options)
        try:
            results = Comparator.run([runner], data_loader=reference.feeds)
        except Exception as err:  # noqa: BLE001 - the runtime refused the graph or failed inside it
            raise TmdeployError(f"{onnx_path}: {options.runtime} failed to run the graph ({type(err).__name__}: "
                                f"{clean(first_line(err, 200))})") from err
    ((_, ref_iters),) = reference.results.items()
    ((_, onnx_iters),) = results.items()
    outputs = {}
    for name in meta.outputs:
        stats = output_stats(name, [it[name] for it in ref_iters], [it[name] for it in onnx_iters], tol)
        stats["passed"] = stats["elementwise_passed"] and stats["finite"] and stats["top1_agreement"] >= tol.min_top1
        outputs[name] = stats
    passed = all(s["passed"] for s in outputs.values())
    if options.save_inputs:
        atomic_write(Path(options.save_inputs),
                     lambda tmp: save_json(reference.feeds, str(tmp), description="inputs"), ckpt.path, onnx_path)
    if options.save_outputs:
        atomic_write(Path(options.save_outputs), lambda tmp: reference.results.save(str(tmp)), ckpt.path, onnx_path)
    divergence = None
    if options.localize and not passed:
        from tmdeploy.verify.localize import first_divergence

        divergence = first_divergence(reference.module, onnx_path, reference.feeds[0], tol, options.device)
    return CheckReport(
        onnx=str(onnx_path), checkpoint=str(ckpt.path or ""), precision=meta.precision, tolerance=asdict(tol),
        passed=passed, outputs=outputs, inputs=reference.source, batches=list(options.batches), warnings=warnings,
        divergence=divergence, device=options.device, runtime=options.runtime,
        arithmetic=INT8_ARITHMETIC[arithmetic] if arithmetic else "",
    )


INT8_ARITHMETIC = {
    "tensorrt": "TensorRT's exact integer arithmetic: its QDQ ops run one by one in float (onnxruntime's "
                "fusions off), not on onnxruntime's x86 kernels, which it was not made for",
    "onnxruntime": "onnxruntime's x86 integer kernels, as deployed",
}


def _int8_arithmetic(model, onnx_path: Path, options: CheckOptions) -> tuple[str, str | None]:
    """How an INT8 file is judged on the CPU (a key of INT8_ARITHMETIC), and the warning for one that can
    saturate there without VNNI.

    A file of TensorRT's recipe (signed activations) is judged in the arithmetic it was made for; judged on
    onnxruntime's x86 kernels it would measure their 16-bit saturation on CPUs without VNNI instead
    (tmdeploy.export.int8_saturation)."""
    if options.tensorrt_int8_arithmetic and int8_saturation.signed_activations(model):
        return "tensorrt", None
    return "onnxruntime", int8_saturation.warning(model, onnx_path.parent)


def report_names(stem: str) -> tuple[str, str]:
    """The report's file names, known before the check runs so the CLI can refuse a bad target first."""
    return f"{stem}.check.json", f"{stem}.check.md"


def write_report(report: CheckReport, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.check.json`` and ``<stem>.check.md`` into ``directory``."""
    json_path, md_path = (directory / name for name in report_names(stem))
    atomic_write(json_path, lambda tmp: tmp.write_text(report.to_json()))
    atomic_write(md_path, lambda tmp: tmp.write_text(report.to_markdown()))
    return json_path, md_path
