"""Tests of tamm.io: chunked ROOT reading, ROOT writing, hist conversion and the YAML schema."""

from __future__ import annotations

import copy
from pathlib import Path

import hist
import numpy as np
import pytest
import uproot

from tamm.exceptions import InvalidRegionError, InvalidSimulationError, TammError
from tamm.io import (
    ConfigError,
    HistogramSet,
    InputFileError,
    counts_from_hist,
    flatten_hist,
    hist_from_counts,
    histogram_tree,
    list_trees,
    load_config,
    parse_config,
    read_histogram,
    read_tree,
    region_from_hist,
    write_histograms,
    write_tree,
)
from tamm.samples import Region

N_ENTRIES = 1000
REGION = Region(["x", "n"], {"x": (-1.0, 2.0), "n": (0.5, 8.5)}, bins={"x": 6, "n": 4})


def _columns(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(0.5, 1.0, N_ENTRIES),
        "n": rng.poisson(4.0, N_ENTRIES).astype(np.int32),
        "w": rng.uniform(0.5, 1.5, N_ENTRIES),
    }


@pytest.fixture
def root_file(tmp_path: Path) -> Path:
    """A file with two TTrees, an empty TTree, an RNTuple and a histogram."""
    path = tmp_path / "events.root"
    columns = _columns()
    with uproot.recreate(path) as handle:
        handle.mktree("msd_00", {name: values.dtype for name, values in columns.items()})
        handle["msd_00"].extend(columns)
        handle.mktree("msd_01", {name: values.dtype for name, values in columns.items()})
        handle["msd_01"].extend(_columns(2))
        handle.mktree("empty", {"x": np.float64, "n": np.int32})
        # NB: assigning a dict writes an RNTuple in uproot 5.7.
        handle["ntuple"] = {"x": columns["x"], "n": columns["n"]}
        handle["h"] = hist.Hist(hist.axis.Regular(3, 0, 3, name="x")).fill([0.5, 1.5, 1.5])
    return path


def _expected_histogram(
    columns: dict[str, np.ndarray], weights: np.ndarray | None = None
) -> np.ndarray:
    events = np.column_stack([columns["x"], columns["n"]])
    return REGION.histogram(events, weights)


# ---------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("step_size", [97, 1000, "1 MB"])
def test_histogram_tree_matches_direct_fill(root_file, step_size):
    columns = _columns()
    filled = histogram_tree(root_file, "msd_00", REGION, step_size=step_size)
    np.testing.assert_array_equal(filled.counts, _expected_histogram(columns))
    np.testing.assert_array_equal(filled.sumw2, filled.counts)
    assert filled.n_entries == N_ENTRIES
    assert filled.n_selected == int(
        REGION.contains(np.column_stack([columns["x"], columns["n"]])).sum()
    )


def test_histogram_tree_weighted(root_file):
    columns = _columns()
    filled = histogram_tree(root_file, "msd_00", REGION, weight="w", step_size=128)
    np.testing.assert_allclose(
        filled.counts, _expected_histogram(columns, columns["w"]), rtol=1e-12
    )
    np.testing.assert_allclose(
        filled.sumw2, _expected_histogram(columns, columns["w"] ** 2), rtol=1e-12
    )


def test_read_tree_keeps_selected_rows(root_file):
    columns = _columns()
    events = np.column_stack([columns["x"], columns["n"]])
    selection = read_tree(root_file, "msd_00", ["x", "n"], region=REGION, step_size=100)
    np.testing.assert_array_equal(selection.events, events[REGION.contains(events)])
    assert selection.weights is None
    assert selection.n_entries == N_ENTRIES
    assert 0 < selection.acceptance < 1


def test_read_tree_applies_region_on_rntuple(root_file):
    # uproot 5.7 ignores cut= on RNTuples; the region cut must still apply.
    columns = _columns()
    events = np.column_stack([columns["x"], columns["n"]])
    selection = read_tree(root_file, "ntuple", ["x", "n"], region=REGION)
    assert selection.n_selected == int(REGION.contains(events).sum())
    assert selection.n_selected < N_ENTRIES


def test_read_tree_without_region(root_file):
    selection = read_tree(root_file, "msd_01", ["n"])
    np.testing.assert_array_equal(selection.events[:, 0], _columns(2)["n"])


def test_list_trees_pattern(root_file):
    assert list_trees(root_file, "msd_*") == ["msd_00", "msd_01"]
    assert list_trees(root_file) == ["empty", "msd_00", "msd_01", "ntuple"]


