"""``fold_report`` under its earlier import path, which the ``fold`` command still uses: it lives in
:mod:`stripe.experiments.fold_report`."""
from .fold_report import fold_report

__all__ = ["fold_report"]
