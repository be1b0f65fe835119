"""From measured energy to emissions and cost: grid carbon intensity, PUE and electricity price.

``co2e_kg(kwh) = kwh x pue x g_co2e_per_kwh / 1000`` and ``cost(kwh) = kwh x pue x price``. The
carbon intensity is given in gCO2e/kWh, or looked up by ``region`` in a small bundled table of
**yearly average** grid intensities (``lightning_watt/data/carbon_intensity.csv``: 2023 values
of Ember's Yearly Electricity Data as published by Our World in Data, lifecycle emissions of each
country's generation mix, ~55 countries plus ``EU`` and ``WORLD``). No network calls are made.
A yearly average ignores the hour-to-hour swing of a grid (often 2x between a windy night and a
still evening) and imports; give ``carbon_intensity`` from your provider or an hourly source
when it matters.

**PUE defaults to 1.0**: the meter measures the energy of the devices (IT energy) and nothing
else, and the facility's overhead (cooling, power conversion) is a property of the data centre
that the library cannot know; reporting it by default would inflate measured numbers with a
guess. Set ``pue`` to count it: about 1.1 for hyperscale cloud fleets, ~1.5-1.6 for the
industry average.

Example:
    >>> model = CarbonModel(region="FR", pue=1.2, price_per_kwh=0.25, currency="EUR")
    >>> round(model.co2e_kg(10.0), 3)  # 10 kWh x 1.2 x 56 g/kWh
    0.672
    >>> round(model.cost(10.0), 2)
    3.0
    >>> CarbonModel(carbon_intensity=400).cost(1.0) is None
    True
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from lightning_watt.energy.readings import J_PER_KWH
from lightning_watt.validate import finite_number

__all__ = [
    "JOULES_PER_KWH",
    "MAX_G_CO2E_PER_KWH",
    "MAX_PUE",
    "CarbonModel",
    "GridIntensity",
    "carbon_table",
    "lookup_region",
]

JOULES_PER_KWH = J_PER_KWH
#: Above any real grid (coal-only generation is ~1000-1100 g/kWh lifecycle): a larger value is
#: almost certainly a unit mistake (kg or lb instead of g).
MAX_G_CO2E_PER_KWH = 2000.0
#: Above any plausible facility (the worst surveyed data centres are ~2.5).
MAX_PUE = 3.0
_ALIASES = {"UK": "GB", "USA": "US", "GLOBAL": "WORLD", "EU27": "EU", "EU-27": "EU"}


@dataclass(frozen=True)
class GridIntensity:
    """One row of the bundled table: a region's yearly average grid carbon intensity."""

    region: str
    name: str
    g_co2e_per_kwh: float
    year: int
    source: str


@functools.lru_cache(maxsize=1)
def carbon_table() -> MappingProxyType[str, GridIntensity]:
    """The bundled table, keyed by region code (``DE``, ``US``, ``EU``, ``WORLD``)."""
    text = resources.files("lightning_watt").joinpath("data/carbon_intensity.csv").read_text()
    rows = csv.DictReader(io.StringIO("".join(ln for ln in text.splitlines(True) if ln[:1] != "#")))
    table = {
        row["region"]: GridIntensity(
            row["region"],
            row["name"],
            float(row["g_co2e_per_kwh"]),
            int(row["year"]),
            row["source"],
        )
        for row in rows
    }
    return MappingProxyType(table)


def lookup_region(region: str) -> GridIntensity:
    """A region by ISO 3166-1 alpha-2 code or name, case-insensitive (``"de"``, ``"Germany"``,
    also ``"UK"``, ``"EU"``, ``"WORLD"``).

    Raises:
        ValueError: unknown region, naming close matches and what is accepted.

    Example:
        >>> lookup_region("germany").g_co2e_per_kwh
        381.0
    """
    if not isinstance(region, str) or not region.strip():
        raise ValueError(f"region must be a region code such as 'DE', got {region!r}")
    table = carbon_table()
    key = region.strip().upper()
    key = _ALIASES.get(key, key)
    if key in table:
        return table[key]
    by_name = {row.name.upper(): row for row in table.values()}
    if key in by_name:
        return by_name[key]
    names = {**{code: code for code in table}, **{n: row.region for n, row in by_name.items()}}
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    hint = ""
    if close:
        codes = list(dict.fromkeys(names[c] for c in close))
        hint = " Did you mean " + " or ".join(f"{c!r} ({table[c].name})" for c in codes) + "?"
    raise ValueError(
        f"region: unknown {region!r}.{hint} Accepted: ISO 3166-1 alpha-2 codes or country names "
        f"of the bundled table ({', '.join(sorted(table))}), or pass carbon_intensity in "
        f"gCO2e/kWh instead."
    )


