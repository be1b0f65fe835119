"""Plots of runs: power over time, cumulative energy, score and accuracy per epoch, the energy
split per epoch, and accuracy against energy across runs with the Pareto front.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no GUI backend: PNGs are drawn by Agg), so callers and tests can inspect the axes before
:func:`save` writes them. Colours are the Okabe-Ito palette, readable with the common forms of
colour blindness; phases are also told apart by hatching, not by colour alone.

matplotlib is the ``plot`` extra (``pip install lightning-watt[plot]``); this module imports it
on first use and raises :class:`MissingMatplotlibError` with that hint when it is missing.

Example:
    >>> from lightning_watt.report.runs import RunData, ScalarSeries
    >>> run = RunData("demo", Path("."), scalars={
    ...     "watt/power_W": ScalarSeries("watt/power_W", [50, 100, 150], [310.0, 355.0, 340.0])})
    >>> fig = plot_power(run)
    >>> fig.axes[0].get_ylabel()
    'Power (W)'
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.report.pareto import pareto_front, pareto_points
from lightning_watt.report.rundata import RunData

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 150
INSTALL_HINT = "pip install 'lightning-watt[plot]'"

# Okabe & Ito (2008): distinguishable with protanopia, deuteranopia and tritanopia.
BLACK = "#000000"
ORANGE = "#E69F00"
SKY_BLUE = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"
LINE_COLOURS = (BLACK, BLUE, VERMILLION, GREEN, PURPLE, SKY_BLUE, ORANGE)

#: Phase -> (fill colour, alpha, hatch): hatching keeps phases apart in greyscale prints too.
PHASE_STYLE: dict[str, tuple[str, float, str | None]] = {
    "train": (SKY_BLUE, 0.22, None),
    "val": (ORANGE, 0.35, None),
    "gap": ("none", 0.6, "///"),
    "stall": (VERMILLION, 0.30, "xx"),
    "sanity": (GREEN, 0.25, None),
}
_EXTRA_PHASE_COLOURS = (PURPLE, YELLOW, BLUE, GREEN)
#: Bars of the per-epoch split: stronger than the shading, same hues.
BAR_STYLE: dict[str, tuple[str, str | None]] = {
    "train": (BLUE, None),
    "val": (ORANGE, None),
    "gap": (GREY, "///"),
}

_RC: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "legend.fontsize": 9.5,
    "legend.framealpha": 0.9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "hatch.linewidth": 0.6,
}


class MissingMatplotlibError(ImportError):
    """matplotlib is not installed; the message says how to get it."""


class NoDataError(ValueError):
    """The run has nothing this plot could show (the message says what was missing)."""


def require_matplotlib() -> None:
    """Import matplotlib or raise :class:`MissingMatplotlibError` naming the ``plot`` extra."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as err:
        raise MissingMatplotlibError(
            f"lightning-watt report needs matplotlib to draw plots: {INSTALL_HINT} "
            "(or pass --no-plots for the table and report.json alone)"
        ) from err


@contextmanager
def _style() -> Iterator[None]:
    require_matplotlib()
    import matplotlib

    # matplotlib >= 3.10 types the keys as a Literal of every rc name; a plain str dict is
    # what older releases (still supported, >= 3.7) accept, so the keys are cast, not annotated.
    with matplotlib.rc_context(cast("dict[Any, Any]", _RC)):
        yield


