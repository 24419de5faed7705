"""Numbers read from files, checked as the graph will hold them, and the sizes tmdeploy accepts.

A checkpoint stores float64 as readily as float32, but the exported graph computes in float32 (or
float16): 1e300 is finite in the file and Inf in the graph, a std of 1e-300 is positive in the file and
0 in the graph. So values are checked after the cast, here, by the checkpoint, the ONNX metadata and the
runtime alike. The size bounds are checked before anything is allocated from them.
"""

from __future__ import annotations

import numpy as np

from tmdeploy.errors import UsageError

MAX_IMAGE_SIZE = 4096  # pixels per side: 4096² float32 images of 3 channels are 200 MB each already
MAX_CHANNELS = 64
MAX_BATCH = 4096  # the largest batch an exported graph's dynamic axis admits (export's Dim max)
MAX_CLASSES = 1_000_000
# Images held in memory at once (a data set resized up front, a check's inputs, a training batch): each
# bound alone let 1,797 digits at 4096² (120 GB) or --batch 4096 × --iterations 100000 (400 GB) through
MAX_IMAGE_BYTES = 4 << 30


def normalization_problem(mean, std, dtype=np.float32) -> str | None:
    """Why ``mean``/``std`` cannot normalize in ``dtype`` (the graph's float type), or None when they can."""
    with np.errstate(all="ignore"):
        try:
            m = np.asarray(mean, dtype=np.float64).astype(dtype)
            s = np.asarray(std, dtype=np.float64).astype(dtype)
        except (TypeError, ValueError, OverflowError):
            return "mean and std must be numbers"
        inverse = np.float32(1) / s.astype(np.float32)
    if not np.isfinite(m).all():
        return f"mean must be finite as {np.dtype(dtype).name}, got {list(map(float, mean))}"
    if not (np.isfinite(s).all() and (s > 0).all() and np.isfinite(inverse).all()):
        return (f"std must be positive and finite as {np.dtype(dtype).name} (1/std too), "
                f"got {list(map(float, std))}")
    return None


def plain_list(value, kind, length=None) -> bool:
    """Whether ``value`` is a list of ``kind`` (never booleans, which Python counts as ints), of ``length`` if
    given: checked before any cast, which would turn 16.7 into 16, "0.5" into 0.5 and True into 1."""
    return (isinstance(value, (list, tuple)) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
            and (length is None or len(value) == length))


def input_size_problem(size) -> str | None:
    """Why ``size`` (C, H, W) is not an input size tmdeploy accepts, or None."""
    try:
        c, h, w = (int(v) for v in size)
    except (TypeError, ValueError, OverflowError):
        return f"input_size must be three integers (C, H, W), got {size!r:.100}"
    if not 1 <= c <= MAX_CHANNELS or not (1 <= h <= MAX_IMAGE_SIZE and 1 <= w <= MAX_IMAGE_SIZE):
        return (f"input_size {[c, h, w]!s:.100} is out of range: channels 1..{MAX_CHANNELS}, "
                f"height and width 1..{MAX_IMAGE_SIZE}")
    return None
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds alike
MAX_THREADS = 1024
MAX_ITERATIONS = 1_000_000
MAX_SECONDS = 24 * 3600.0


def check_batches(batches) -> None:
    """``--batch`` as every command takes it: one or more integers, each in 1..MAX_BATCH."""
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) for b in batches):
        raise UsageError(f"--batch needs positive batch sizes, got {batches}")
    for b in batches:
        check_option("--batch", b, 1, MAX_BATCH)
    check_distinct("--batch", batches)


def check_distinct(option: str, values) -> None:
    """UsageError when a list option names a value twice (``--backends ort-fp32,ort-fp32``): every such list
    is a set of things to run or keep, and a second copy would be measured and reported twice."""
    seen = set()
    for value in values or ():
        if value in seen:
            raise UsageError(f"{option} names {value!r:.60} more than once")
        seen.add(value)


def check_image_memory(what: str, count: int, shape, itemsize: int = 4, fix: str = "") -> None:
    """UsageError when ``count`` images of ``shape`` (C, H, W) would take more than ``MAX_IMAGE_BYTES``."""
    need = int(count) * int(np.prod(shape, dtype=object)) * itemsize
    if need > MAX_IMAGE_BYTES:
        size = "x".join(map(str, shape))
        raise UsageError(f"{what}: {count:,} images of {size} take {need / 2**30:,.1f} GiB, more than tmdeploy holds "
                         f"at once ({MAX_IMAGE_BYTES >> 30} GiB){': ' + fix if fix else ''}")


def check_option(option: str, value, low, high) -> None:
    """UsageError unless ``low <= value <= high`` (NaN and booleans never pass): every free number an
    option accepts gets bounds, checked before anything is sized by it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{option} must be in {low}..{high}, got {value!r:.60}")
