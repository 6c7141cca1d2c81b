"""SAELens interoperability: export this project's SAEs to SAELens folders and import SAELens folders.

A SAELens folder is ``cfg.json`` + ``sae_weights.safetensors`` as written by ``sae_lens.SAE.save_model``
and read by ``sae_lens.SAE.load_from_disk``. Parameters use the same layout in both projects
(``W_enc: (d, F)``, ``b_enc: (F,)``, ``W_dec: (F, d)``, ``b_dec: (d,)``).

Dataset normalisation. This project stores x_n = (x − s)/c in the model (buffers ``norm_shift`` s,
``norm_scale`` c). SAELens's inference classes have no affine input map, so the export folds it into
the weights, keeping the encoder pre-activations (hence the codes) unchanged:

* with a pre-encoder bias (TopK family, SoftSAE; SAELens ``apply_b_dec_to_input=True``):
  W_enc' = W_enc/c, b_dec' = c·b_dec + s, b_enc' = b_enc, since (x − b_dec')W_enc' = (x_n − b_dec)W_enc;
* without (JumpReLU, ReLU; ``apply_b_dec_to_input=False``): additionally b_enc' = b_enc − s·W_enc';
* decoder: W_dec' = c·W_dec, so z W_dec' + b_dec' = c(z W_dec + b_dec) + s, the raw reconstruction.

Thresholds compare pre-activations, which are unchanged, so they are copied as they are.

Architecture map (this project → SAELens ``architecture``): topk → topk; batch_topk and matryoshka →
jumprelu with θ_i = θ for every latent (SAELens saves its own BatchTopK and Matryoshka BatchTopK SAEs
for inference this way; the Matryoshka group sizes go into the metadata); jumprelu → jumprelu;
relu → standard; soft → ``softsae``, the class :class:`SoftSAELensSAE` defined here and registered
with ``sae_lens.register_sae_class`` when this module is imported.

Import reverses the map for SAELens topk, jumprelu (which covers BatchTopK), standard and softsae
folders; settings with no exact equivalent here raise :class:`SAELensInteropError` naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE as LensSAE
from sae_lens import JumpReLUSAE as LensJumpReLU
from sae_lens import JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig, register_sae_class
from sae_lens import StandardSAE as LensStandard
from sae_lens import TopKSAE as LensTopK
from sae_lens.registry import get_sae_class
from sae_lens.saes.sae import SAEConfig as LensConfig
from sae_lens.saes.sae import SAEMetadata
from torch import nn

from softsae_lib.ops.hard_topk import per_row_topk
from softsae_lib.saes import (
    SAE,
    BatchTopKSAE,
    JumpReLUSAE,
    MatryoshkaSAE,
    ReLUSAE,
    SoftSAE,
    TopKSAE,
)

__all__ = ["SoftSAELensConfig", "SoftSAELensSAE", "SAELensInteropError", "export_saelens", "import_saelens",
           "to_saelens", "from_saelens", "EXPORTABLE", "IMPORTABLE"]

SOFTSAE_ARCHITECTURE = "softsae"
EXPORTABLE: dict[str, str] = {"topk": "topk", "batch_topk": "jumprelu", "matryoshka": "jumprelu",
                              "jumprelu": "jumprelu", "relu": "standard", "soft": SOFTSAE_ARCHITECTURE}
"""This project's ``arch`` → the SAELens ``architecture`` it is exported as."""
IMPORTABLE: tuple[str, ...] = ("topk", "jumprelu", "standard", SOFTSAE_ARCHITECTURE)
"""SAELens ``architecture`` values :func:`import_saelens` reads."""
# SAELens applies no input transform at inference for these two (expected_average_only_in is folded
# or ignored there), so the folder's weights act on raw activations exactly as ours do.
_IDENTITY_NORMALIZATIONS = ("none", "expected_average_only_in")


class SAELensInteropError(ValueError):
    """A model or folder that cannot be represented on the other side (names the field and value)."""


# ---------------------------------------------------------------------------------------------- SoftSAE class
@dataclass
class SoftSAELensConfig(LensConfig):
    """SAELens config of an exported SoftSAE (architecture ``softsae``)."""

    k: int = 32
    """Target mean budget K the SAE was trained for (informational; inference uses k̂)."""
    k_max: float = 64.0
    """Upper end of k̂ = clamp(k_max·σ(·), 1, d_sae)."""

    @classmethod
    def architecture(cls) -> str:
        return SOFTSAE_ARCHITECTURE