def _figure(width: float = 10.0, height: float = 5.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _titles(fig: Figure, ax: Axes, what: str, run: RunData | None, details: Sequence[str]) -> None:
    """Bold title naming the plot and the run, with a second bold line for a replay or an
    estimate so nobody mistakes it for a measurement; below it, in grey and wrapped, how the
    numbers were obtained."""
    title = f"{what} — {run.name}" if run is not None else what
    notes = run.notes if run is not None else []
    if notes:
        title += "\n" + "; ".join(n[0].upper() + n[1:] for n in notes)
    fig.suptitle(title)
    line = " · ".join(d for d in details if d)
    if line:
        ax.set_title(textwrap.fill(line, 125), color="#444444")


def _phase_colour(phase: str, seen: dict[str, tuple[str, float, str | None]]) -> tuple:
    if phase in PHASE_STYLE:
        return PHASE_STYLE[phase]
    if phase not in seen:
        colour = _EXTRA_PHASE_COLOURS[len(seen) % len(_EXTRA_PHASE_COLOURS)]
        seen[phase] = (colour, 0.25, None)
    return seen[phase]


def _time_unit(span_s: float) -> tuple[str, float]:
    if span_s > 3 * 3600:
        return "h", 3600.0
    if span_s > 20 * 60:
        return "min", 60.0
    return "s", 1.0


def _energy_unit(max_kWh: float) -> tuple[str, float]:
    """A unit in which the largest value reads as a plain number (small runs are a few Wh)."""
    if max_kWh >= 0.1:
        return "kWh", 1.0
    if max_kWh >= 1e-4:
        return "Wh", 1e3
    return "J", J_PER_KWH


def _joule_unit(max_J: float) -> tuple[str, float]:
    if max_J >= 1e7:
        return "MJ", 1e-6
    if max_J >= 1e4:
        return "kJ", 1e-3
    return "J", 1.0


def _legend_below(fig: Figure, ax: Axes, handles: list[Any] | None = None) -> None:
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4),
            frameon=False,
        )


