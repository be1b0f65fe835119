"""The end-of-stage summary: merged across ranks, as JSON and as a table for people.

Example:
    >>> s = build_summary([{"rank": 0, "duration_s": 10.0, "devices": [], "phases_J": {},
    ...     "steps": {}, "epochs": {}, "epoch_steps": {}, "gaps": [], "errors": {},
    ...     "unavailable": {}}], stage="fit")
    >>> s["energy_J"]
    0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_watt.attribution.ledger import gap_joules
from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.schema import SUMMARY_FORMAT

if TYPE_CHECKING:
    from lightning_watt.score.carbon import CarbonModel

FORMAT = SUMMARY_FORMAT
#: Where a rank's meter and books ran, as the summary's ``measured_in`` says it.
MEASURED_IN_HELPER = "a helper process"
MEASURED_IN_THREADS = "threads of the training process"


def build_summary(
    ranks: list[dict[str, Any]],
    *,
    stage: str,
    offset: dict[str, Any] | None = None,
    carbon: CarbonModel | None = None,
    score: dict[str, Any] | None = None,
    replay: list[str] | None = None,
    world_size: int = 1,
    epoch_metrics: dict[int, dict[str, float]] | None = None,
    run_name: str = "",
    interrupted: bool = False,
    prefix: str = "watt/",
) -> dict[str, Any]:
    """Merge every rank's local numbers (devices counted once by uuid, phases summed).

    ``offset`` holds earlier segments of a resumed fit (they are part of ``energy_J``);
    ``run_energy_J`` is ``energy_J`` here; the accountant that knows the run's earlier stages
    replaces it with the run's cumulative energy at the end of this stage.
    """
    devices = [d for r in ranks for d in r["devices"]]
    counted = [d for d in devices if d.get("counted", True)]
    segment_j = sum(d["energy_J"] for d in counted)
    phases: dict[str, float] = {}
    steps: dict[str, int] = {}
    epochs: dict[int, dict[str, float]] = {}
    epoch_steps: dict[int, int] = {}
    for r in ranks:
        for k, v in r["phases_J"].items():
            phases[k] = phases.get(k, 0.0) + v
        for e, ph in r["epochs"].items():
            slot = epochs.setdefault(int(e), {})
            for k, v in ph.items():
                slot[k] = slot.get(k, 0.0) + v
    if ranks:
        steps = dict(ranks[0]["steps"])  # ranks step together: steps are per job, not summed
        epoch_steps = {int(e): n for e, n in ranks[0]["epoch_steps"].items()}
    prior_j = float(offset["energy_J"]) if offset else 0.0
    # Energy of earlier segments that no epoch row holds (e.g. a multi-process checkpoint's
    # energy after its last epoch end): counted before the first row's cumulative kWh.
    unassigned_prior_j = prior_j
    if offset:
        for k, v in offset.get("phases_J", {}).items():
            phases[k] = phases.get(k, 0.0) + v
        for k, n in offset.get("steps", {}).items():
            steps[k] = steps.get(k, 0) + n
        for e, ph in offset.get("epochs", {}).items():
            slot = epochs.setdefault(int(e), {})
            for k, v in ph.items():
                slot[k] = slot.get(k, 0.0) + v
                unassigned_prior_j -= v
        for e, n in offset.get("epoch_steps", {}).items():
            epoch_steps[int(e)] = epoch_steps.get(int(e), 0) + n
    total_j = prior_j + segment_j
    duration = max((r["duration_s"] for r in ranks), default=0.0)
    step_phases = {k: v for k, v in phases.items() if k != "gap"}
    # Energy in no step of the stage's own work: gaps, the sanity check, a tuner's trials.
    outside = sum(v for k, v in phases.items() if k not in ("train", "val", "test", "predict"))
    cumulative = unassigned_prior_j
    epoch_rows = []
    for e in sorted(epochs):
        ph = epochs[e]
        cumulative += sum(ph.values())
        epoch_rows.append(
            {
                "epoch": e,
                "train_J": ph.get("train", 0.0),
                "val_J": ph.get("val", 0.0),
                "gap_J": gap_joules(ph),
                "energy_kWh": cumulative / J_PER_KWH,
                "train_steps": epoch_steps.get(e, 0),
                "metrics": (epoch_metrics or {}).get(e, {}),
            }
        )
    kwh = total_j / J_PER_KWH
    methods = sorted({d["method"] for d in devices})
    summary: dict[str, Any] = {
        "format": FORMAT,
        "stage": stage,
        "run_name": run_name,
        "prefix": prefix,
        "interrupted": interrupted,
        "duration_s": duration,
        "energy_J": total_j,
        "energy_kWh": kwh,
        "segment_energy_J": segment_j,
        "run_energy_J": total_j,
        "phases_J": phases,
        "outside_steps_share": (outside / sum(phases.values())) if sum(phases.values()) else 0.0,
        "step_phases_J": step_phases,
        "mean_power_W": segment_j / duration if duration > 0 else 0.0,
        "peak_power_W": sum(d["peak_power_W"] for d in counted),
        "devices": devices,
        "epochs": epoch_rows,
        "steps": steps,
        "methods": methods,
        "estimated": any(d["estimated"] for d in counted),
        # Part of energy_J: estimated for spans in which no reader measured a device.
        "unmeasured_J": sum(d.get("unmeasured_J", 0.0) for d in counted),
        "replay": ", ".join(replay) if replay else None,
        "world_size": world_size,
        "score": score or {},
        "co2e_kg": None,
        "cost": None,
        "currency": None,
        "gaps": [g for r in ranks for g in r["gaps"]],
        "errors": {f"rank{r['rank']}:{k}": v for r in ranks for k, v in r["errors"].items()},
        "unavailable": {k: v for r in ranks for k, v in r["unavailable"].items()},
        # Where each rank's meter and books ran: a helper process or the training process's
        # threads (isolation="auto" chooses; see WattCallback).
        "measured_in": {
            f"rank{r['rank']}": r.get("measured_in", MEASURED_IN_THREADS) for r in ranks
        },
    }
    if carbon is not None:
        summary["co2e_kg"] = carbon.co2e_kg(kwh)
        summary["cost"] = carbon.cost(kwh)
        summary["currency"] = carbon.currency
        summary["carbon"] = carbon.describe()
    return summary


def _fmt_j(joules: float) -> str:
    if joules >= J_PER_KWH / 10:
        return f"{joules / J_PER_KWH:.3f} kWh"
    if joules >= 1e3:
        return f"{joules / 1e3:.2f} kJ"
    return f"{joules:.1f} J"


def _fmt_sig(value: float, unit: str) -> str:
    """Three significant digits, in a smaller unit where a number would start with 0.0."""
    if unit == "kg" and 0 < abs(value) < 1.0:
        return f"{value * 1e3:.3g} g"
    return f"{value:.3g} {unit}".rstrip()


def render_summary(summary: dict[str, Any], show_unavailable: bool = True) -> str:
    """A table for people: rich when installed, plain text otherwise. ``show_unavailable``:
    list what could not be measured (said once per callback, not at every stage)."""
    rows: list[tuple[str, str]] = [
        ("stage", summary["stage"] + (" (interrupted)" if summary.get("interrupted") else "")),
        ("duration", f"{summary['duration_s']:.1f} s"),
        ("energy", f"{_fmt_j(summary['energy_J'])} ({summary['energy_kWh']:.4g} kWh)"),
        ("mean / peak power", f"{summary['mean_power_W']:.1f} W / {summary['peak_power_W']:.1f} W"),
    ]
    for phase, joules in sorted(summary["phases_J"].items(), key=lambda kv: -kv[1]):
        rows.append((f"  {phase}", _fmt_j(joules)))
    rows.append(("outside steps", f"{100 * summary['outside_steps_share']:.1f} %"))
    run_j = summary.get("run_energy_J")
    if run_j is not None and abs(run_j - summary["energy_J"]) > 1e-9 * max(1.0, run_j):
        rows.append(("run so far", f"{_fmt_j(run_j)} (earlier stages included)"))
    unmeasured_j = summary.get("unmeasured_J") or 0.0
    if unmeasured_j > 0:
        rows.append(("  of which unmeasured", f"~{_fmt_j(unmeasured_j)} (estimated, see NOTE)"))
    for d in summary["devices"]:
        tag = " (estimated)" if d["estimated"] else ""
        dup = "" if d.get("counted", True) else " [shared, counted once]"
        rows.append(
            (
                f"rank{d['rank']}:{d['name']}{tag}{dup}",
                f"{_fmt_j(d['energy_J'])}, mean {d['mean_power_W']:.1f} W, "
                f"peak {d['peak_power_W']:.1f} W — {d['method']}",
            )
        )
        for note in d.get("method_notes", []):
            rows.append(("", f"  {note}"))
    if summary.get("co2e_kg") is not None:
        rows.append(("CO2e", _fmt_sig(summary["co2e_kg"], "kg")))
    if summary.get("cost") is not None:
        rows.append(("cost", _fmt_sig(summary["cost"], summary.get("currency") or "")))
    places = sorted(set((summary.get("measured_in") or {}).values()))
    if places:
        rows.append(("measured in", ", ".join(places)))
    if summary.get("replay"):
        rows.append(("NOTE", f"energies replayed from recorded trace(s): {summary['replay']}"))
    if summary.get("estimated"):
        rows.append(("NOTE", "some energies are estimated from utilisation, not measured"))
    for d in summary["devices"]:
        if d.get("unmeasured_J", 0.0) > 0 or d.get("unmeasured_s", 0.0) > 0:
            rows.append(
                (
                    "NOTE",
                    # Not "its last": a late start is unmeasured at the beginning, and
                    # the reason says which part of the run.
                    f"rank{d['rank']}:{d['name']} was not measured for "
                    f"{d['unmeasured_s']:.1f} s ({d.get('unmeasured_reason', '?')}): "
                    f"~{_fmt_j(d['unmeasured_J'])} estimated from "
                    f"{d.get('unmeasured_basis', '?')}",
                )
            )
    if show_unavailable:
        for name, reason in summary.get("unavailable", {}).items():
            rows.append((f"not measured: {name}", reason))
    title = "lightning-watt energy summary"
    try:
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows:
            table.add_row(k, v)
        buf = io.StringIO()
        Console(file=buf, width=110, force_terminal=False).print(table)
        return buf.getvalue()
    except ImportError:
        width = max(len(k) for k, _ in rows)
        return "\n".join([title, *(f"{k.ljust(width)}  {v}" for k, v in rows)])
