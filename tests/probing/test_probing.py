from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from lineage_lens.errors import ConfigError, LineageLensError, ShapeMismatchError
from lineage_lens.probing import HeadProbe, fit_truth_scores

SIGNAL_HEADS = [(1, 2), (2, 0)]


def planted(n: int = 400, layers: int = 3, heads: int = 4, d: int = 8, seed: int = 0):
    """Activations where SIGNAL_HEADS carry the label along one direction; others are noise."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    x = rng.standard_normal((n, layers, heads, d)).astype(np.float32)
    for layer, head in SIGNAL_HEADS:
        x[:, layer, head, 0] += 3.0 * (y - 0.5)
    return x, y


def test_planted_signal_heads_rank_top_and_null_heads_are_chance():
    x, y = planted(n=1000)
    scores = fit_truth_scores(x, y, folds=5, seed=0, progress=False)
    assert set(scores.top_k(2)) == set(SIGNAL_HEADS)
    null = np.ones(scores.shape, bool)
    for layer, head in SIGNAL_HEADS:
        null[layer, head] = False
        assert scores.accuracy[layer, head] > 0.85
    assert np.all(np.abs(scores.accuracy[null] - 0.5) < 0.05)
    assert set(scores.metrics) == {"accuracy", "precision", "recall", "f1", "auroc"}


def test_same_seed_identical_scores():
    x, y = planted()
    a = fit_truth_scores(x, y, seed=3, progress=False)
    b = fit_truth_scores(x, y, seed=3, progress=False)
    for metric in a.metrics:
        np.testing.assert_array_equal(a.get(metric), b.get(metric))


def test_metrics_match_sklearn_per_head():
    """Newton probe = LogisticRegression(C=1/l2) on standardised features, same folds."""
    x, y = planted(n=200)
    scores = fit_truth_scores(x, y, folds=4, seed=1, l2=1.0, progress=False)
    for layer, head in [(1, 2), (0, 0)]:
        feats = x[:, layer, head].astype(np.float64)
        per_fold = {m: [] for m in ("accuracy", "precision", "recall", "f1", "auroc")}
        for train, test in StratifiedKFold(4, shuffle=True, random_state=1).split(feats, y):
            scaler = StandardScaler().fit(feats[train])
            clf = LogisticRegression(C=1.0, tol=1e-10, max_iter=1000)
            clf.fit(scaler.transform(feats[train]), y[train])
            pred = clf.predict(scaler.transform(feats[test]))
            prob = clf.predict_proba(scaler.transform(feats[test]))[:, 1]
            per_fold["accuracy"].append(accuracy_score(y[test], pred))
            per_fold["precision"].append(precision_score(y[test], pred, zero_division=0))
            per_fold["recall"].append(recall_score(y[test], pred))
            per_fold["f1"].append(f1_score(y[test], pred))
            per_fold["auroc"].append(roc_auc_score(y[test], prob))
        for metric, values in per_fold.items():
            assert scores.get(metric)[layer, head] == pytest.approx(np.mean(values), abs=1e-6)


def test_adamw_recipe_agrees_with_newton_on_easy_data():
    x, y = planted(n=300)
    newton = fit_truth_scores(x, y, solver="newton", seed=0, progress=False)
    adamw = fit_truth_scores(x, y, solver="adamw", seed=0, progress=False)
    assert adamw.solver == "adamw"
    for layer, head in SIGNAL_HEADS:
        assert abs(newton.accuracy[layer, head] - adamw.accuracy[layer, head]) < 0.03
    assert np.mean(np.abs(newton.accuracy - adamw.accuracy)) < 0.05


def test_head_probe_estimator_fit_returns_self_and_refits():
    x, y = planted(n=200)
    probe = HeadProbe(folds=3, seed=0, refit=True, progress=False)
    assert probe.fit(x, y) is probe
    assert probe.coef_.shape == (3, 4, 8)
    pred = probe.predict(x)
    assert pred.shape == (200, 3, 4)
    assert (pred[:, 1, 2] == y).mean() > 0.85


def test_bad_inputs_raise_clear_errors():
    x, y = planted(n=40)
    with pytest.raises(ShapeMismatchError, match=r"40"):
        fit_truth_scores(x, y[:30], progress=False)
    with pytest.raises(LineageLensError, match="class"):
        fit_truth_scores(x, np.ones(40, int), progress=False)
    with pytest.raises(LineageLensError):
        fit_truth_scores(x, np.arange(40) % 3, progress=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(LineageLensError, match="(?i)nan|finite"):
        fit_truth_scores(bad, y, progress=False)
    with pytest.raises(LineageLensError, match="solver"):
        fit_truth_scores(x, y, solver="sgd", progress=False)  # type: ignore[arg-type]


def test_fits_head_activations_end_to_end(tiny_llama):
    from lineage_lens.capture import collect_head_activations
    from lineage_lens.data import ProbeExample

    objects = ["cat", "dog", "car", "tree", "house", "book", "table", "chair", "cup"]
    examples = [
        ProbeExample(f"the {obj} is on the mat", f"where is the {obj}", ans, label, f"r{i}")
        for i, obj in enumerate([*objects, objects[0]])
        for ans, label in (("on the mat", 1), ("in the tree", 0))
    ]
    acts = collect_head_activations(tiny_llama, examples, batch_size=8, dtype=torch.float32)
    # row r9 is word for word r0: exact duplicates across source rows, reported, one fold
    with pytest.warns(UserWarning, match="duplicate an example in another group"):
        scores = fit_truth_scores(acts, folds=2, seed=0, progress=False)
    assert scores.shape == (2, 4) and scores.n == 20 and scores.folds == 2
    assert scores.meta["cv"].startswith("StratifiedGroupKFold") and scores.meta["n_groups"] == 9


@pytest.mark.parametrize("hessian_dtype", [torch.float32, None])
def test_newton_solution_equals_sklearn_coefficients(hessian_dtype):
    """Lazy float32 Hessians still converge to the exact float64 optimum (the gradient is exact)."""
    from lineage_lens.probing import newton_logistic

    x, y = planted(n=120, d=10)
    feats = StandardScaler().fit_transform(x[:, 1, 2].astype(np.float64))
    w, n_iter = newton_logistic(
        torch.as_tensor(feats)[None],
        torch.as_tensor(y, dtype=torch.float64),
        l2=2.0,
        hessian_dtype=hessian_dtype,
    )
    clf = LogisticRegression(C=0.5, tol=1e-12, max_iter=5000).fit(feats, y)
    np.testing.assert_allclose(w[0, :-1].numpy(), clf.coef_[0], atol=1e-6)
    assert w[0, -1].item() == pytest.approx(clf.intercept_[0], abs=1e-6)
    assert 1 <= int(n_iter[0]) < 50
    # a warm start at the optimum stops at once
    _, again = newton_logistic(
        torch.as_tensor(feats)[None], torch.as_tensor(y, dtype=torch.float64), l2=2.0, init=w
    )
    assert int(again[0]) == 1


def test_head_metrics_match_sklearn_with_ties():
    from lineage_lens.probing import head_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    decision = np.round(rng.normal(size=(3, 60)), 1)  # many ties
    decision[2] = -1.0  # predicts nothing positive: precision/F1 are 0 by convention
    got = head_metrics(decision, y)
    for g in range(3):
        pred = (decision[g] > 0).astype(int)
        assert got["accuracy"][g] == pytest.approx(accuracy_score(y, pred))
        assert got["precision"][g] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert got["recall"][g] == pytest.approx(recall_score(y, pred, zero_division=0))
        assert got["f1"][g] == pytest.approx(f1_score(y, pred, zero_division=0))
        assert got["auroc"][g] == pytest.approx(roc_auc_score(y, decision[g]))


def test_tensor_input_and_bool_labels_give_same_scores():
    x, y = planted(n=120)
    a = fit_truth_scores(x, y, folds=3, progress=False)
    b = fit_truth_scores(
        torch.as_tensor(x), torch.as_tensor(y.astype(bool)), folds=3, progress=False
    )
    np.testing.assert_allclose(a.accuracy, b.accuracy)


def test_too_few_examples_per_class_for_folds():
    x, y = planted(n=8)
    with pytest.raises(LineageLensError, match="at least 5 examples of each class"):
        fit_truth_scores(x, y, folds=5, progress=False)
    with pytest.raises(LineageLensError, match="labels are required"):
        fit_truth_scores(x, progress=False)
    with pytest.raises(ShapeMismatchError, match=r"n_examples, n_layers"):
        fit_truth_scores(x[:, 0], y, progress=False)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(("n", "batch_size"), [(60, 512), (70, 16), (71, 32)])
def test_adamw_logistic_follows_each_heads_own_trajectory(
    n: int, batch_size: int, backend: str
) -> None:
    """The batched recipe equals nn.Linear + torch.optim.AdamW run head by head (the paper's way),
    with a full batch and with shuffled mini-batches (the last one short, and with rows left over
    from the compiled kernel's groups of four), across blocks of heads (torch) or threads
    (numba)."""
    import torch

    from lineage_lens.probing import adamw_logistic

    torch.manual_seed(0)
    heads, d, epochs = 5, 7, 30
    x = torch.randn(heads, n, d)
    y = (torch.rand(n) < 0.5).float()
    got = adamw_logistic(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(3),
        backend=backend,  # type: ignore[arg-type]
        block_bytes=2 * n * (d + 1) * 4,  # torch: blocks of two heads
    )
    for h in range(heads):
        probe = torch.nn.Linear(d, 1)
        torch.nn.init.zeros_(probe.weight)
        torch.nn.init.zeros_(probe.bias)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-3)
        gen = torch.Generator().manual_seed(3)
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for b0 in range(0, n, batch_size):
                idx = perm[b0 : b0 + batch_size]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    probe(x[h, idx]).squeeze(1), y[idx]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.testing.assert_close(got[h, :d], probe.weight.detach()[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[h, d], probe.bias.detach()[0], atol=1e-5, rtol=1e-4)


def test_adamw_logistic_backends_agree_and_reject_bad_choices() -> None:
    """Both backends give the same probes on data shaped like a real fold (d=64, several
    mini-batches), and a wrong backend is a ConfigError naming the choices."""
    import torch

    from lineage_lens.probing import adamw_logistic

    x, y = planted(n=600, d=64)
    xs = torch.as_tensor(x.reshape(600, -1, x.shape[-1]).transpose(1, 0, 2).copy())
    ys = torch.as_tensor(y, dtype=torch.float32)
    runs = {
        b: adamw_logistic(xs, ys, epochs=20, generator=torch.Generator().manual_seed(0), backend=b)
        for b in ("numba", "torch")
    }
    torch.testing.assert_close(runs["numba"], runs["torch"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"backend must be one of"):
        adamw_logistic(xs, ys, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"runs on the CPU, but the activations are on meta"):
        adamw_logistic(xs.to("meta"), ys.to("meta"), backend="numba")


# --------------------------------------------------------------------------------------------
# The authors' probe exactly (solver="truthprobe")
# --------------------------------------------------------------------------------------------


def authors_procedure(
    x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 42, epochs: int = 200
) -> dict[str, np.ndarray]:
    """The TruthProbe ``vectorized_linear_probe`` procedure as described in issue 19, written
    plainly: unstratified ``KFold(5, shuffle=True, random_state=42)`` over the example indices,
    raw features, one zero-initialised ``W [L, H, d]`` and ``B [L, H]`` trained by one
    ``torch.optim.AdamW`` (lr 1e-2, weight decay 1e-3) on the mean BCE-with-logits over
    ``(batch, layer, head)``, mini-batches of 512 in index order, 200 epochs; prediction
    ``sigmoid(logit) > 0.5``; each metric the mean of its fold values."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    n, layers, heads, d = xt.shape
    per_fold: dict[str, list[np.ndarray]] = {
        "accuracy": [],
        "precision": [],
        "recall": [],
        "f1": [],
    }
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        w = torch.zeros(layers, heads, d, requires_grad=True)
        b = torch.zeros(layers, heads, requires_grad=True)
        opt = torch.optim.AdamW([w, b], lr=1e-2, weight_decay=1e-3)
        for _ in range(epochs):
            for start in range(0, len(train), 512):
                batch = train[start : start + 512]
                logits = (xt[batch] * w).sum(-1) + b
                target = yt[batch].float()[:, None, None].expand(-1, layers, heads)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = (torch.sigmoid((xt[test] * w).sum(-1) + b) > 0.5).numpy()
        for metric, fn in (
            ("accuracy", accuracy_score),
            ("precision", precision_score),
            ("recall", recall_score),
            ("f1", f1_score),
        ):
            kw = {} if metric == "accuracy" else {"zero_division": 0}
            per_fold[metric].append(
                np.array(
                    [
                        [fn(y[test], pred[:, layer, head], **kw) for head in range(heads)]
                        for layer in range(layers)
                    ]
                )
            )
    return {m: np.mean(v, axis=0) for m, v in per_fold.items()}


@pytest.mark.parametrize(
    ("n", "batches"), [(90, 1), (700, 2), (1300, 3)], ids=["full-batch", "2-batches", "3-batches"]
)
def test_truthprobe_preset_equals_the_authors_procedure(n: int, batches: int) -> None:
    """Same accuracy (and precision/recall/F1) per head as the plain all-heads-tensor procedure,
    with one full batch and with 2 or 3 mini-batches per epoch (the last one short)."""
    rng = np.random.default_rng(n)
    x = (0.5 * rng.standard_normal((n, 2, 3, 8))).astype(np.float32)
    y = (rng.random(n) < 0.45).astype(np.int64)
    x[:, 1, 1, 0] += y - 0.5  # one informative head, the rest noise
    x[:, 0, 2] += 1.0  # raw (not standardised) features: an offset the probe must learn
    assert -(-(n - n // 5) // 512) == batches
    ref = authors_procedure(x, y)
    got = fit_truth_scores(x, y, solver="truthprobe", progress=False)
    assert got.solver == "truthprobe" and got.seed == 42 and got.meta["cv"].startswith("KFold")
    for metric, value in ref.items():
        np.testing.assert_allclose(got.get(metric), value, atol=1e-6, err_msg=metric)
    assert got.accuracy[1, 1] > 0.75  # the preset learned something: the check is not vacuous
    assert np.isfinite(got.get("auroc")).all()


def test_truthprobe_kernel_follows_one_all_heads_tensor_to_float32_rounding() -> None:
    """``adamw_logistic(shuffle=False, loss_heads=G)`` gives the weights of the authors' single
    ``[heads, d]`` tensor trained on the mean BCE over batch and heads (both backends), and the
    head count matters (Adam's eps): per-head means give other weights."""
    from lineage_lens.probing import adamw_logistic

    torch.manual_seed(1)
    heads, n, d, epochs, bs = 6, 70, 5, 40, 32
    x = 1e-5 * torch.randn(heads, n, d)  # gradients near Adam's eps, where the scale matters
    y = (torch.rand(n) < 0.4).float()
    w = torch.zeros(heads, d, requires_grad=True)
    b = torch.zeros(heads, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        for start in range(0, n, bs):
            logits = (x[:, start : start + bs] * w[:, None]).sum(-1) + b[:, None]
            target = y[start : start + bs].expand(heads, -1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ref = torch.cat([w.detach(), b.detach()[:, None]], 1)
    for backend in ("numba", "torch"):
        got = adamw_logistic(
            x, y, epochs=epochs, batch_size=bs, shuffle=False, loss_heads=heads, backend=backend
        )
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    per_head = adamw_logistic(x, y, epochs=epochs, batch_size=bs, shuffle=False)
    assert (per_head - ref).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="loss_heads"):
        adamw_logistic(x, y, loss_heads=0)


def test_truthprobe_seed_refit_and_rejected_groups() -> None:
    x, y = planted(n=100)
    default = fit_truth_scores(x, y, solver="truthprobe", progress=False)
    same = fit_truth_scores(x, y, solver="truthprobe", seed=42, progress=False)
    np.testing.assert_array_equal(default.accuracy, same.accuracy)
    assert fit_truth_scores(x, y, solver="truthprobe", seed=0, progress=False).seed == 0
    with pytest.raises(ConfigError, match="takes no groups"):
        fit_truth_scores(x, y, solver="truthprobe", groups=np.arange(100), progress=False)
    probe = HeadProbe(solver="truthprobe", refit=True).fit(x, y)
    assert (probe.predict(x)[:, 1, 2] == y).mean() > 0.85  # raw-space weights, no scaler


# --------------------------------------------------------------------------------------------
# Grouped folds (issue 20): duplicates and source rows must not straddle folds
# --------------------------------------------------------------------------------------------


def duplicated_noise(unique: int = 50, copies: int = 3, d: int = 32, seed: int = 0):
    """Pure noise rows, each copied ``copies`` times with its label: nothing to learn, but a
    probe that sees a copy in training recognises it in the test fold."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((unique, 2, 4, d)).astype(np.float32)
    labels = rng.permutation(np.arange(unique) % 2)
    rows = np.repeat(np.arange(unique), copies)
    return base[rows], labels[rows], rows


@pytest.mark.parametrize("solver", ["newton", "adamw"])
def test_grouped_folds_remove_the_duplicate_leak(solver: str) -> None:
    x, y, rows = duplicated_noise()
    with pytest.warns(UserWarning, match=r"duplicate another example exactly.*one .*fold"):
        auto = fit_truth_scores(x, y, solver=solver, progress=False)  # copies joined (issue 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # copies share a group: no leak, no warning
        grouped = fit_truth_scores(x, y, solver=solver, groups=rows, progress=False)
    for scores in (auto, grouped):  # example-level folds would memorise the copies (> 0.8)
        assert abs(scores.accuracy.mean() - 0.5) < 0.08  # chance, as pure noise should be
    assert grouped.meta["cv"].startswith("StratifiedGroupKFold") and grouped.meta["n_groups"] == 50


def test_head_activations_fold_by_source_id_and_group_errors() -> None:
    from lineage_lens.activations import HeadActivations

    x, y, rows = duplicated_noise(unique=30)
    ids = [f"row{r}" for r in rows]
    acts = HeadActivations(x, y, ids, model="m")
    direct = fit_truth_scores(x, y, groups=ids, progress=False)
    via_acts = fit_truth_scores(acts, progress=False)  # source_ids are the groups
    np.testing.assert_array_equal(direct.accuracy, via_acts.accuracy)
    with pytest.raises(ConfigError, match="at least 5 groups"):
        fit_truth_scores(x, y, groups=rows % 4, progress=False)
    with pytest.raises(ShapeMismatchError, match="groups"):
        fit_truth_scores(x, y, groups=rows[:-1], progress=False)
    with pytest.warns(UserWarning, match="another group"):
        fit_truth_scores(x, y, groups=np.arange(len(y)), progress=False)


def test_no_duplicates_no_warning() -> None:
    x, y = planted(n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_truth_scores(x, y, folds=3, progress=False)


# --------------------------------------------------------------------------------------------
# HeadProbe is a scikit-learn estimator (issue 26)
# --------------------------------------------------------------------------------------------


def test_head_probe_get_params_lists_every_init_argument() -> None:
    import inspect

    names = [p for p in inspect.signature(HeadProbe.__init__).parameters if p != "self"]
    probe = HeadProbe(folds=3, solver="adamw", l2=0.5, seed=7, groups=[0, 1], device="cpu")
    params = probe.get_params()
    assert sorted(params) == sorted(names)
    assert params["folds"] == 3 and params["solver"] == "adamw" and params["l2"] == 0.5
    assert params["seed"] == 7 and params["groups"] == [0, 1] and params["device"] == "cpu"
    # stored as given: no validation in __init__ (fit checks), as scikit-learn requires
    bad = HeadProbe(solver="sgd", l2=-1.0)  # type: ignore[arg-type]
    assert bad.get_params()["solver"] == "sgd" and bad.get_params()["l2"] == -1.0
    with pytest.raises(ConfigError, match="solver"):
        bad.fit(*planted(n=40))


def test_head_probe_set_params_changes_a_hyperparameter() -> None:
    probe = HeadProbe(folds=3, seed=0)
    assert probe.set_params(l2=4.0, solver="adamw") is probe
    assert probe.l2 == 4.0 and probe.get_params()["solver"] == "adamw"
    with pytest.raises(ValueError, match="Invalid parameter"):
        probe.set_params(learning_rate=1.0)


def test_head_probe_clone_is_unfitted_with_equal_params_and_refits_the_same() -> None:
    from sklearn.base import clone

    x, y = planted(n=120)
    probe = HeadProbe(folds=3, seed=2, l2=2.0, refit=True).fit(x, y)
    copy = clone(probe)
    assert copy is not probe and copy.get_params() == probe.get_params()
    assert not hasattr(copy, "scores_") and not hasattr(copy, "coef_")
    assert "fitted=no" in repr(copy)
    copy.fit(x, y)
    for metric in probe.scores_.metrics:
        np.testing.assert_array_equal(copy.scores_.get(metric), probe.scores_.get(metric))
    np.testing.assert_array_equal(copy.coef_, probe.coef_)
    np.testing.assert_array_equal(copy.predict_proba(x), probe.predict_proba(x))
    # refit switched off by set_params: the earlier final probes are gone, not stale
    copy.set_params(refit=False).fit(x, y)
    assert not hasattr(copy, "coef_")
    with pytest.raises(ConfigError, match="refit=True"):
        copy.predict(x)


def test_head_probe_shows_the_library_table_in_jupyter() -> None:
    probe = HeadProbe(folds=3)
    bundle = probe._repr_mimebundle_()
    assert bundle["text/plain"] == repr(probe) and repr(probe).startswith("HeadProbe(folds=3")
    assert bundle["text/html"].startswith("<table>")