# --------------------------------------------------------------------------- per run
def plot_power(run: RunData, max_points: int = 2000) -> Figure:
    """Power over time with phases shaded (from the trace), else the logged ``power_W`` (and
    ``power_W/<device>``) against the global step.

    From a trace: a black line of the fused power per bin (counter-anchored: the hardware's own
    integral decides each bin's energy), a grey band of the raw power samples' range, and the
    steps merged into train/val/stall blocks with the fit's uncovered time shaded as ``gap``.
    """
    with _style():
        from matplotlib.patches import Patch

        fig = _figure()
        ax = fig.add_subplot()
        if run.has_trace:
            assert run.columns is not None
            fit0, fit1 = run.columns.fit_window
            t0, t1 = run.columns.span
            unit, scale = _time_unit(t1 - t0)
            phase_handles: dict[str, Patch] = {}
            extra: dict[str, tuple[str, float, str | None]] = {}
            by_phase: dict[str, list[tuple[float, float]]] = {}
            for span in run.phase_spans():
                by_phase.setdefault(span.phase, []).append(
                    ((span.start - fit0) / scale, (span.end - span.start) / scale)
                )
            # One collection per phase (x in data, y spanning the axes): a long fit has
            # thousands of blocks, which separate axvspans would make slow to draw.
            order = [p for p in PHASE_STYLE if p in by_phase]
            order += sorted(p for p in by_phase if p not in PHASE_STYLE)
            for phase in order:
                colour, alpha, hatch = _phase_colour(phase, extra)
                ax.broken_barh(
                    by_phase[phase],
                    (0, 1),
                    transform=ax.get_xaxis_transform(),
                    facecolor=colour,
                    alpha=alpha,
                    hatch=hatch,
                    edgecolor=GREY if hatch else "none",
                    linewidth=0,
                    gid=f"phase:{phase}",
                    zorder=0.5,
                )
                phase_handles[phase] = Patch(
                    facecolor=colour,
                    alpha=alpha,
                    hatch=hatch,
                    edgecolor=GREY if hatch else "none",
                    label=phase,
                )
            bins = min(max_points, max(50, int((t1 - t0) / 0.1)))
            raw = run.power_envelope(bins)
            raw_kinds = sorted({kind for kind, _, _, _ in raw.values()})
            for i, (device, (kind, et, lo, hi)) in enumerate(raw.items()):
                ax.fill_between(
                    [t / scale for t in et],
                    lo,
                    hi,
                    color=GREY,
                    alpha=0.45,
                    linewidth=0,
                    step="mid",
                    label=f"raw {kind} range" if i == 0 else None,
                    gid=f"raw:{device}",
                )
            centres, per_dev, sources = run.power_over_time(max_points=max_points)
            xs = [c / scale for c in centres]
            bin_ms = (centres[1] - centres[0]) * 1000 if len(centres) > 1 else 0.0
            if len(per_dev) > 1:
                for i, (device, ws) in enumerate(per_dev.items()):
                    ax.plot(
                        xs,
                        ws,
                        color=LINE_COLOURS[1 + i % (len(LINE_COLOURS) - 1)],
                        linewidth=1.0,
                        label=f"{device} ({sources[device]})",
                    )
                total = [sum(v) for v in zip(*per_dev.values(), strict=True)]
                ax.plot(xs, total, color=BLACK, linewidth=1.4, label="total")
            else:
                for device, ws in per_dev.items():
                    ax.plot(
                        xs,
                        ws,
                        color=BLACK,
                        linewidth=1.1,
                        label=f"{device} {sources[device]}, mean per {bin_ms:.0f} ms",
                    )
            if t0 < fit0 - 0.01 or t1 > fit1 + 0.01:
                for edge in (0.0, (fit1 - fit0) / scale):
                    ax.axvline(edge, color=BLACK, linestyle=(0, (4, 3)), linewidth=0.9)
                ymax = ax.get_ylim()[1]
                ax.text(0.0, ymax, " fit start", va="top", ha="left", fontsize=9)
                ax.text((fit1 - fit0) / scale, ymax, "fit end ", va="top", ha="right", fontsize=9)
            ax.set_xlabel(f"Time since fit start ({unit})")
            if len(xs) > 1:
                half = 0.5 * (xs[1] - xs[0])
                ax.set_xlim(xs[0] - half, xs[-1] + half)
            details = [
                f"energy by {run.method}",
                f"mean {run.mean_power_W:.0f} W over the fit" if run.mean_power_W else "",
                "band: raw samples min–max" if raw_kinds else "",
            ]
            handles = ax.get_legend_handles_labels()[0]
            handles += list(phase_handles.values())
        else:
            keys = run.keys
            series = run.scalars.get(keys.power_W)
            per_device = {
                name: s
                for k, s in run.scalars.items()
                if (name := keys.device_of(k)) is not None and s.values
            }
            if not (series and series.values) and not per_device:
                raise NoDataError(f"{run.name}: no trace and no logged {keys.power_W}")
            for i, (device, s) in enumerate(sorted(per_device.items())):
                ax.plot(
                    s.steps,
                    s.values,
                    color=LINE_COLOURS[1 + i % (len(LINE_COLOURS) - 1)],
                    linewidth=1.0,
                    drawstyle="steps-pre",
                    label=device,
                )
            if series and series.values:
                # Each value is the mean over the interval that ends at its step: drawn as a
                # level over that interval, not as a point-to-point ramp.
                ax.plot(
                    series.steps,
                    series.values,
                    color=BLACK,
                    linewidth=1.4,
                    drawstyle="steps-pre",
                    label="total" if per_device else keys.power_W,
                )
            ax.set_xlabel("Global step")
            details = [
                "mean power over each logging interval, drawn up to the step it was logged at",
                "no trace recorded: phases not shown",
            ]
            handles = None
        ax.set_ylabel("Power (W)")
        ax.set_ylim(bottom=0)
        _titles(fig, ax, "Power over time", run, [d for d in details if d])
        _legend_below(fig, ax, handles)
        return fig


