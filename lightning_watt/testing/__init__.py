"""Helpers for tests and benchmarks, not used at run time.

* :mod:`~lightning_watt.testing.synthetic`: runs with known true power, as watt-trace.
* :mod:`~lightning_watt.testing.polling`: the counter reads a live meter would have taken.
"""
