"""The energy-penalised score and what energy costs.

* :mod:`~lightning_watt.score.functional`: the Green Quotient Index, as functions.
* :mod:`~lightning_watt.score.metrics`: :class:`GreenQuotientIndex`, a torchmetrics ``Metric``.
* :mod:`~lightning_watt.score.carbon`: CO2e and cost from kWh.
"""
