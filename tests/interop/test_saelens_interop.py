"""SAELens interoperability against the real ``sae-lens`` package (pinned in requirements-lock.txt).

Export: every exportable architecture, with a fitted scale+shift normalisation, loads through
``sae_lens.SAE.load_from_disk`` and gives our codes, reconstructions and per-sample L0 on raw inputs.
Import: SAELens models with known random weights, saved with SAELens's own ``save_model``, import
to models with SAELens's codes; a JumpReLU folder runs through the per-sample L0-vs-LID analysis.
"""

from __future__ import annotations

import json

import pytest
import torch

# Imported, not importorskip'ed: sae-lens is pinned in requirements-lock.txt and installed by
# `make test`, so a missing package must fail the run rather than skip these tests.
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from softsae_lib.evaluation import evaluate_sae
from softsae_lib.interop.saelens import (
    SAELensInteropError,
    SoftSAELensSAE,
    export_saelens,
    import_saelens,
)
from softsae_lib.lid import local_id
from softsae_lib.saes import make_sae
from softsae_lib.stats import summarize_association

D, F = 16, 64
SCALE = 3.0


def _raw_inputs(n: int = 256, seed: int = 0) -> torch.Tensor:
    """(n, D) activations with a non-trivial mean and scale, so normalisation folding matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * SCALE + torch.linspace(-2, 2, D)


def _perturbed(arch: str, **kw) -> torch.nn.Module:
    """A model of ``arch`` with random (not initial, not tied) weights and a fitted normalisation."""
    model = make_sae(arch, d_model=D, dict_size=F, normalization="scale_shift", **kw)
    model.fit_normalization(_raw_inputs(seed=1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        if hasattr(model, "threshold"):
            model.threshold.fill_(0.05)
        if arch == "jumprelu":
            model.log_threshold.copy_(torch.rand(F, generator=g) * 2 - 4)
    return model.eval()


EXPORT_CASES = [
    ("topk", {"k": 5}, TopKSAE, "topk"),
    ("batch_topk", {"k": 5}, JumpReLUSAE, "jumprelu"),
    ("matryoshka", {"k": 5, "group_sizes": (8, 24, 32)}, JumpReLUSAE, "jumprelu"),
    ("jumprelu", {}, JumpReLUSAE, "jumprelu"),
    ("relu", {}, StandardSAE, "standard"),
    ("soft", {"k": 5}, SoftSAELensSAE, "softsae"),
]


@pytest.mark.parametrize(("arch", "kw", "lens_cls", "lens_arch"), EXPORT_CASES,
                         ids=[c[0] for c in EXPORT_CASES])
def test_export_loads_in_saelens_with_equal_codes(tmp_path, arch, kw, lens_cls, lens_arch):
    model = _perturbed(arch, **kw)
    x = _raw_inputs()
    folder = export_saelens(model, tmp_path / arch, metadata={"hook_name": "blocks.0.hook_resid_post"})
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == lens_arch and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["softsae_lib_arch"] == arch
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    lens = SAE.load_from_disk(folder)
    assert type(lens) is lens_cls
    with torch.no_grad():
        z, z_lens = model.encode(x), lens.encode(x)
        torch.testing.assert_close(z_lens, z, rtol=1e-5, atol=1e-5)
        assert torch.equal((z_lens != 0).sum(-1), (z != 0).sum(-1)), "per-sample L0 differs"
        torch.testing.assert_close(lens.decode(z_lens), model.decode(z), rtol=1e-5, atol=1e-4 * SCALE)
        torch.testing.assert_close(lens(x), model(x), rtol=1e-5, atol=1e-4 * SCALE)
    l0 = (z != 0).sum(-1)
    assert l0.min() >= 1 and z.abs().sum() > 0  # the comparison is not between two all-zero codes
    if arch in ("batch_topk", "jumprelu", "soft"):
        assert l0.unique().numel() > 1  # adaptive per-sample L0 survives the export
    if arch == "soft":
        torch.testing.assert_close(lens.predict_k(x), model.predict_k(x), rtol=1e-5, atol=1e-5)
    if arch == "matryoshka":
        assert cfg["metadata"]["matryoshka_group_sizes"] == [8, 24, 32]


@pytest.mark.parametrize(("arch", "kw", "lens_cls", "lens_arch"), EXPORT_CASES,
                         ids=[c[0] for c in EXPORT_CASES])
def test_export_then_import_gives_the_same_codes(tmp_path, arch, kw, lens_cls, lens_arch):
    model = _perturbed(arch, **kw)
    x = _raw_inputs(seed=3)
    back = import_saelens(export_saelens(model, tmp_path / arch))
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), model.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-4 * SCALE)


def _random_lens(cls, cfg_cls, seed: int, **cfg_kw):
    """A SAELens inference SAE with known random weights (not its initialisation)."""
    lens = cls(cfg_cls(d_in=D, d_sae=F, **cfg_kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lens.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name != "threshold" else 0.5))
            if name == "threshold":
                p.abs_()
    return lens.eval()


IMPORT_CASES = [
    ("topk", TopKSAE, TopKSAEConfig, {"k": 6}),
    ("topk_no_bdec_rescaled", TopKSAE, TopKSAEConfig,
     {"k": 6, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu_gdm", JumpReLUSAE, JumpReLUSAEConfig, {"apply_b_dec_to_input": False}),
    ("jumprelu_bdec", JumpReLUSAE, JumpReLUSAEConfig, {"apply_b_dec_to_input": True}),
    ("standard", StandardSAE, StandardSAEConfig, {}),
]


@pytest.mark.parametrize(("name", "cls", "cfg_cls", "cfg_kw"), IMPORT_CASES, ids=[c[0] for c in IMPORT_CASES])
def test_import_saelens_folder_matches_saelens_codes(tmp_path, name, cls, cfg_cls, cfg_kw):
    lens = _random_lens(cls, cfg_cls, seed=len(name), **cfg_kw)
    lens.save_model(tmp_path / name)
    ours = import_saelens(tmp_path / name)
    x = _raw_inputs(seed=4)
    with torch.no_grad():
        z_lens, z = lens.encode(x), ours.encode(x)
        torch.testing.assert_close(z, z_lens, rtol=1e-5, atol=1e-5)
        assert torch.equal((z != 0).sum(-1), (z_lens != 0).sum(-1))
        torch.testing.assert_close(ours.decode(z), lens.decode(z_lens), rtol=1e-5, atol=1e-4)
    assert (z != 0).any()


def test_jumprelu_folder_runs_through_per_sample_analysis(tmp_path):
    """A SAE trained elsewhere: per-sample L0 from our evaluation equals SAELens's, and the L0-vs-LID
    association table is computed on it (its L0 is adaptive, so Spearman is defined)."""
    lens = _random_lens(JumpReLUSAE, JumpReLUSAEConfig, seed=7, apply_b_dec_to_input=False)
    lens.save_model(tmp_path / "jr")
    ours = import_saelens(tmp_path / "jr")
    x = _raw_inputs(n=400, seed=5)
    res = evaluate_sae(ours, x, batch_size=128, return_per_sample=True)
    l0 = res["per_sample"]["l0"]
    with torch.no_grad():
        assert torch.equal(l0.long(), (lens.encode(x) != 0).sum(-1).long())
    assert l0.unique().numel() > 3
    lid = local_id(x, k=10, estimators=("mle",))["mle"]
    row = summarize_association(l0.numpy(), lid.numpy(), clusters=torch.arange(400).numpy() // 20, n_boot=50)
    assert row["n"] == 400 and -1 <= row["spearman"] <= 1
    assert row["spearman_ci_low"] <= row["spearman"] <= row["spearman_ci_high"]
    assert 0 <= res["fvu"] and res["l0"]["mean"] == pytest.approx(float(l0.float().mean()))


def test_unrepresentable_settings_raise_naming_field_and_value(tmp_path):
    lens = _random_lens(StandardSAE, StandardSAEConfig, seed=1, normalize_activations="layer_norm")
    lens.save_model(tmp_path / "ln")
    with pytest.raises(SAELensInteropError, match=r"normalize_activations = 'layer_norm'"):
        import_saelens(tmp_path / "ln")
    cfg = json.loads((tmp_path / "ln" / "cfg.json").read_text())
    cfg.update(architecture="gated", normalize_activations="none")
    (tmp_path / "ln" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAELensInteropError, match=r"architecture 'gated'"):
        import_saelens(tmp_path / "ln")
    with pytest.raises(SAELensInteropError, match=r"arch 'tree'"):
        export_saelens(make_sae("tree", d_model=D, dict_size=F, k=8), tmp_path / "tree")
    untrained = make_sae("batch_topk", d_model=D, dict_size=F, k=4)
    with pytest.raises(SAELensInteropError, match=r"threshold = -1"):
        export_saelens(untrained, tmp_path / "btk")
    with pytest.raises(SAELensInteropError, match="cfg.json: not found"):
        import_saelens(tmp_path / "nothing")


def test_import_saelens_batchtopk_saved_for_inference(tmp_path):
    """SAELens saves a trained BatchTopK SAE for inference as a jumprelu folder; it imports as such,
    while its training folder (architecture 'batchtopk') is refused with a pointer to the fix."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    train = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in train.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        train.topk_threshold.fill_(0.4)
    train.save_inference_model(tmp_path / "inference")
    lens = SAE.load_from_disk(tmp_path / "inference")
    ours = import_saelens(tmp_path / "inference")
    x = _raw_inputs(seed=6)
    with torch.no_grad():
        z = ours.encode(x)
        torch.testing.assert_close(z, lens.encode(x), rtol=1e-5, atol=1e-5)
        assert z[z != 0].min() > 0.4 and (z != 0).sum(-1).unique().numel() > 1
    train.save_model(tmp_path / "training")
    with pytest.raises(SAELensInteropError, match=r"architecture 'batchtopk'.*save_inference_model"):
        import_saelens(tmp_path / "training")