def plot_energy(run: RunData) -> Figure:
    """Cumulative energy since the fit started: from the trace over time (per device, and their
    total), else the logged ``energy_kWh`` over global steps with epoch ends marked; the
    energy target and the latest forecast as horizontal lines when logged."""
    with _style():
        fig = _figure()
        ax = fig.add_subplot()
        keys = run.keys
        target = run.scalars.get(keys.target_kWh)
        forecast = run.scalars.get(keys.forecast_kWh)
        peaks: list[float] = []
        if run.has_trace:
            ts, per_dev = run.energy_over_time()
            totals = [sum(v) for v in zip(*per_dev.values(), strict=True)]
            peaks = [max(totals, default=0.0)]
        else:
            series = run.scalars.get(keys.energy_kWh)
            epoch_kwh = run.scalars.get(keys.epoch_kWh)
            if not ((series and series.values) or (epoch_kwh and epoch_kwh.values)):
                raise NoDataError(f"{run.name}: no trace and no logged {keys.energy_kWh}")
            peaks = [max(s.values) for s in (series, epoch_kwh) if s and s.values]
        for extra in (target, forecast):
            if extra and extra.values:
                peaks.append(max(extra.values))
        unit, factor = _energy_unit(max(peaks, default=0.0))
        if run.has_trace:
            t_unit, t_scale = _time_unit(ts[-1] if ts else 0.0)
            xs = [t / t_scale for t in ts]
            if len(per_dev) > 1:
                for i, (device, kwh) in enumerate(per_dev.items()):
                    ax.plot(
                        xs,
                        [v * factor for v in kwh],
                        linewidth=1.0,
                        label=device,
                        color=LINE_COLOURS[1 + i % (len(LINE_COLOURS) - 1)],
                    )
            ax.plot(
                xs,
                [v * factor for v in totals],
                color=BLACK,
                linewidth=1.6,
                label="total" if len(per_dev) > 1 else f"{next(iter(per_dev))} (trace)",
            )
            ax.set_xlabel(f"Time since fit start ({t_unit})")
            details = [f"from the recorded trace ({run.method})"]
        else:
            if series and series.values:
                ax.plot(
                    series.steps,
                    [v * factor for v in series.values],
                    color=BLACK,
                    linewidth=1.6,
                    label=keys.energy_kWh,
                )
            if epoch_kwh and epoch_kwh.values:
                ax.plot(
                    epoch_kwh.steps,
                    [v * factor for v in epoch_kwh.values],
                    linestyle="none",
                    marker="D",
                    markersize=5,
                    color=BLUE,
                    label="end of epoch",
                )
            if forecast and forecast.values:
                ax.plot(
                    forecast.steps,
                    [v * factor for v in forecast.values],
                    color=PURPLE,
                    linestyle=(0, (1, 2)),
                    linewidth=1.4,
                    label="forecast for the fit",
                )
                forecast = None  # drawn as a series: no horizontal line as well
            ax.set_xlabel("Global step")
            details = [f"logged {keys.energy_kWh} (all devices and ranks)"]
        if target and target.values:
            # target_kWh is the energy spent when the target accuracy was first reached.
            ax.axhline(
                target.values[-1] * factor,
                color=VERMILLION,
                linestyle="--",
                linewidth=1.2,
                label=f"target accuracy reached at {target.values[-1] * factor:.3g} {unit}",
            )
        if forecast and forecast.values:
            ax.axhline(
                forecast.values[-1] * factor,
                color=PURPLE,
                linestyle=(0, (1, 2)),
                linewidth=1.4,
                label=f"last forecast {forecast.values[-1] * factor:.3g} {unit}",
            )
        ax.set_ylabel(f"Cumulative energy ({unit})")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        if run.energy_kWh is not None:
            details.append(f"total {run.energy_kWh * factor:.4g} {unit}")
        _titles(fig, ax, "Cumulative energy", run, details)
        _legend_below(fig, ax)
        return fig


