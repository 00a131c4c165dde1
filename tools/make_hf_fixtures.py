#!/usr/bin/env python3
"""Builds the Hugging Face reference fixtures under assets/hf/.

Each case is a small, randomly initialised HF Nystromformer model saved with `save_pretrained`
(config.json + model.safetensors or pytorch_model.bin) and `io.json` holding the inputs and HF's
outputs. The Rust tests (nystromformer/tests/hf_fixtures.rs) load the checkpoint with the
library's loader and compare; CI uses the committed files and needs no Python.

Run in a venv:  python3 -m venv .venv && .venv/bin/pip install torch transformers safetensors
                .venv/bin/python tools/make_hf_fixtures.py
"""

import json
import pathlib

import torch
import transformers.models.nystromformer.modeling_nystromformer as hf_nystromformer
from transformers import (
    NystromformerConfig,
    NystromformerForMaskedLM,
    NystromformerForSequenceClassification,
    NystromformerModel,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent / "assets" / "hf"

BASE = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# name, model class, config overrides, batch, length, padded tail lengths (None = no mask), format
CASES = [
    # Nyström branch (m < n), conv skip on, batch of 2, masked-LM head, safetensors.
    ("nystrom_conv_mlm", NystromformerForMaskedLM,
     dict(segment_means_seq_len=16, num_landmarks=4, conv_kernel_size=5), 2, 16, None, "safetensors"),
    # Nyström branch without the conv skip, exact GELU, classification head, pytorch_model.bin.
    ("nystrom_noconv_cls", NystromformerForSequenceClassification,
     dict(segment_means_seq_len=16, num_landmarks=8, conv_kernel_size=None, hidden_act="gelu",
          num_labels=3), 1, 16, None, "bin"),
    # landmarks == segment_means_seq_len: HF's exact-softmax branch; with an attention mask.
    ("exact_branch_mask", NystromformerModel,
     dict(segment_means_seq_len=16, num_landmarks=16, conv_kernel_size=3), 2, 16, [0, 5], "safetensors"),
    # The published checkpoint's situation: landmarks == segment_means_seq_len, input shorter.
    ("exact_branch_short", NystromformerModel,
     dict(segment_means_seq_len=16, num_landmarks=16, conv_kernel_size=3), 1, 12, None, "safetensors"),
    # Nyström branch with an attention mask: HF lets padded tokens into the landmarks and the
    # conv; the Rust side reproduces it with MaskPolicy::HfCompatible.
    ("nystrom_mask_hfcompat", NystromformerModel,
     dict(segment_means_seq_len=16, num_landmarks=4, conv_kernel_size=5), 2, 16, [3, 0], "safetensors"),
]


def padding_mask_4x(config=None, inputs_embeds=None, attention_mask=None, **_):
    """The additive `[batch, 1, 1, n]` padding mask of transformers 4.x.

    transformers 5.x builds a `[batch, 1, n, n]` mask instead, which cannot be added to the
    Nyström branch's `[batch, heads, m, n]` scores: a padded batch in that branch raises a
    RuntimeError there. The 4.x mask gives the same result in the exact branch and the
    intended one in the Nyström branch.
    """
    if attention_mask is None:
        return None
    dtype = inputs_embeds.dtype
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


hf_nystromformer.create_bidirectional_mask = padding_mask_4x


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """HF's 0.02-std init makes attention nearly uniform; wider weights exercise the maths."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))


def make_case(name, cls, overrides, batch, length, pad_tails, fmt, seed):
    generator = torch.Generator().manual_seed(seed)
    conv_off = overrides.get("conv_kernel_size", 0) is None
    config = NystromformerConfig(**{**BASE, **{k: v for k, v in overrides.items() if v is not None}})
    if conv_off:
        # transformers 5.x's strict config refuses None although the model supports it.
        object.__setattr__(config, "conv_kernel_size", None)
    model = cls(config).eval()
    randomise(model, generator)
    if cls is NystromformerForMaskedLM:
        model.tie_weights()

    input_ids = torch.randint(3, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if pad_tails is not None:
        for row, tail in enumerate(pad_tails):
            if tail:
                attention_mask[row, length - tail:] = 0
                input_ids[row, length - tail:] = config.pad_token_id
    token_type_ids = torch.randint(0, config.type_vocab_size, (batch, length), generator=generator)

    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    token_type_ids=token_type_ids, output_hidden_states=True)

    folder = ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*"):
        stale.unlink()
    model.save_pretrained(folder)
    if fmt == "bin":
        # transformers 5.x writes only safetensors; the legacy format is a pickled state dict.
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    record = {
        "model": cls.__name__,
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist() if pad_tails is not None else None,
        "token_type_ids": token_type_ids.tolist(),
        "last_hidden_state": out.hidden_states[-1].tolist(),
    }
    if hasattr(out, "logits"):
        record["logits"] = out.logits.tolist()
    (folder / "io.json").write_text(json.dumps(record))
    print(f"{name}: {cls.__name__}, n={length}, batch={batch}, files={sorted(p.name for p in folder.iterdir())}")


def make_pinv_case(seed):
    """HF's iterative_inv with both initialisations, called directly: the config switch for the
    exact one (`inv_coeff_init_option=True`) crashes in transformers 5.x."""
    from transformers.models.nystromformer.modeling_nystromformer import NystromformerSelfAttention

    generator = torch.Generator().manual_seed(seed)
    config = NystromformerConfig(**{**BASE, "num_landmarks": 8, "segment_means_seq_len": 16})
    attention = NystromformerSelfAttention(config)
    scores = torch.randn(2, 3, 8, 8, generator=generator) * 2.0
    a = torch.softmax(scores, dim=-1)
    record = {"a": a.tolist()}
    for option in ("original", "exact"):
        attention.init_option = option
        record[f"z_{option}"] = attention.iterative_inv(a, n_iter=6).tolist()
    path = ROOT / "pinv.json"
    path.write_text(json.dumps(record))
    print(f"pinv: a {list(a.shape)}, both initialisations")


def main():
    torch.manual_seed(0)
    ROOT.mkdir(parents=True, exist_ok=True)
    for seed, case in enumerate(CASES):
        make_case(*case, seed=seed)
    make_pinv_case(seed=100)


if __name__ == "__main__":
    main()
