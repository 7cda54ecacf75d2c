"""Weight drift: perturbed heads drift exactly there, LLaVA descendants, geometry errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lineage_lens.errors import ShapeMismatchError
from lineage_lens.models import load_model
from lineage_lens.testing import make_tiny_model
from lineage_lens.weights import (
    HEAD_KEYS,
    WeightDrift,
    layer_drift,
    weight_drift,
)

H, KV, DH = 4, 2, 8  # tiny geometry: 4 query heads, 2 kv heads, d_head 8 (d_model 32)


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def lineage_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift")
    base = make_tiny_model(root / "base", "llama", n_kv_heads=KV, seed=11)
    gen = torch.Generator().manual_seed(0)

    def perturb(sd):
        def bump(key, rows=None, cols=None):
            w = sd[key]
            sl = w[rows] if rows is not None else w[:, cols]
            delta = 0.1 * torch.randn(sl.shape, generator=gen)
            if rows is not None:
                w[rows] += delta
            else:
                w[:, cols] += delta

        bump("model.layers.0.self_attn.q_proj.weight", rows=slice(1 * DH, 2 * DH))  # q of (0, 1)
        bump("model.layers.1.self_attn.o_proj.weight", cols=slice(3 * DH, 4 * DH))  # o of (1, 3)
        bump("model.layers.1.self_attn.v_proj.weight", rows=slice(0, DH))  # v of kv head (1, 0)

    child = _edit_weights(base, root / "child", perturb)

    llava = make_tiny_model(root / "llava_raw", "llava", n_kv_heads=KV, seed=12)
    base_sd = load_file(str(base / "model.safetensors"))

    def graft(sd):  # the LLaVA's language model := the base's blocks
        for key in list(sd):
            if "vision" not in key and ".layers." in key:
                sd[key] = base_sd["model.layers." + key.split(".layers.", 1)[1]].clone()

    return {
        "base": base,
        "child": child,
        "llava": _edit_weights(llava, root / "llava", graft),
    }


EXPECTED_CHANGED = {
    "q": {(0, 1)},
    "k": set(),
    "v": {(1, 0), (1, 1)},  # kv head 0 of layer 1 serves query heads 0 and 1
    "o": {(1, 3)},
    "qk": {(0, 1)},
    "ov": {(1, 0), (1, 1), (1, 3)},
}


def test_perturbed_heads_drift_exactly_there(lineage_dirs):
    drift = weight_drift(lineage_dirs["base"], lineage_dirs["child"])
    assert drift.shape == (2, H)
    for name, changed in EXPECTED_CHANGED.items():
        rel, cos = drift.heads[f"{name}_rel"], drift.heads[f"{name}_cos"]
        mask = np.zeros((2, H), dtype=bool)
        for lh in changed:
            mask[lh] = True
        assert np.all(rel[mask] > 1e-3), name
        assert np.all(rel[~mask] == 0.0), name
        assert np.all(cos[mask] < 1 - 1e-6), name
        np.testing.assert_allclose(cos[~mask], 1.0, atol=1e-12, err_msg=name)
    assert set(drift.changed_heads(name="ov_rel")) == EXPECTED_CHANGED["ov"]
    assert np.flatnonzero(drift.kv_heads["v_rel_kv"]).tolist() == [1 * KV + 0]
    assert not drift.kv_heads["k_rel_kv"].any()
    lf = drift.layer_frame()
    assert lf.loc[0, "q_layer_rel"] > 0 and lf.loc[1, "q_layer_rel"] == 0
    assert lf.loc[0, "mean_q_rel"] == pytest.approx(drift.heads["q_rel"][0, 1] / H)


def test_bridge_and_directory_sources_agree(lineage_dirs):
    base = load_model(lineage_dirs["base"], device="cpu")
    child = load_model(lineage_dirs["child"], device="cpu")
    from_bridges = weight_drift(base, child)
    from_dirs = weight_drift(lineage_dirs["base"], lineage_dirs["child"])
    for key in HEAD_KEYS:
        np.testing.assert_allclose(from_bridges.heads[key], from_dirs.heads[key], atol=1e-12)


def test_circuit_drift_matches_dense_computation():
    torch.manual_seed(0)
    dm = H * DH
    anc = {
        "q": torch.randn(H * DH, dm),
        "k": torch.randn(KV * DH, dm),
        "v": torch.randn(KV * DH, dm),
        "o": torch.randn(dm, H * DH),
    }
    desc = {k: v + 0.3 * torch.randn_like(v) for k, v in anc.items()}
    from lineage_lens.models import HeadGeometry

    out = layer_drift(anc, desc, HeadGeometry(1, H, KV, DH, dm))
    for h in range(H):
        g = h // (H // KV)

        def qk(w, h=h, g=g):
            return w["q"][h * DH : (h + 1) * DH].T.double() @ w["k"][g * DH : (g + 1) * DH].double()

        def ov(w, h=h, g=g):
            return (
                w["o"][:, h * DH : (h + 1) * DH].double() @ w["v"][g * DH : (g + 1) * DH].double()
            )

        for name, fn in (("qk", qk), ("ov", ov)):
            a, d = fn(anc), fn(desc)
            rel = float((d - a).norm() / a.norm())
            cos = float((a * d).sum() / (a.norm() * d.norm()))
            assert out[f"{name}_rel"][h] == pytest.approx(rel, rel=1e-9)
            assert out[f"{name}_cos"][h] == pytest.approx(cos, rel=1e-9)


def test_llava_descendant_with_grafted_language_model_has_zero_drift(lineage_dirs):
    llava = load_model(lineage_dirs["llava"], device="cpu")
    drift = weight_drift(lineage_dirs["base"], llava)
    for key in HEAD_KEYS:
        target = 0.0 if key.endswith("rel") else 1.0
        np.testing.assert_allclose(drift.heads[key], target, atol=1e-12)
    # and the directory reader skips the vision tower the same way
    drift_dir = weight_drift(lineage_dirs["base"], lineage_dirs["llava"])
    assert np.all(drift_dir.heads["qk_rel"] == 0)


def test_geometry_mismatch_names_both(lineage_dirs, tiny_dirs):
    with pytest.raises(ShapeMismatchError) as err:
        weight_drift(lineage_dirs["base"], tiny_dirs["llama"])  # 2 vs 4 kv heads
    msg = str(err.value)
    assert "'n_kv_heads': 2" in msg and "'n_kv_heads': 4" in msg


def test_save_load_frame_plot(lineage_dirs, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    drift = weight_drift(lineage_dirs["base"], lineage_dirs["child"])
    path = drift.save(tmp_path / "drift.npz")
    back = WeightDrift.load(path)
    assert back.geometry == drift.geometry and back.ancestor == drift.ancestor
    for key in HEAD_KEYS:
        np.testing.assert_array_equal(back.heads[key], drift.heads[key])
    frame = drift.to_frame()
    assert len(frame) == 2 * H and {"layer", "head", "qk_rel", "ov_cos"} <= set(frame.columns)
    assert drift.plot().get_lines() and drift.plot(whole_matrix=True).get_lines()
    assert drift.heatmap("ov_rel").images


def test_cli_drift(lineage_dirs, tmp_path):
    import json

    from typer.testing import CliRunner

    from lineage_lens.cli import app

    runner = CliRunner()
    out = tmp_path / "d.npz"
    args = ["drift", "--ancestor", str(lineage_dirs["base"]), "--descendant"]
    res = runner.invoke(app, [*args, str(lineage_dirs["child"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "mean_qk_rel" in res.output
    assert WeightDrift.load(out).changed_heads(name="qk_rel") == [(0, 1)]
    res = runner.invoke(app, [*args, str(lineage_dirs["llava"]), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["geometry"]["n_kv_heads"] == KV
    assert payload["layers"]["mean_ov_rel"] == [0.0, 0.0]


@pytest.mark.model
def test_phi3_fused_qkv_is_split_like_hugging_face(tmp_path):
    """A directory with a fused qkv_proj (Phi3) reads as the q, k and v rows HF's Phi3 uses
    (query, then key, then value rows); a config that disagrees with the tensor is named."""
    import json

    from lineage_lens.weights import open_weights

    directory = make_tiny_model(tmp_path / "phi3", "phi3", n_kv_heads=2, seed=3)
    tensors = load_file(str(directory / "model.safetensors"))
    qkv = tensors["model.layers.1.self_attn.qkv_proj.weight"]
    layer = open_weights(directory).layer(1)
    nq, nkv = 4 * 8, 2 * 8
    assert torch.equal(layer["q"], qkv[:nq]) and torch.equal(layer["k"], qkv[nq : nq + nkv])
    assert torch.equal(layer["v"], qkv[nq + nkv :])
    assert torch.equal(layer["o"], tensors["model.layers.1.self_attn.o_proj.weight"])
    cfg = json.loads((directory / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError, match="qkv_proj"):
        open_weights(directory).layer(0)