def plot_score(run: RunData) -> Figure:
    """The monitored accuracy (left axis) and the Green Quotient Index ``gqi`` (right
    axis) per validation epoch; the best accuracy is starred."""
    with _style():
        from matplotlib.ticker import MaxNLocator

        acc = run.metric_by_epoch(run.monitor) if run.monitor else []
        gqi_key = run.keys.gqi
        gqi = run.metric_by_epoch(gqi_key)
        if not acc and not gqi:
            raise NoDataError(f"{run.name}: no per-epoch accuracy ({run.monitor}) or {gqi_key}")
        fig = _figure(10, 4.8)
        ax = fig.add_subplot()
        handles = []
        if acc:
            xs, ys = zip(*acc, strict=True)
            (line,) = ax.plot(
                xs, ys, color=BLUE, marker="o", markersize=5, linewidth=1.6, label=run.monitor
            )
            handles.append(line)
            best = max(ys) if run.higher_is_better else min(ys)
            bx = xs[list(ys).index(best)]
            (star,) = ax.plot(
                [bx],
                [best],
                linestyle="none",
                marker="*",
                markersize=14,
                color=BLUE,
                markeredgecolor=BLACK,
                label=f"best {best:.4g}",
            )
            handles.append(star)
            ax.set_ylabel(run.monitor or "accuracy", color=BLUE)
            ax.tick_params(axis="y", colors=BLUE)
        else:
            ax.set_ylabel("(no accuracy logged)")
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if gqi:
            twin = ax.twinx()
            twin.grid(False)
            twin.spines["right"].set_visible(True)
            xs, ys = zip(*gqi, strict=True)
            (line,) = twin.plot(
                xs,
                ys,
                color=VERMILLION,
                marker="s",
                markersize=5,
                linewidth=1.6,
                linestyle="--",
                label=f"GQI ({gqi_key})",
            )
            handles.append(line)
            twin.set_ylabel(f"Green Quotient Index ({gqi_key})", color=VERMILLION)
            twin.tick_params(axis="y", colors=VERMILLION)
        score = (run.summary or {}).get("score")
        details = []
        if isinstance(score, dict) and score.get("alpha") is not None:
            reference = score.get("reference_kwh")
            details.append(
                f"GQI {score.get('form', '')} form, α={score.get('alpha')}, β={score.get('beta')}"
                + (f", reference {reference:g} kWh" if isinstance(reference, (int, float)) else "")
            )
        if run.final_score is not None:
            details.append(f"final GQI {run.final_score:.4g}")
        _titles(fig, ax, "Accuracy and score per epoch", run, details)
        _legend_below(fig, ax, handles)
        return fig


