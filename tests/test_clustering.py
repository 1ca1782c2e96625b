"""cluster_layers: recovery of planted trend families, the feature rule, stable ids, errors, odd inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import planted_curves
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import adjusted_rand_score

from lightning_rwc.clustering import cluster_layers, match_labels, prepare_curves, summarise
from lightning_rwc.history import RWCHistory


def planted_history(**kwargs):
    names, family, values = planted_curves(**kwargs)
    return RWCHistory.from_arrays(names, range(values.shape[1]), values), dict(zip(names, family, strict=True))


def ari(result, family):
    layers = [n for n in result.layers if family[n] != -1]
    return adjusted_rand_score([family[n] for n in layers], [result.labels[n] for n in layers])


@pytest.mark.parametrize(
    "options", [{"method": "hdbscan"}, {"method": "kmeans"}, {"method": "kmeans", "n_clusters": 4}]
)
def test_planted_families_are_recovered(options):
    history, family = planted_history()
    result = cluster_layers(history, **options)
    assert ari(result, family) >= 0.9
    assert result.n_clusters == 4
    assert result.silhouette is not None and result.silhouette > 0.5


def planted_layers(layers: int, seed: int) -> tuple[RWCHistory, dict[str, int]]:
    """``layers`` layers dealt round-robin from the four planted families (no outliers)."""
    names, family, values = planted_curves(per_family=(layers + 3) // 4, outliers=0, seed=seed)
    dealt = sorted(range(len(names)), key=lambda i: (int(np.sum(family[:i] == family[i])), family[i]))[:layers]
    kept = [names[i] for i in dealt]
    history = RWCHistory.from_arrays(kept, range(values.shape[1]), values[dealt])
    return history, dict(zip(kept, family[dealt], strict=True))


@pytest.mark.parametrize("layers", [7, 20, 200, 2000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_recovers_planted_families_from_a_handful_of_layers_to_thousands(layers, seed):
    history, family = planted_layers(layers, seed)
    result = cluster_layers(history)
    assert ari(result, family) >= 0.9
    assert result.noise_fraction <= 0.5
    assert result.params["why"].startswith("HDBSCAN found")  # the output says which method answered, and why


def test_three_layers_get_an_answer_that_is_not_all_noise():
    history, _ = planted_layers(3, seed=0)
    result = cluster_layers(history)
    assert result.n_clusters >= 1 and result.noise_fraction < 1
    assert result.params["method"] == "kmeans" and "k-means with k=" in result.markdown()


def test_hdbscan_alone_finds_no_cluster_in_seven_layers_which_is_why_the_default_falls_back():
    history, _ = planted_layers(7, seed=0)
    assert cluster_layers(history, method="hdbscan").noise_fraction == 1.0
    assert cluster_layers(history).params["method"] == "kmeans"


def test_shape_features_group_the_same_trend_at_different_scales():
    t = np.arange(1, 21, dtype=float)
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for i in range(40):
        scale = 10.0 ** rng.uniform(-4, -1)
        trend = np.exp(-t / 3) if i % 2 else np.exp(t / 10)
        rows.append(scale * trend * rng.lognormal(0, 0.02, t.size))
        truth.append(i % 2)
    history = RWCHistory.from_arrays([f"l{i}" for i in range(40)], t, np.array(rows))
    shape = cluster_layers(history, features="shape", method="kmeans")
    assert adjusted_rand_score(truth, [shape.labels[f"l{i}"] for i in range(40)]) == 1.0


def test_results_are_deterministic_for_a_seed():
    history, _ = planted_history(per_family=30)
    a, b = cluster_layers(history, method="kmeans", seed=3), cluster_layers(history, method="kmeans", seed=3)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.embedding, b.embedding)


def test_summaries_are_mean_and_quartiles_of_the_members():
    history, _ = planted_history(per_family=20, outliers=0)
    result = cluster_layers(history, method="kmeans", n_clusters=4)
    for summary in result.summaries:
        rows = np.array([history.curve(name) for name in summary.members])
        np.testing.assert_allclose(summary.mean, rows.mean(axis=0))
        np.testing.assert_allclose(summary.lower, np.percentile(rows, 25, axis=0))
        np.testing.assert_allclose(summary.upper, np.percentile(rows, 75, axis=0))
        depths = [result.depth[n] for n in summary.members]
        assert summary.depth_range == (min(depths), max(depths))
    assert sum(len(s.members) for s in result.summaries) == 80
    assert [s.cluster_id for s in result.summaries] == [0, 1, 2, 3]
    firsts = [min(result.depth[n] for n in s.members) for s in result.summaries]
    assert firsts == sorted(firsts)  # ids follow depth


def test_summaries_skip_missing_values_and_leave_steps_no_member_measured_missing_without_warning():
    raw = np.array([[1.0, np.nan, 2.0, 8.0], [3.0, np.nan, np.nan, 4.0], [5.0, np.nan, 6.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (summary,) = summarise(["a", "b", "c"], [0, 1, 2], np.zeros(3, dtype=int), raw)
    columns = [[1.0, 3.0, 5.0], [], [2.0, 6.0], [8.0, 4.0, 0.0]]  # the measured values of each step
    for got, statistic in (
        (summary.mean, np.mean),
        (summary.lower, lambda column: np.percentile(column, 25)),
        (summary.upper, lambda column: np.percentile(column, 75)),
    ):
        np.testing.assert_array_equal(got, [statistic(column) if column else np.nan for column in columns])


def test_feature_rule_excludes_fills_and_floors():
    values = np.array(
        [
            [0.1, np.nan, 0.4, np.inf],  # two filled
            [np.nan, np.nan, 0.2, np.nan],  # one finite value: excluded
            [0.0, 0.01, 0.02, 0.04],  # zero floored to a tenth of the smallest positive value
        ]
    )
    curves, kept, excluded, imputed = prepare_curves(values, ["a", "b", "c"])
    assert kept == [0, 2]
    assert excluded == {"b": "1 finite value(s) of 4"}
    assert imputed == {"a": 2, "c": 1}
    np.testing.assert_allclose(curves[0], [0.1, 10 ** np.mean(np.log10([0.1, 0.4])), 0.4, 0.4])
    np.testing.assert_allclose(curves[1], [0.001, 0.01, 0.02, 0.04])


def test_nan_and_inf_layers_are_reported_not_fatal():
    history, _ = planted_history(per_family=20, outliers=0)
    values = history.values.copy()
    values[0] = np.nan
    values[1, 3] = np.inf
    broken = RWCHistory.from_arrays(history.layers, history.steps, values)
    result = cluster_layers(broken, method="kmeans")
    assert history.layers[0] in result.excluded and history.layers[0] not in result.labels
    assert result.imputed[history.layers[1]] == 1


def test_match_labels_keeps_ids_of_clusters_that_keep_their_members():
    names = ["a", "b", "c", "d", "e", "f"]
    previous = {"a": 0, "b": 0, "c": 1, "d": 1, "e": -1, "f": 2}
    labels = np.array([1, 1, 0, 0, 0, 2])  # same groups, different numbering, f now alone in a new cluster
    relabelled = match_labels(names, labels, previous)
    assert relabelled.tolist() == [0, 0, 1, 1, 1, 2]
    fresh = match_labels(names, np.array([5, 5, 5, -1, -1, -1]), {"a": -1})
    assert fresh.tolist() == [0, 0, 0, -1, -1, -1]


def test_matching_splits_merges_new_and_vanished_clusters():
    names = list("abcdefghij")
    previous = {"a": 0, "b": 0, "c": 0, "d": 0, "e": 1, "f": 1, "g": 2, "h": 2, "i": -1, "j": -1}
    # 0 splits into {a, b, c} and {d}; 1 and 2 merge into {e, f, g, h}; {i, j} is new
    labels = match_labels(names, np.array([7, 7, 7, 8, 9, 9, 9, 9, 5, 5]), previous).tolist()
    assert labels[:3] == [0, 0, 0]  # the larger part of the split keeps the id
    assert len(set(labels[4:8])) == 1 and labels[4] in (1, 2)  # the merged cluster keeps one of the two ids
    assert labels[3] != labels[8] and {labels[3], labels[8]} == {3, 4}  # the others get ids never used before
    assert match_labels(names, np.array([7, 7, 7, 8, 9, 9, 9, 9, 5, 5]), previous, next_id=10).tolist()[8] == 10


def test_a_vanished_clusters_id_is_not_given_to_a_later_one():
    names = list("abcdef")
    first = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2}
    second = match_labels(names, np.array([0, 0, 1, 1, -1, -1]), first, next_id=3)  # cluster 2 went to noise
    assert second.tolist() == [0, 0, 1, 1, -1, -1]
    third = match_labels(names, np.array([0, 0, 1, 1, 2, 2]), dict(zip(names, second.tolist(), strict=True)), next_id=3)
    assert third.tolist() == [0, 0, 1, 1, 3, 3]


def test_cluster_results_carry_the_next_free_id_from_one_clustering_to_the_next():
    history, _ = planted_history(per_family=10)
    first = cluster_layers(history, method="kmeans", n_clusters=4)
    assert first.next_id == 4
    first.next_id = 9  # as if ids up to 8 had been given out earlier
    noisy = RWCHistory.from_arrays(history.layers, history.steps, history.values[:, ::-1])  # reversed curves
    second = cluster_layers(noisy, method="kmeans", n_clusters=5, previous=first)
    new_ids = set(second.labels.values()) - set(first.labels.values())
    assert all(cid >= 9 for cid in new_ids) and second.next_id > max(second.labels.values())


label_sequences = st.integers(2, 14).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-1, 4), min_size=n, max_size=n),
        st.lists(st.integers(-1, 5), min_size=n, max_size=n),
        st.integers(0, 8),
    )
)


@settings(max_examples=200, deadline=None)
@given(label_sequences)
def test_matching_guarantees_hold_for_any_labels(sequences):
    before, after, next_id = sequences
    names = [f"l{i}" for i in range(len(before))]
    previous = dict(zip(names, before, strict=True))
    matched = match_labels(names, np.array(after), previous, next_id).tolist()
    assert [m == -1 for m in matched] == [a == -1 for a in after]  # noise stays noise, nothing else becomes it
    groups = {cid: {n for n, a in zip(names, after, strict=True) if a == cid} for cid in set(after) - {-1}}
    ids = {cid: matched[after.index(cid)] for cid in groups}
    assert all(matched[i] == ids[a] for i, a in enumerate(after) if a != -1)  # a cluster gets one id
    assert len(set(ids.values())) == len(ids)  # two clusters never share an id
    old_ids = set(before) - {-1}
    for cid, new in ids.items():
        if new in old_ids:  # kept an earlier id: it shares members with that earlier cluster
            assert any(previous[n] == new for n in groups[cid])
        else:  # a new id: never used before
            assert new >= max(next_id, max(old_ids, default=-1) + 1)


def test_previous_result_gives_stable_ids_across_reclusterings():
    history, _ = planted_history(per_family=25)
    first = cluster_layers(history, method="kmeans", n_clusters=4)
    shuffled = RWCHistory.from_arrays(history.layers[::-1], history.steps, history.values[::-1])
    second = cluster_layers(shuffled, method="kmeans", n_clusters=4, previous=first)
    assert second.labels == first.labels


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "dbscan"}, "method must be one of"),
        ({"features": "raw"}, "features must be one of"),
        ({"reduction": "tsne"}, "reduction must be one of"),
        ({"n_clusters": 1}, "n_clusters must be at least 2"),
        ({"explained_variance": 0}, "explained_variance must be in"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    history, _ = planted_history(per_family=5)
    with pytest.raises(ValueError, match=message):
        cluster_layers(history, **kwargs)


def test_too_few_measurements_or_layers_is_a_clear_error():
    one = RWCHistory.from_arrays(["a", "b", "c"], [1], np.ones((3, 1)))
    with pytest.raises(ValueError, match="at least 2 measurements per layer; this history has 1"):
        cluster_layers(one)
    two_layers = RWCHistory.from_arrays(["a", "b"], [1, 2], np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 3 layers.*2 of 2 qualify"):
        cluster_layers(two_layers)
    history, _ = planted_history(per_family=1, outliers=0)
    with pytest.raises(ValueError, match="n_clusters=4 needs more layers"):
        cluster_layers(history, method="kmeans", n_clusters=4)


def test_umap_without_the_package_says_how_to_install_it():
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401

        pytest.skip("umap-learn is installed")
    except ImportError:
        pass
    history, _ = planted_history(per_family=5)
    with pytest.raises(ModuleNotFoundError, match="pip install umap-learn"):
        cluster_layers(history, reduction="umap")


def test_json_is_strict_with_missing_figures_as_null(tmp_path):
    import json
    import math

    history, _ = planted_history(per_family=10)
    result = cluster_layers(history, method="kmeans", n_clusters=4)
    result.explained_variance = math.nan  # as UMAP reports it
    result.summaries[0].mean[0] = np.inf
    result.save(tmp_path / "clusters.json")
    data = json.loads((tmp_path / "clusters.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data["quality"]["explained_variance"] is None
    assert data["clusters"][0]["mean"][0] is None and data["clusters"][0]["mean"][1] is not None


def test_to_dict_holds_labels_summaries_quality_and_params():
    history, family = planted_history(per_family=20)
    data = cluster_layers(history).to_dict()
    assert data["format_version"] == 1
    assert set(data["labels"]) == set(history.layers)
    assert data["params"]["method"] == "hdbscan"
    assert data["quality"]["n_clusters"] == len(data["clusters"])
    assert sorted(data["noise"]) == sorted(n for n, c in data["labels"].items() if c == -1)
    assert all(len(c["mean"]) == len(history) for c in data["clusters"])


odd_values = arrays(
    np.float64,
    st.tuples(st.integers(1, 12), st.integers(1, 8)),
    elements=st.one_of(
        st.floats(0, 10, allow_nan=False),
        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-300, 1e300]),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(values=np.array([[5e-324, 1.0], [1.0, 2.0], [3.0, 1.0]]), method="kmeans", features="magnitude")
@given(
    values=odd_values,
    method=st.sampled_from(["hdbscan", "kmeans"]),
    features=st.sampled_from(["magnitude", "shape"]),
)
def test_odd_inputs_give_a_result_or_a_documented_error(values, method, features):
    history = RWCHistory.from_arrays([f"l{i}" for i in range(values.shape[0])], range(values.shape[1]), values)
    try:
        result = cluster_layers(history, method=method, features=features)
    except ValueError as err:
        assert "at least 2 measurements" in str(err) or "at least 3 layers" in str(err)
        return
    assert set(result.labels) | set(result.excluded) == set(history.layers)
    assert np.isfinite(result.embedding).all()
    assert 0.0 <= result.noise_fraction <= 1.0
    result.markdown()


def test_elbow_finds_the_number_of_planted_families():
    from sklearn.datasets import make_blobs

    from lightning_rwc.clustering import elbow_k

    points, _ = make_blobs(n_samples=200, centers=5, cluster_std=0.3, random_state=0)
    k, inertias = elbow_k(points)
    assert k == 5
    assert len(inertias) == 8 and inertias == sorted(inertias, reverse=True)


def test_original_recipe_uses_two_components_and_the_elbow():
    from lightning_rwc.clustering import original_recipe

    history, family = planted_history()
    result, inertias = original_recipe(history)
    assert result.embedding.shape[1] == 2 and result.params["method"] == "kmeans"
    assert result.n_clusters == 4 and len(inertias) == 8
    assert ari(result, family) >= 0.9


def test_measurements_of_different_intervals_are_clustered_per_optimizer_step():
    rng = np.random.default_rng(0)
    steps = np.cumsum(np.tile([4, 2], 10))  # every_n_steps=4 with epoch ends between: intervals 4, 2, 4, 2, ...
    rates = np.concatenate([np.full(6, 1e-3), np.full(6, 1e-2)])[:, None] * rng.lognormal(0, 0.05, (12, 20))
    layers = [f"l{i}.weight" for i in range(12)]
    uneven = RWCHistory.from_arrays(layers, steps, rates * np.diff(steps, prepend=0))  # RWC grows with the interval
    result = cluster_layers(uneven, method="kmeans", n_clusters=2)
    assert result.params["per_step"] is True
    per_step = cluster_layers(
        RWCHistory.from_arrays(layers, steps, rates), method="kmeans", n_clusters=2, per_step=False
    )
    assert result.labels == per_step.labels
    for ours, reference in zip(result.summaries, per_step.summaries, strict=True):
        np.testing.assert_allclose(ours.mean, reference.mean, rtol=1e-12)
    even = RWCHistory.from_arrays(layers, np.arange(1, 21) * 4, rates)
    assert cluster_layers(even, method="kmeans", n_clusters=2).params["per_step"] is False


def test_per_step_needs_a_history_that_kept_every_measurement():
    bounded = RWCHistory(capacity=4)
    for step in range(1, 11):
        bounded.append(step, 0, {f"l{i}": 0.01 * (i + 1) * step**-0.5 for i in range(4)})
    with pytest.raises(ValueError, match="per_step=True needs each measurement's interval"):
        cluster_layers(bounded, method="kmeans", n_clusters=2, per_step=True)
    assert cluster_layers(bounded, method="kmeans", n_clusters=2).params["per_step"] is False
