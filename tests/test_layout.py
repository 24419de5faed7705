"""The package's shape: light modules import without torch, and the CLI's defaults are the API's."""

import subprocess
import sys


def test_numpy_only_modules_import_without_torch():
    code = ("import sys, tmdeploy.verify.stats, tmdeploy.bench.timing, tmdeploy.bench.machine, tmdeploy.report, "
            "tmdeploy.export.options, tmdeploy.export.metadata, tmdeploy.runtime, tmdeploy.cli; "
            "tmdeploy.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'polygraphy', 'onnxscript') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fronts_re_export_functions_not_modules():
    from tmdeploy.bench import BenchOptions, run
    from tmdeploy.verify import CheckOptions, check

    assert callable(run) and callable(check) and BenchOptions().device == "cpu" and CheckOptions().batches