class SoftSAELensSAE(LensSAE[SoftSAELensConfig]):
    """SAELens inference SAE for SoftSAE: per-input budget k̂(x) and hard top-⌊k̂⌋ encode.

    With x̃ = process_sae_in(x) (x − b_dec when ``apply_b_dec_to_input``):
    r = ReLU(x̃ W_enc + b_enc), k̂ = clamp(k_max·σ(ReLU(x̃ W1 + b1)·w2 + b2), 1, d_sae), codes = the
    ⌊k̂⌋ largest entries of each row of r. Parameters: ``k_est_W1: (d_in, d_sae)``, ``k_est_b1`` and
    ``k_est_w2: (d_sae,)``, ``k_est_b2: ()``.
    """

    b_enc: nn.Parameter
    k_est_W1: nn.Parameter
    k_est_b1: nn.Parameter
    k_est_w2: nn.Parameter
    k_est_b2: nn.Parameter

    def initialize_weights(self) -> None:
        super().initialize_weights()
        F, kw = self.cfg.d_sae, {"dtype": self.dtype, "device": self.device}
        self.b_enc = nn.Parameter(torch.zeros(F, **kw))
        self.k_est_W1 = nn.Parameter(self.W_enc.detach().clone())
        self.k_est_b1 = nn.Parameter(torch.zeros(F, **kw))
        self.k_est_w2 = nn.Parameter(torch.zeros(F, **kw))
        self.k_est_b2 = nn.Parameter(torch.zeros((), **kw))

    def _flat_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        sae_in = self.process_sae_in(x)
        return sae_in.reshape(-1, sae_in.shape[-1]), sae_in.shape[:-1]

    def predict_k(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous budget k̂: (...,) for raw activations x: (..., d_in)."""
        flat, lead = self._flat_in(x)
        return self._k_hat(flat).reshape(lead)

    def _k_hat(self, sae_in: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(sae_in @ self.k_est_W1 + self.k_est_b1)
        logit = hidden @ self.k_est_w2 + self.k_est_b2
        return (torch.sigmoid(logit.float()) * self.cfg.k_max).clamp(1.0, float(self.cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., d_sae) for raw activations x: (..., d_in)."""
        flat, lead = self._flat_in(x)
        hidden_pre = self.hook_sae_acts_pre(flat @ self.W_enc + self.b_enc)
        codes = per_row_topk(torch.relu(hidden_pre), self._k_hat(flat))
        return self.hook_sae_acts_post(codes.reshape(*lead, self.cfg.d_sae))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) from codes (..., d_sae)."""
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)


try:  # importing this module twice (e.g. importlib.reload) must not fail
    get_sae_class(SOFTSAE_ARCHITECTURE)
except KeyError:
    register_sae_class(SOFTSAE_ARCHITECTURE, SoftSAELensSAE, SoftSAELensConfig)


# ---------------------------------------------------------------------------------------------- export
@torch.no_grad()
def _folded_weights(sae: SAE) -> dict[str, torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec acting on raw activations (normalisation folded in), float64."""
    c = sae.norm_scale.detach().double()
    s = sae.norm_shift.detach().double()
    W_enc = sae.W_enc.detach().double() / c
    b_enc = sae.b_enc.detach().double()
    if not sae.pre_encoder_bias:
        b_enc = b_enc - s @ W_enc
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": sae.W_dec.detach().double() * c,
            "b_dec": sae.b_dec.detach().double() * c + s}


