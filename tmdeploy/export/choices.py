"""Export option values and defaults, importable without torch (the CLI builds its help from them)."""

FORMS = ("folded", "folded-padded", "deferred", "normalized")
DEFAULT_FORM = "normalized"  # fastest on ONNX Runtime CPU: see benchmarks/tm_forms.py and the README table
MIN_OPSET = 13  # ONNX Softmax before opset 13 flattens from the axis: a channel soft-max would be wrong
DEFAULT_OPSET = 18
