"""Evaluation: real gap masks transplanted onto real truth, scored per band.

* :mod:`~dipfill.eval.metrics` — RMSE, r², PSNR, SSIM over masked pixels (arrays only);
* :mod:`~dipfill.eval.cases` — transplant cases, scores per tile and pooled, tile choice (arrays only);
* :mod:`~dipfill.stretch` — percentile stretches for scoring and for pictures;
* :mod:`~dipfill.eval.methods` — ``--method`` text → a ready engine;
* :mod:`~dipfill.eval.inputs` — the two dates, directions and tiles, checked before anything runs;
* :mod:`~dipfill.eval.experiments` — ``dipfill eval``: files in, report out;
* :mod:`~dipfill.eval.report` — ``report.json`` and ``report.md`` from one document;
* :mod:`~dipfill.eval.plots` — quicklooks and convergence plots (matplotlib, optional).

Submodules are imported where used: importing this package pulls in nothing heavy.
"""