def test_missing_file_names_path_and_key(tmp_path):
    path = tmp_path / "absent.root"
    with pytest.raises(
        InputFileError,
        match=r"processes\.signal\.simulations\[0\]: ROOT file .*absent\.root.* not found",
    ):
        histogram_tree(path, "t", REGION, key="processes.signal.simulations[0]")


def test_not_a_root_file(tmp_path):
    path = tmp_path / "text.root"
    path.write_text("not ROOT")
    with pytest.raises(InputFileError, match=r"could not open .* as a ROOT file"):
        read_tree(path, "t", ["x"])


def test_missing_tree_lists_trees(root_file):
    with pytest.raises(InputFileError, match=r"data: tree 'jets' not found in .*'msd_00'"):
        histogram_tree(root_file, "jets", REGION, key="data")


def test_histogram_object_is_not_a_tree(root_file):
    with pytest.raises(InputFileError, match=r"'h' in .* is a TH1D, not a TTree or RNTuple"):
        read_tree(root_file, "h", ["x"])


def test_missing_branch_lists_branches(root_file):
    region = Region(["x", "girth"], [(0, 1), (0, 1)], bins=2)
    with pytest.raises(
        InputFileError, match=r"branch 'girth' not found in tree 'msd_00'.*\['x', 'n', 'w'\]"
    ):
        histogram_tree(root_file, "msd_00", region)


def test_missing_weight_branch(root_file):
    with pytest.raises(InputFileError, match=r"branch 'weight' not found"):
        histogram_tree(root_file, "msd_00", REGION, weight="weight")


def test_empty_after_cuts(root_file):
    region = Region(["x", "n"], [(50.0, 60.0), (0.5, 8.5)], bins=2)
    with pytest.raises(
        InvalidSimulationError, match=r"none of the 1000 entries of tree 'msd_00'.*x in \[50, 60\]"
    ):
        histogram_tree(root_file, "msd_00", region, key="data")
    with pytest.raises(InvalidSimulationError, match=r"none of the 1000 entries"):
        read_tree(root_file, "msd_00", ["x", "n"], region=region)


def test_empty_tree(root_file):
    with pytest.raises(InvalidSimulationError, match=r"tree 'empty' in .* has no entries"):
        histogram_tree(root_file, "empty", REGION)


def test_nan_in_branch_names_branch_and_entry(tmp_path):
    path = tmp_path / "nan.root"
    x = np.linspace(0.0, 1.0, 300)
    x[217] = np.nan
    write_tree(path, "events", {"x": x, "n": np.ones(300, dtype=np.int32)})
    with pytest.raises(
        InvalidSimulationError,
        match=r"data: branch 'x' of tree 'events' .* has the value nan at entry 217",
    ):
        histogram_tree(path, "events", REGION, step_size=50, key="data")


def test_infinite_weight_rejected(tmp_path):
    path = tmp_path / "inf.root"
    weights = np.ones(10)
    weights[3] = np.inf
    write_tree(path, "events", {"x": np.zeros(10), "n": np.ones(10), "w": weights})
    with pytest.raises(InvalidSimulationError, match=r"branch 'w' .* inf at entry 3"):
        histogram_tree(path, "events", REGION, weight="w")


def test_negative_weight_rejected(tmp_path):
    path = tmp_path / "neg.root"
    write_tree(
        path, "events", {"x": np.zeros(4), "n": np.ones(4), "w": np.array([1.0, 1.0, -1.0, 1.0])}
    )
    with pytest.raises(InvalidSimulationError, match=r"negative at entry 2"):
        histogram_tree(path, "events", REGION, weight="w")


def test_read_histogram(root_file):
    histogram = read_histogram(root_file, "h")
    np.testing.assert_array_equal(histogram.values(), [1.0, 2.0, 0.0])
    with pytest.raises(InputFileError, match=r"histogram 'g' not found .*\['h'\]"):
        read_histogram(root_file, "g")
    with pytest.raises(InputFileError, match=r"'msd_00' in .* is a TTree, not a histogram"):
        read_histogram(root_file, "msd_00")


# ---------------------------------------------------------------------------------------------
# Writing


def test_write_tree_in_chunks_is_a_ttree(tmp_path):
    path = tmp_path / "out.root"
    chunks = (
        {"a": np.arange(i, i + 5, dtype=np.float64), "b": np.full(5, i, dtype=np.int32)}
        for i in range(0, 15, 5)
    )
    write_tree(path, "events", chunks)
    with uproot.open(path) as handle:
        assert handle.classnames()["events;1"] == "TTree"
        arrays = handle["events"].arrays(["a", "b"], library="np")
    np.testing.assert_array_equal(arrays["a"], np.arange(15.0))
    assert arrays["b"].dtype == np.int32