class CarbonModel:
    """Turns kWh into facility kWh, kg CO2e and money.

    Args:
        carbon_intensity: grid intensity in gCO2e/kWh, in [0, 2000].
        region: instead of ``carbon_intensity``, a region of the bundled 2023 table (ISO
            3166-1 alpha-2 code or name, ``EU``, ``WORLD``). Neither given: ``WORLD`` (481
            g/kWh), and :meth:`describe` says so.
        pue: power usage effectiveness of the facility, in [1, 3]; default 1.0 counts no
            facility overhead (see the module docstring).
        price_per_kwh: electricity price per facility kWh, >= 0; ``None``: no cost reported.
        currency: ISO 4217 code of the price (3 letters).

    Raises:
        ValueError: naming the parameter and the accepted values, for a value out of range, an
            unknown region (with close matches), or both ``region`` and ``carbon_intensity``.

    Example:
        >>> model = CarbonModel(carbon_intensity=500.0, pue=1.5)
        >>> model.facility_kwh(2.0), model.co2e_kg(2.0)
        (3.0, 1.5)
    """

    def __init__(
        self,
        carbon_intensity: float | None = None,
        region: str | None = None,
        pue: float = 1.0,
        price_per_kwh: float | None = None,
        currency: str = "USD",
    ) -> None:
        if carbon_intensity is not None and region is not None:
            raise ValueError(
                f"give either region ({region!r}) or carbon_intensity ({carbon_intensity!r}) "
                f"in gCO2e/kWh, not both"
            )
        self.grid: GridIntensity | None
        if carbon_intensity is not None:
            self.carbon_intensity = finite_number(
                "carbon_intensity",
                carbon_intensity,
                minimum=0.0,
                maximum=MAX_G_CO2E_PER_KWH,
                unit="gCO2e/kWh",
            )
            self.grid = None
            self.intensity_source = "given"
        else:
            self.grid = lookup_region("WORLD" if region is None else region)
            self.carbon_intensity = self.grid.g_co2e_per_kwh
            what = "world average: no region or carbon_intensity given" if region is None else ""
            self.intensity_source = (
                f"{self.grid.name} ({self.grid.region}), {self.grid.year} yearly average, "
                f"{self.grid.source}" + (f"; {what}" if what else "")
            )
        self.region = None if self.grid is None else self.grid.region
        self.pue = finite_number(
            "pue", pue, minimum=1.0, maximum=MAX_PUE, unit="(facility energy / IT energy)"
        )
        self.price_per_kwh = finite_number(
            "price_per_kwh", price_per_kwh, minimum=0.0, unit="per kWh", allow_none=True
        )
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            raise ValueError(f"currency must be an ISO 4217 code such as 'USD', got {currency!r}")
        self.currency = currency.upper()

    @staticmethod
    def _kwh(kwh: Any) -> float:
        return finite_number("kwh", kwh, minimum=0.0, unit="kWh")

    def facility_kwh(self, kwh: float) -> float:
        """Energy the facility drew for ``kwh`` of device energy: ``kwh x pue``."""
        return self._kwh(kwh) * self.pue

    def co2e_kg(self, kwh: float) -> float:
        """Kilograms of CO2-equivalent for ``kwh`` of device energy (PUE included)."""
        return self.facility_kwh(kwh) * self.carbon_intensity / 1000.0

    def cost(self, kwh: float) -> float | None:
        """The price of ``kwh`` of device energy (PUE included) in :attr:`currency`, or ``None``
        when no price was given."""
        facility = self.facility_kwh(kwh)
        return None if self.price_per_kwh is None else facility * self.price_per_kwh

    def describe(self) -> str:
        """One line for people: intensity and its source, PUE, price."""
        pue = (
            "PUE 1.0 (device energy only, no facility overhead)"
            if self.pue == 1.0
            else f"PUE {self.pue:g} (facility overhead included)"
        )
        price = (
            "no electricity price"
            if self.price_per_kwh is None
            else f"{self.price_per_kwh:g} {self.currency}/kWh"
        )
        return f"{self.carbon_intensity:g} gCO2e/kWh ({self.intensity_source}); {pue}; {price}"

    def as_dict(self) -> dict[str, Any]:
        """The parameters, JSON-ready (for run metadata and logs)."""
        return {
            "carbon_intensity_g_per_kwh": self.carbon_intensity,
            "region": self.region,
            "intensity_source": self.intensity_source,
            "pue": self.pue,
            "price_per_kwh": self.price_per_kwh,
            "currency": self.currency,
        }

    def __repr__(self) -> str:
        args = (
            f"region={self.region!r}"
            if self.region is not None
            else f"carbon_intensity={self.carbon_intensity!r}"
        )
        return (
            f"CarbonModel({args}, pue={self.pue!r}, price_per_kwh={self.price_per_kwh!r}, "
            f"currency={self.currency!r})"
        )
