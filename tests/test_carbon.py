"""CarbonModel arithmetic, the bundled table, and every bad input named."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_watt.score.carbon import (
    JOULES_PER_KWH,
    CarbonModel,
    carbon_table,
    lookup_region,
)

kwh = st.floats(0.0, 1e6, allow_nan=False)
intensity = st.floats(0.0, 2000.0, allow_nan=False)
pue = st.floats(1.0, 3.0, allow_nan=False)


def test_arithmetic_with_a_given_intensity() -> None:
    model = CarbonModel(carbon_intensity=400.0, pue=1.5, price_per_kwh=0.2, currency="eur")
    assert model.facility_kwh(2.0) == 3.0
    assert model.co2e_kg(2.0) == pytest.approx(1.2)  # 3 kWh x 400 g
    assert model.cost(2.0) == pytest.approx(0.6)
    assert model.currency == "EUR"
    assert model.region is None and model.intensity_source == "given"


def test_region_resolves_from_the_bundled_table() -> None:
    model = CarbonModel(region="fr")
    assert model.carbon_intensity == 56.0 and model.region == "FR"
    assert "France" in model.describe() and "2023" in model.describe()
    assert CarbonModel(region="Germany").region == "DE"
    assert CarbonModel(region="UK").region == "GB"


def test_no_intensity_means_the_world_average_and_says_so() -> None:
    model = CarbonModel()
    assert model.region == "WORLD" and model.carbon_intensity == 481.0
    assert "no region or carbon_intensity given" in model.describe()


def test_describe_states_pue_and_price() -> None:
    assert "PUE 1.0 (device energy only" in CarbonModel(carbon_intensity=1).describe()
    assert "no electricity price" in CarbonModel(carbon_intensity=1).describe()
    described = CarbonModel(carbon_intensity=1, pue=1.2, price_per_kwh=0.1).describe()
    assert "PUE 1.2 (facility overhead included)" in described
    assert "0.1 USD/kWh" in described


def test_cost_is_none_without_a_price_and_zero_energy_is_free() -> None:
    model = CarbonModel(carbon_intensity=300.0)
    assert model.cost(5.0) is None
    assert model.co2e_kg(0.0) == 0.0
    assert CarbonModel(carbon_intensity=300.0, price_per_kwh=0).cost(5.0) == 0.0


def test_as_dict_round_trips_the_parameters() -> None:
    model = CarbonModel(region="SE", pue=1.1, price_per_kwh=1.5, currency="SEK")
    assert model.as_dict() == {
        "carbon_intensity_g_per_kwh": 41.0,
        "region": "SE",
        "intensity_source": model.intensity_source,
        "pue": 1.1,
        "price_per_kwh": 1.5,
        "currency": "SEK",
    }
    assert "region='SE'" in repr(model)


def test_table_is_sane() -> None:
    table = carbon_table()
    assert 40 <= len(table) <= 80
    assert {"WORLD", "EU", "US", "CN", "IN", "DE", "FR", "GB", "JP"} <= set(table)
    for code, row in table.items():
        assert code == row.region
        assert 0 < row.g_co2e_per_kwh < 1000 and row.year == 2023
        assert "Ember" in row.source
    with pytest.raises(TypeError):
        table["XX"] = table["US"]  # type: ignore[index]


@given(a=kwh, b=kwh, g=intensity, p=pue)
def test_co2e_is_linear_in_energy(a: float, b: float, g: float, p: float) -> None:
    model = CarbonModel(carbon_intensity=g, pue=p)
    # Linear to floating point: relative rounding of the sum, not an absolute 1e-9 (found by
    # hypothesis at 1e6 kWh).
    assert model.co2e_kg(a + b) == pytest.approx(
        model.co2e_kg(a) + model.co2e_kg(b), rel=1e-12, abs=1e-9
    )
    assert model.co2e_kg(a) == pytest.approx(a * p * g / 1000.0, abs=1e-12)


@given(e=kwh, g=intensity, p=pue)
def test_co2e_scales_with_pue(e: float, g: float, p: float) -> None:
    it_only = CarbonModel(carbon_intensity=g).co2e_kg(e)
    assert CarbonModel(carbon_intensity=g, pue=p).co2e_kg(e) == pytest.approx(p * it_only)


@given(e=kwh, price=st.floats(0.0, 1e3, allow_nan=False), p=pue)
def test_cost_is_facility_energy_times_price(e: float, price: float, p: float) -> None:
    model = CarbonModel(carbon_intensity=100, pue=p, price_per_kwh=price)
    assert model.cost(e) == pytest.approx(e * p * price)


def test_joules_per_kwh() -> None:
    assert JOULES_PER_KWH == 1000 * 3600


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"carbon_intensity": -1.0}, r"carbon_intensity must be a number in \[0, 2000\]"),
        ({"carbon_intensity": 2500.0}, "carbon_intensity"),
        ({"carbon_intensity": math.nan}, "carbon_intensity"),
        ({"carbon_intensity": "400"}, "carbon_intensity"),
        ({"carbon_intensity": True}, "carbon_intensity"),
        ({"pue": 0.9}, r"pue must be a number in \[1, 3\]"),
        ({"pue": 3.5}, "pue"),
        ({"pue": math.inf}, "pue"),
        ({"price_per_kwh": -0.01}, "price_per_kwh"),
        ({"price_per_kwh": math.nan}, "price_per_kwh"),
        ({"currency": "dollars"}, "currency must be an ISO 4217 code"),
        ({"currency": ""}, "currency"),
        ({"region": ""}, "region"),
        ({"region": 49}, "region"),
        ({"region": "DE", "carbon_intensity": 300.0}, "either region .* or carbon_intensity"),
    ],
)
def test_bad_construction_is_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CarbonModel(**kwargs)  # type: ignore[arg-type]


def test_unknown_region_suggests_close_matches() -> None:
    with pytest.raises(ValueError) as err:
        CarbonModel(region="Germny")
    message = str(err.value)
    assert "unknown 'Germny'" in message and "'DE' (Germany)" in message
    assert "ISO 3166-1 alpha-2" in message and "carbon_intensity" in message
    with pytest.raises(ValueError, match=r"Did you mean 'FR' \(France\)"):
        lookup_region("Frnace")
    with pytest.raises(ValueError) as err:
        lookup_region("Atlantis")
    assert "Did you mean" not in str(err.value)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "lots", None, True])
def test_bad_energy_is_refused(bad: object) -> None:
    model = CarbonModel(carbon_intensity=100, price_per_kwh=1)
    for method in (model.facility_kwh, model.co2e_kg, model.cost):
        with pytest.raises(ValueError, match="kwh"):
            method(bad)  # type: ignore[arg-type]
