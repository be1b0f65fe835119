"""The test modules that never import Lightning (``lightning`` or ``pytorch_lightning``), at
module level or inside a test: the energy math, the meter and its sources, traces, the report
and the books without Lightning. ``conftest.py`` marks their tests ``lightning_free``;
``test_lightning_free.py`` checks that each one imports no Lightning. The CI run on the oldest
supported Lightning skips them (``-m "not lightning_free"``): a Lightning release cannot change
what they test, and the run on the newest Lightning runs them all.
"""

from __future__ import annotations

MODULES = frozenset(
    {
        "test_accountant.py",
        "test_carbon.py",
        "test_counter_clock.py",
        "test_doctor.py",
        "test_estimate.py",
        "test_functional.py",
        "test_host_reduce.py",
        "test_lightning_free.py",
        "test_meter.py",
        "test_meter_estimate.py",
        "test_meter_sync.py",
        "test_metrics_distributed.py",
        "test_nvml_source.py",
        "test_poll_schedule.py",
        "test_rapl.py",
        "test_refresher.py",
        "test_refresher_rows.py",
        "test_report.py",
        "test_report_discovery.py",
        "test_report_fast_energy.py",
        "test_report_interrupted.py",
        "test_report_prefix.py",
        "test_report_robustness.py",
        "test_report_scale.py",
        "test_sample_grid.py",
        "test_sample_store.py",
        "test_segment_fit_reference.py",
        "test_segment_solve.py",
        "test_step_accuracy.py",
        "test_step_boundaries.py",
        "test_step_clock.py",
        "test_synthetic.py",
        "test_timeline.py",
        "test_timeline_emit.py",
        "test_timeline_many.py",
        "test_timeline_watermarks.py",
        "test_timeline_properties.py",
        "test_trace.py",
        "test_trace_partial.py",
        "test_trace_properties.py",
        "test_validate.py",
    }
)
