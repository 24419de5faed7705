"""What the command line shows of the log: tmdeploy's progress lines, other libraries' warnings, and less
noise than they make on their own. Library code only logs; this is the one place that decides."""

from __future__ import annotations

import logging
import sys

# Advice other libraries log that does not apply to what tmdeploy asks of them.
NOISE = (
    # onnxruntime's quantize_static advises quant_pre_process (shape inference, constant folding): the
    # exporter already did both, and its symbolic shape inference fails on the template-matching graphs.
    "pre-processing before quantization",
)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (tests swap it), without the known noise."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: not any(text in record.getMessage() for text in NOISE))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(debug: bool) -> None:
    """tmdeploy at INFO (DEBUG with ``--debug``), everything else at WARNING, on stderr; once per process."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger("tmdeploy").setLevel(logging.DEBUG if debug else logging.INFO)