def to_saelens(sae: SAE, metadata: dict[str, Any] | None = None) -> LensSAE:
    """The SAELens inference model (float32, CPU) equivalent to ``sae`` on raw activations."""
    arch = sae.arch
    if arch not in EXPORTABLE:
        raise SAELensInteropError(f"arch {arch!r} has no SAELens counterpart; "
                                  f"exportable: {sorted(EXPORTABLE)}")
    state = _folded_weights(sae)
    meta = {"softsae_lib_arch": arch, "softsae_lib_config": _jsonable(vars(sae.config)), **(metadata or {})}
    common = {"d_in": sae.d_model, "d_sae": sae.dict_size, "dtype": "float32", "device": "cpu",
              "apply_b_dec_to_input": sae.pre_encoder_bias, "normalize_activations": "none"}
    if isinstance(sae, TopKSAE):
        cfg: LensConfig = TopKSAEConfig(k=sae.config.k, rescale_acts_by_decoder_norm=False, **common)
    elif isinstance(sae, BatchTopKSAE):  # includes MatryoshkaSAE
        theta = float(sae.threshold)
        if theta < 0:
            raise SAELensInteropError(f"{type(sae).__name__}.threshold = {theta}: no inference threshold yet "
                                      f"(train past threshold_start_step or call calibrate_threshold)")
        state["threshold"] = torch.full((sae.dict_size,), theta, dtype=torch.float64)
        if isinstance(sae, MatryoshkaSAE):
            meta["matryoshka_group_sizes"] = list(sae.config.resolved_group_sizes())
        cfg = JumpReLUSAEConfig(**common)
    elif isinstance(sae, JumpReLUSAE):
        state["threshold"] = sae.log_threshold.detach().double().exp()
        cfg = JumpReLUSAEConfig(**common)
    elif isinstance(sae, ReLUSAE):
        cfg = StandardSAEConfig(**common)
    else:
        assert isinstance(sae, SoftSAE)
        c = sae.norm_scale.detach().double()
        state.update(k_est_W1=sae.k_est_W1.detach().double() / c, k_est_b1=sae.k_est_b1.detach().double(),
                     k_est_w2=sae.k_est_w2.detach().double(), k_est_b2=sae.k_est_b2.detach().double())
        cfg = SoftSAELensConfig(k=sae.config.k, k_max=sae.config.effective_k_max, **common)
    cfg.metadata = SAEMetadata(**meta)
    model = get_sae_class(cfg.architecture())[0](cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def export_saelens(sae: SAE, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``); returns the folder.

    ``sae_lens.SAE.load_from_disk(folder)`` then gives the same codes and reconstructions on raw
    activations (B, d) as ``sae.encode``/``sae.decode``. ``metadata`` (JSON-serialisable, e.g.
    ``model_name``, ``hook_name``) goes into the SAELens metadata.
    """
    folder = Path(folder)
    to_saelens(sae, metadata).save_model(folder)
    return folder


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


# ---------------------------------------------------------------------------------------------- import
def _check_cfg(cfg: dict[str, Any], where: str) -> None:
    arch = cfg.get("architecture")
    if arch not in IMPORTABLE:
        hint = (" (a SAELens training folder: save the inference SAE, e.g. with save_inference_model)"
                if arch in ("batchtopk", "matryoshka_batchtopk") else "")
        raise SAELensInteropError(f"{where}: architecture {arch!r} cannot be imported{hint}; "
                                  f"supported: {list(IMPORTABLE)}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in _IDENTITY_NORMALIZATIONS:
        raise SAELensInteropError(f"{where}: normalize_activations = {norm!r} is a per-input transform "
                                  f"this project cannot represent; "
                                  f"supported: {list(_IDENTITY_NORMALIZATIONS)}")
    reshape = cfg.get("reshape_activations", "none")
    if reshape != "none":
        raise SAELensInteropError(f"{where}: reshape_activations = {reshape!r} is not supported "
                                  f"(flatten the heads and export with 'none')")


@torch.no_grad()
def from_saelens(lens: LensSAE) -> SAE:
    """This project's SAE computing the same codes and reconstructions as the SAELens model ``lens``."""
    cfg = lens.cfg
    _check_cfg(cfg.to_dict(), f"SAELens {type(lens).__name__}")
    st = {k: v.detach().double().cpu() for k, v in lens.state_dict().items()}
    W_enc, b_enc, W_dec, b_dec = st["W_enc"], st["b_enc"], st["W_dec"], st["b_dec"]
    d, F = cfg.d_in, cfg.d_sae
    common = {"d_model": d, "dict_size": F, "normalization": "none"}
    if isinstance(lens, LensTopK) and cfg.rescale_acts_by_decoder_norm:
        # top-k of (pre·‖d_i‖) decoded with d_i/‖d_i‖ is exactly a plain TopK with rescaled atoms
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    try:
        if isinstance(lens, LensTopK):
            model: SAE = TopKSAE(k=int(cfg.k), **common)
        elif isinstance(lens, SoftSAELensSAE):
            model = SoftSAE(k=int(cfg.k), k_max=float(cfg.k_max), **common)
        elif isinstance(lens, LensJumpReLU):
            model = JumpReLUSAE(**common)
        elif isinstance(lens, LensStandard):
            model = ReLUSAE(**common)
        else:
            raise SAELensInteropError(f"SAELens class {type(lens).__name__} cannot be imported")
    except (TypeError, ValueError) as err:
        if isinstance(err, SAELensInteropError):
            raise
        raise SAELensInteropError(f"SAELens config {cfg.to_dict()} is not representable: {err}") from err
    # Our pre-encoder-bias flag is fixed per class: fold SAELens's apply_b_dec_to_input into b_enc.
    if cfg.apply_b_dec_to_input and not model.pre_encoder_bias:
        b_enc = b_enc - b_dec @ W_enc
    elif model.pre_encoder_bias and not cfg.apply_b_dec_to_input:
        b_enc = b_enc + b_dec @ W_enc
    new = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if isinstance(lens, LensJumpReLU):
        # SAELens keeps ReLU(pre)·1[pre > θ]: a θ ≤ 0 acts as θ = 0, i.e. log θ = −inf here.
        new["log_threshold"] = st["threshold"].clamp_min(0).log()
    if isinstance(lens, SoftSAELensSAE):
        k_W1, k_b1 = st["k_est_W1"], st["k_est_b1"]
        if not cfg.apply_b_dec_to_input:
            k_b1 = k_b1 + b_dec @ k_W1
        new.update(k_est_W1=k_W1, k_est_b1=k_b1, k_est_w2=st["k_est_w2"], k_est_b2=st["k_est_b2"])
    for name, value in new.items():
        getattr(model, name).copy_(value.to(torch.float32))
    model.b_dec_initialized.fill_(True)
    return model.eval()


def import_saelens(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Read a SAELens folder (topk, jumprelu — also BatchTopK's inference form —, standard, softsae).

    The config is checked before SAELens builds the model, so an unsupported architecture or
    setting raises :class:`SAELensInteropError` naming the field and value.
    """
    folder = Path(folder)
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        raise SAELensInteropError(f"{cfg_path}: not found (is {folder} a SAELens folder?)")
    _check_cfg(json.loads(cfg_path.read_text(encoding="utf-8")), str(cfg_path))
    lens = LensSAE.load_from_disk(folder, device="cpu", dtype="float32")
    return from_saelens(lens).to(device)