def test_write_tree_rejects_ragged_chunk(tmp_path):
    with pytest.raises(InputFileError, match=r"different lengths"):
        write_tree(tmp_path / "out.root", "t", {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(InputFileError, match=r"chunk 1 .* has the branches"):
        write_tree(tmp_path / "out.root", "t", [{"a": np.zeros(3)}, {"c": np.zeros(3)}])


def test_write_histograms_classes_and_contents(tmp_path):
    path = tmp_path / "hists.root"
    one = Region(["x"], [(0, 1)], bins=4)
    two = Region(["x", "y"], [(0, 1), (0, 2)], bins={"x": 2, "y": 3})
    three = Region(["a", "b", "c"], [(0, 1)] * 3, bins=2)
    write_histograms(
        path,
        {
            "one": hist_from_counts([1, 2, 3, 4], one),
            "fits/two": hist_from_counts(np.arange(6.0), two, variances=np.ones(6)),
            "three": hist_from_counts(np.arange(8.0), three),
        },
    )
    with uproot.open(path) as handle:
        classes = handle.classnames()
        assert classes["one;1"] == "TH1D"
        assert classes["fits/two;1"] == "TH2D"
        assert classes["three;1"] == "TH1D"
        np.testing.assert_array_equal(handle["fits/two"].values(), np.arange(6.0).reshape(2, 3))
        np.testing.assert_array_equal(handle["fits/two"].variances(), np.ones((2, 3)))
        np.testing.assert_array_equal(handle["fits/two"].axis(1).edges(), [0, 2 / 3, 4 / 3, 2])
        flat = handle["three"]
        np.testing.assert_array_equal(flat.values(), np.arange(8.0))
        assert list(flat.axis().labels())[1] == "a=[0,0.5) b=[0,0.5) c=[0.5,1)"


# ---------------------------------------------------------------------------------------------
# hist objects


def test_hist_from_counts_round_trip():
    counts = np.arange(REGION.n_bins, dtype=np.float64)
    histogram = hist_from_counts(counts, REGION, variances=2 * counts, name="shape")
    assert [axis.name for axis in histogram.axes] == ["x", "n"]
    assert histogram.name == "shape"
    values, variances = counts_from_hist(histogram, REGION)
    np.testing.assert_array_equal(values, counts)
    np.testing.assert_array_equal(variances, 2 * counts)


def test_hist_flattening_follows_region_order():
    rng = np.random.default_rng(3)
    events = np.column_stack([rng.uniform(-1, 2, 500), rng.integers(1, 9, 500)])
    histogram = hist.Hist(
        *(
            hist.axis.Variable(e, name=n)
            for n, e in zip(REGION.observables, REGION.edges, strict=True)
        )
    )
    histogram.fill(*events.T)
    np.testing.assert_array_equal(counts_from_hist(histogram, REGION)[0], REGION.histogram(events))
    np.testing.assert_array_equal(flatten_hist(histogram).values(), REGION.histogram(events))


def test_region_from_hist_uses_axis_names():
    histogram = hist.Hist(
        hist.axis.Variable([0, 1, 3], name="a"), hist.axis.Regular(2, 0, 1, name="b")
    )
    region = region_from_hist(histogram)
    assert region.observables == ("a", "b")
    assert region.limits == ((0.0, 3.0), (0.0, 1.0))
    np.testing.assert_array_equal(region.edges[0], [0, 1, 3])


def test_region_from_hist_needs_names():
    histogram = hist.Hist(hist.axis.Regular(2, 0, 1))
    with pytest.raises(InvalidRegionError, match=r"no observable name"):
        region_from_hist(histogram)
    assert region_from_hist(histogram, ["x"]).observables == ("x",)


def test_counts_from_hist_rejects_other_binning():
    histogram = hist.Hist(
        hist.axis.Regular(5, -1, 2, name="x"), hist.axis.Regular(4, 0.5, 8.5, name="n")
    )
    with pytest.raises(InvalidRegionError, match=r"axis 0 \('x'\) of histogram has the edges"):
        counts_from_hist(histogram, REGION)


def test_counts_from_hist_rejects_swapped_axes():
    histogram = hist.Hist(
        hist.axis.Regular(6, -1, 2, name="n"), hist.axis.Regular(4, 0.5, 8.5, name="x")
    )
    with pytest.raises(InvalidRegionError, match=r"axis 0 of histogram is named 'n'"):
        counts_from_hist(histogram, REGION)


def test_counts_from_hist_rejects_negative_content():
    histogram = hist_from_counts(np.ones(REGION.n_bins), REGION)
    histogram.view()[1, 2] = -1.0
    with pytest.raises(InvalidSimulationError, match=r"content -1.0 in flattened bin 6"):
        counts_from_hist(histogram, REGION)


def test_counts_from_hist_rejects_non_histogram():
    with pytest.raises(InvalidSimulationError, match=r"must be a hist.Hist"):
        counts_from_hist(np.ones(3), REGION)


def test_histogram_set_from_hists_and_acceptance():
    rng = np.random.default_rng(4)
    axis = hist.axis.Regular(5, 0, 1, name="x")  # with flow bins
    hists = [hist.Hist(axis).fill(rng.normal(0.5, 0.4, 1000)) for _ in range(3)]
    histograms = HistogramSet.from_hists(hists, process="signal")
    assert len(histograms) == 3
    assert histograms.histograms().shape == (3, 5)
    assert histograms.names == ["signal_0", "signal_1", "signal_2"]
    expected = [h.values().sum() / h.values(flow=True).sum() for h in hists]
    np.testing.assert_allclose(histograms.acceptances(), expected)
    with pytest.raises(InvalidRegionError, match=r"does not rebin"):
        histograms.histograms(Region(["x"], [(0, 1)], bins=4))
    with pytest.raises(InvalidSimulationError, match=r"needs at least 4"):
        histograms.require_at_least(4, purpose="learning 4 topics")


def test_histogram_set_rejects_mixed_binning():
    hists = [
        hist.Hist(hist.axis.Regular(5, 0, 1, name="x")),
        hist.Hist(hist.axis.Regular(4, 0, 1, name="x")),
    ]
    hists[0].fill([0.5])
    with pytest.raises(InvalidRegionError, match=r"axis 0 .* of histogram 1 of 'signal'"):
        HistogramSet.from_hists(hists, process="signal")


def test_histogram_set_rejects_empty_histogram():
    hists = [hist.Hist(hist.axis.Regular(5, 0, 1, name="x")) for _ in range(2)]
    hists[0].fill([0.5])
    with pytest.raises(InvalidSimulationError, match=r"histogram 1 of 'signal' has no entries"):
        HistogramSet.from_hists(hists, process="signal")


# ---------------------------------------------------------------------------------------------
# Configuration

BASE = {
    "observables": ["x", "n"],
    "region": {"x": {"range": [-1, 2], "bins": 6}, "n": {"edges": [0.5, 2.5, 4.5, 8.5]}},
    "processes": {
        "signal": {
            "simulations": [
                {"file": "sims.root", "trees": "msd_*"},
                {"file": "b.root", "tree": "t"},
                {"file": "c.root", "tree": "u"},
            ]
        },
        "background": {"simulations": [{"file": "/abs/bkg.root", "tree": "msd_00", "weight": "w"}]},
    },
    "data": {"file": "data.root", "tree": "events"},
}


def _with(path: str, value, *, delete: bool = False) -> dict:
    """Return a copy of BASE with the entry at a dotted path (list indices as [i]) replaced."""
    config = copy.deepcopy(BASE)
    parts = path.replace("[", ".").replace("]", "").split(".")
    target = config
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if delete:
        del target[last]
    else:
        target[last] = value
    return config


def test_parse_config_resolves_paths(tmp_path):
    config = parse_config(BASE, base_dir=tmp_path)
    assert config.observables == ("x", "n")
    assert config.region.shape == (6, 3)
    signal = config.processes["signal"]
    assert signal[0].file == (tmp_path / "sims.root").resolve()
    assert signal[0].trees == "msd_*"
    assert signal[0].key == "processes.signal.simulations[0]"
    assert config.processes["background"][0].file == Path("/abs/bkg.root")
    assert config.processes["background"][0].weight == "w"
    assert config.engines == ("binned",)
    assert config.binned.n_topics == 3
    assert config.output_dir == (tmp_path / "tamm-output").resolve()


def test_load_config_resolves_against_file_folder(tmp_path):
    import yaml

    folder = tmp_path / "analysis"
    folder.mkdir()
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(path)
    assert config.data.file == folder / "data.root"
    assert config.path == path.resolve()


def test_with_overrides():
    config = parse_config(BASE).with_overrides(seed=7, output_dir="/tmp/out")
    assert config.binned.seed == 7
    assert config.output_dir == Path("/tmp/out")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "observables",
            ["x", "n", "girth"],
            r"region: observable 'girth' is listed in observables but has no entry",
        ),
        (
            "region.girth",
            {"range": [0, 1], "bins": 2},
            r"region\.girth: 'girth' is not one of the observables",
        ),
        ("engines", ["magic"], r"engines\[0\]: unknown engine 'magic'"),
        (
            "unbinned",
            {"training": {"n_member": 3}},
            r"unbinned\.training: Unknown training settings \['n_member'\]",
        ),
        (
            "unbinned",
            {"training": {"n_members": 0}},
            r"unbinned\.training: TrainingSettings\.n_members must be an integer >= 1",
        ),
        ("unbinned", {"n_reference": 0}, r"unbinned\.n_reference: expected an integer >= 1"),
        ("unbinned", {"ridge_strength": -1}, r"unbinned\.ridge_strength: expected a finite"),
        ("unbinned", {"members": 2}, r"unbinned\.members: unknown key"),
        ("engines", [], r"engines: expected at least one engine"),
        (
            "binned",
            {"n_topics": "three"},
            r"binned\.n_topics: expected an integer >= 1, received 'three' \(str\)",
        ),
        (
            "binned",
            {"n_topics": True},
            r"binned\.n_topics: expected an integer >= 1, received True \(bool\)",
        ),
        ("binned", {"n_topics": 0}, r"binned\.n_topics: expected an integer >= 1, received 0"),
        ("binned", {"n_topic": 3}, r"binned\.n_topic: unknown key.*Did you mean 'n_topics'"),
        ("binned", {"tol": -1.0}, r"binned\.tol: expected a finite number in \[0\.0, inf\]"),
        (
            "processes.signal.simulations[2].tree",
            3,
            r"processes\.signal\.simulations\[2\]\.tree: expected a non-empty string, received 3 \(int\)",
        ),
        (
            "processes.signal.simulations[1].trees",
            "t*",
            r"processes\.signal\.simulations\[1\]: expected exactly one of tree or trees or histogram",
        ),
        (
            "processes.signal.simulations",
            [],
            r"processes\.signal\.simulations: expected at least one",
        ),
        (
            "processes.signal.simulations",
            {"file": "a.root"},
            r"processes\.signal\.simulations: expected a list",
        ),
        (
            "processes.background.simulations[0].file",
            None,
            r"processes\.background\.simulations\[0\]\.file: expected a non-empty string, received None",
        ),
        ("processes.other", {"simulations": []}, r"processes\.other: unknown key"),
        (
            "region.x.bins",
            2.5,
            r"region\.x\.bins: expected an integer >= 1, received 2\.5 \(float\)",
        ),
        ("region.x.range", [2, -1], r"region: Lower limit of 'x' must be below"),
        ("region.x.range", [0, "one"], r"region\.x\.range\[1\]: expected a number"),
        (
            "region.n.edges",
            [0.5, 4.5, 2.5, 8.5],
            r"region: Bin edges of 'n' must be a strictly increasing",
        ),
        ("observables", "x", r"observables: expected a list, received 'x' \(str\)"),
        ("observables", ["x", "x"], r"observables: names must be unique"),
        (
            "pseudo_data",
            {
                "signal": {"file": "s.root", "tree": "t"},
                "background": {"file": "b.root", "tree": "t"},
                "kappa": 0.2,
                "n_events": 10,
            },
            r"data: give exactly one of data",
        ),
        ("baseline", {"simulation": -1}, r"baseline\.simulation: expected an integer >= 0"),
        ("scan", {"points": 2}, r"scan\.points: expected an integer >= 3"),
        (
            "data.histogram",
            "h",
            r"data: expected exactly one of tree or histogram; received \['tree', 'histogram'\]",
        ),
    ],
)
def test_config_errors_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_with(path, value))


def test_config_error_is_a_tamm_value_error():
    with pytest.raises(ValueError, match=r"processes.background: missing required key"):
        parse_config(_with("processes.background", None, delete=True))
    assert issubclass(ConfigError, TammError)


def test_pseudo_data_kappa_range():
    config = _with("data", None, delete=True)
    config["pseudo_data"] = {
        "signal": {"file": "s.root", "tree": "t"},
        "background": {"file": "b.root", "tree": "t"},
        "kappa": 1.5,
        "n_events": 10,
    }
    with pytest.raises(
        ConfigError,
        match=r"pseudo_data\.kappa: expected a finite number in \[0\.0, 1\.0\], received 1\.5",
    ):
        parse_config(config)


def test_load_config_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"configuration file .*missing.yaml.* not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("observables: [x, n\nregion: {}\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"is empty"):
        load_config(empty)
