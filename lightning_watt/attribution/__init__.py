"""Where a step is cut: joules attributed to steps, phases, epochs, stages and runs.

* :mod:`~lightning_watt.attribution.step_clock`: step edges as CUDA events, no sync.
* :mod:`~lightning_watt.attribution.ledger`: intervals between edges booked to phases.
* :mod:`~lightning_watt.attribution.books`: a stage's books and the run's across stages.
* :mod:`~lightning_watt.attribution.refresher`: the small thread that keeps a stage's books
  current, so that a log tick only reads cached numbers.
* :mod:`~lightning_watt.attribution.accountant`: :class:`EnergyAccountant`, the one class a
  training loop (Lightning's, Fabric's or your own) drives.
* :mod:`~lightning_watt.attribution.distributed`: sums across ranks, each device counted once.
* :mod:`~lightning_watt.attribution.summary`: the end-of-stage summary, JSON and table.
* :mod:`~lightning_watt.attribution.context`: where a metric finds the run's energy.

Nothing here imports Lightning.
"""