def plot_epoch_energy(run: RunData) -> Figure:
    """Energy of each epoch split into train steps, validation steps and the gap between them
    (data loading, checkpoints, stalls), as stacked bars."""
    with _style():
        rows = [r for r in run.epochs() if r.train_J is not None or r.val_J is not None]
        if not rows:
            raise NoDataError(f"{run.name}: no per-epoch energy ({run.keys.epoch_train_J})")
        totals = [(r.train_J or 0) + (r.val_J or 0) + (r.gap_J or 0) for r in rows]
        unit, factor = _joule_unit(max(totals))
        fig = _figure(10, 4.8)
        ax = fig.add_subplot()
        xs = [r.epoch for r in rows]
        bottom = [0.0] * len(rows)
        for phase in ("train", "val", "gap"):
            values = [(getattr(r, f"{phase}_J") or 0.0) * factor for r in rows]
            colour, hatch = BAR_STYLE[phase]
            ax.bar(
                xs,
                values,
                bottom=bottom,
                color=colour,
                hatch=hatch,
                edgecolor="white",
                linewidth=0.6,
                label=phase,
                width=0.75,
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        if len(rows) <= 30:
            for x, total in zip(xs, bottom, strict=True):
                ax.annotate(
                    f"{total:,.0f}" if total >= 100 else f"{total:.3g}",
                    (x, total),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8.5,
                )
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(f"Energy per epoch ({unit})")
        ax.grid(axis="x", visible=False)
        ax.margins(y=0.08)
        details = []
        if run.outside_steps_share is not None:
            details.append(f"{run.outside_steps_share:.1%} of the fit's energy outside steps")
        _titles(fig, ax, "Energy per epoch by phase", run, details)
        _legend_below(fig, ax)
        return fig


# --------------------------------------------------------------------------- across runs
def plot_pareto(runs: Sequence[RunData]) -> Figure:
    """Best accuracy against energy, one point per run, the Pareto front (no run has both less
    energy and better accuracy) filled and joined by a staircase; dominated runs hollow.

    Runs lacking energy or accuracy are left out and counted in the subtitle.
    """
    with _style():
        usable, points = pareto_points(runs)
        if len(usable) < 1:
            raise NoDataError("no run has both an energy total and an accuracy")
        higher = all(r.higher_is_better for r in usable)
        front = set(pareto_front(points, higher_is_better=higher))
        unit, factor = _energy_unit(max(e for e, _ in points))
        fig = _figure(9, 6)
        ax = fig.add_subplot()
        fx = sorted((points[i][0] * factor, points[i][1]) for i in front)
        if len(fx) > 1:
            ax.step(
                [p[0] for p in fx],
                [p[1] for p in fx],
                where="post",
                color=VERMILLION,
                linewidth=1.2,
                alpha=0.8,
                label="Pareto front",
                gid="pareto-line",
            )
        dominated = [i for i in range(len(usable)) if i not in front]
        ax.scatter(
            [points[i][0] * factor for i in sorted(front)],
            [points[i][1] for i in sorted(front)],
            s=70,
            color=VERMILLION,
            edgecolor=BLACK,
            zorder=3,
            label="on the front",
            gid="pareto-front",
        )
        if dominated:
            ax.scatter(
                [points[i][0] * factor for i in dominated],
                [points[i][1] for i in dominated],
                s=60,
                facecolor="white",
                edgecolor=GREY,
                linewidth=1.5,
                zorder=3,
                label="dominated",
                gid="pareto-dominated",
            )
        for i, run in enumerate(usable):
            tags = [t for t, on in (("replay", run.replay), ("estimated", run.estimated)) if on]
            label = run.name + (f" ({', '.join(tags)})" if tags else "")
            ax.annotate(
                label,
                (points[i][0] * factor, points[i][1]),
                xytext=(7, 5),
                textcoords="offset points",
                fontsize=9,
                color=BLACK if i in front else "#555555",
            )
        monitors = {r.monitor for r in usable}
        ax.set_xlabel(f"Energy of the fit ({unit})")
        ax.set_ylabel(f"Best {monitors.pop()}" if len(monitors) == 1 else "Best accuracy")
        ax.margins(x=0.15, y=0.12)
        ax.annotate(
            "better",
            xy=(0.03, 0.95 if higher else 0.05),
            xycoords="axes fraction",
            xytext=(0.16, 0.80 if higher else 0.20),
            textcoords="axes fraction",
            arrowprops={"arrowstyle": "->", "color": GREEN, "linewidth": 1.5},
            color=GREEN,
            fontsize=10,
            ha="center",
            va="center",
        )
        details = [f"{len(usable)} runs, {len(front)} on the front"]
        left_out = len(runs) - len(usable)
        if left_out:
            details.append(f"{left_out} without energy or accuracy left out")
        title = "Accuracy against energy"
        if any(r.replay or r.estimated for r in usable):
            title += "\nIncludes replayed or estimated runs (labelled as such)"
        fig.suptitle(title)
        ax.set_title(" · ".join(details), color="#444444")
        _legend_below(fig, ax)
        return fig


# --------------------------------------------------------------------------- output
def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG at ``dpi`` (150 by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Constrained layout already fits titles and the legend below; no second "tight" pass,
    # which would draw every figure twice.
    fig.savefig(path, dpi=dpi, format="png")
    return path


RUN_PLOTS = {
    "power": plot_power,
    "energy": plot_energy,
    "score": plot_score,
    "epoch_energy": plot_epoch_energy,
}


def render_run(run: RunData, outdir: str | Path, dpi: int = DPI) -> dict[str, str]:
    """Draw and save every plot the run has data for, as ``OUTDIR/<plot>.png``; returns
    ``{plot: path}`` for the drawn ones and ``{plot: "skipped: why"}`` for the others."""
    out: dict[str, str] = {}
    for name, draw in RUN_PLOTS.items():
        try:
            fig = draw(run)
        except NoDataError as err:
            out[name] = f"skipped: {err}"
            continue
        out[name] = str(save(fig, Path(outdir) / f"{name}.png", dpi=dpi))
    return out
