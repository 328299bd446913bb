"""``segzoo-nnunet compare``: trained runs' cross-validation results side by side.

:mod:`~nnunet_bridge.report.compare` reads the runs, :mod:`~nnunet_bridge.report.compare_report`
writes the tables and :mod:`~nnunet_bridge.report.compare_plot` the picture.
"""
