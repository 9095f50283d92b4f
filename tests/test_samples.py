from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamm.exceptions import InvalidRegionError, InvalidSimulationError
from tamm.samples import Region, Simulation, SimulationSet


@pytest.fixture
def region():
    return Region(["x1", "x2"], {"x1": (-2, 2), "x2": (-1, 3)}, bins={"x1": 4, "x2": [-1, 0, 1, 3]})


def test_region_shape_and_bins(region):
    assert region.shape == (4, 3)
    assert region.n_bins == 12
    assert region.is_binned


def test_region_closed_box_keeps_boundary(region):
    events = np.array([[2.0, 3.0], [-2.0, -1.0], [2.0001, 0.0], [0.0, -1.0001]])
    assert region.contains(events).tolist() == [True, True, False, False]


def test_histogram_counts_boundary_events(region):
    events = np.array([[2.0, 3.0], [-2.0, -1.0], [0.1, 0.5], [5.0, 0.0]])
    counts = region.histogram(events).reshape(region.shape)
    assert counts.sum() == 3
    assert counts[-1, -1] == 1
    assert counts[0, 0] == 1


def test_histogram_weighted(region):
    events = np.array([[0.1, 0.5], [0.2, 0.6]])
    counts = region.histogram(events, weights=[0.5, 2.0])
    assert counts.sum() == pytest.approx(2.5)


def test_region_dict_round_trip(region):
    again = Region.from_dict(region.to_dict())
    assert again.observables == region.observables
    assert again.limits == region.limits
    for a, b in zip(again.edges, region.edges, strict=True):
        np.testing.assert_array_equal(a, b)


def test_region_lower_not_below_upper():
    with pytest.raises(InvalidRegionError, match=r"'x'.*lower=2.0 >= upper=1.0"):
        Region(["x"], [(2.0, 1.0)])


def test_region_equal_limits():
    with pytest.raises(InvalidRegionError, match=r"lower=1.0 >= upper=1.0"):
        Region(["x"], [(1.0, 1.0)])


def test_region_duplicate_names():
    with pytest.raises(InvalidRegionError, match=r"unique.*\['x', 'x'\]"):
        Region(["x", "x"], [(0, 1), (0, 1)])


def test_region_missing_limit():
    with pytest.raises(InvalidRegionError, match=r"missing \['y'\]"):
        Region(["x", "y"], {"x": (0, 1)})


def test_region_infinite_limit():
    with pytest.raises(InvalidRegionError, match=r"finite.*inf"):
        Region(["x"], [(0, np.inf)])


def test_region_edges_must_span_limits():
    with pytest.raises(InvalidRegionError, match=r"span the region limits \(0.0, 1.0\)"):
        Region(["x"], [(0, 1)], bins=[0.0, 0.5, 0.9])


def test_region_without_bins_cannot_histogram():
    region = Region(["x"], [(0, 1)])
    with pytest.raises(InvalidRegionError, match="no binning"):
        region.histogram([0.5])


def test_simulation_empty_events():
    with pytest.raises(InvalidSimulationError, match=r"'empty'.*received an empty array"):
        Simulation(np.empty((0, 2)), name="empty")


def test_simulation_nan_event_names_position():
    events = np.zeros((5, 2))
    events[3, 1] = np.nan
    with pytest.raises(InvalidSimulationError, match=r"NaN or infinite.*\(3, 1\)=nan"):
        Simulation(events, name="bad")


def test_simulation_inf_event():
    events = np.zeros((5, 2))
    events[0, 0] = -np.inf
    with pytest.raises(InvalidSimulationError, match=r"\(0, 0\)=-inf"):
        Simulation(events)


def test_simulation_wrong_columns():
    with pytest.raises(InvalidSimulationError, match=r"3 columns but 2 observables"):
        Simulation(np.zeros((4, 3)), observables=("x1", "x2"))


def test_simulation_wrong_columns_for_region(region):
    sim = Simulation(np.zeros((4, 3)), name="wide")
    with pytest.raises(InvalidSimulationError, match=r"'wide'.*3 columns but 2"):
        sim.histogram(region)


def test_simulation_negative_weight_names_event():
    with pytest.raises(InvalidSimulationError, match=r"weight of event 2 is -1.0"):
        Simulation(np.zeros((3, 1)), weights=[1.0, 0.5, -1.0])


def test_simulation_nan_weight_names_event():
    with pytest.raises(InvalidSimulationError, match=r"weight of event 1 is NaN"):
        Simulation(np.zeros((3, 1)), weights=[1.0, np.nan, 1.0])


def test_simulation_weight_length():
    with pytest.raises(InvalidSimulationError, match=r"weights have shape \(2,\).*3 events"):
        Simulation(np.zeros((3, 1)), weights=[1.0, 1.0])


def test_simulation_acceptance(region):
    events = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
    assert Simulation(events).acceptance(region) == pytest.approx(0.5)
    weighted = Simulation(events, weights=[3.0, 1.0, 0.0, 0.0])
    assert weighted.acceptance(region) == pytest.approx(0.75)


def test_simulation_set_requires_simulations():
    with pytest.raises(InvalidSimulationError, match=r"'signal' received no simulations"):
        SimulationSet([], process="signal")


def test_simulation_set_fewer_than_topics():
    sims = SimulationSet([Simulation(np.zeros((2, 1)))] * 3, process="signal")
    with pytest.raises(InvalidSimulationError, match=r"'signal' holds 3 simulations.*at least 5"):
        sims.require_at_least(5, purpose="learning 5 topics")


def test_simulation_set_mixed_columns():
    with pytest.raises(InvalidSimulationError, match=r"different numbers of observables \[1, 2\]"):
        SimulationSet([Simulation(np.zeros((2, 1))), Simulation(np.zeros((2, 2)))])


def test_simulation_set_histograms(region):
    rng = np.random.default_rng(3)
    sims = SimulationSet([Simulation(rng.normal(size=(100, 2))) for _ in range(3)])
    assert sims.histograms(region).shape == (3, 12)
    assert sims.acceptances(region).shape == (3,)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=50))
def test_histogram_keeps_every_event_inside(values):
    region = Region(["x"], [(-2, 2)], bins=7)
    array = np.asarray(values)
    assert region.histogram(array).sum() == np.count_nonzero((array >= -2) & (array <= 2))
