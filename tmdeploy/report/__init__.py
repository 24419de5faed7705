"""Report stage: a bench result as files a person reads — ``bench.json``, ``bench.md`` and PNG plots — and an
optimize run's ``status.json`` as ``report.md`` and a plot (:mod:`.optimize`).

Everything here works on the result's plain dict (``BenchResult.to_dict()`` or a loaded ``bench.json``),
so a report can be rewritten from an old run without re-running it.
"""

from tmdeploy.report.bench import FILES, write_report
from tmdeploy.report.markdown import to_markdown
from tmdeploy.report.optimize import write_optimize_report

__all__ = ["FILES", "to_markdown", "write_optimize_report", "write_report"]
