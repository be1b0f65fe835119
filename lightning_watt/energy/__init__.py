"""The energy core: where a reading enters and becomes joules.

* :mod:`~lightning_watt.energy.readings`: the vocabulary (a :class:`Reading`, its kinds).
* :mod:`~lightning_watt.energy.timeline`: pure math, fusing one device's readings into a
  cumulative energy ``E(t)`` whose intervals add up exactly.
* :mod:`~lightning_watt.energy.meter`: the live part, one background thread polling the
  :mod:`~lightning_watt.sources` and feeding timelines.
* :mod:`~lightning_watt.energy.trace`: watt-trace v1, the recorded form of readings and edges.
"""
