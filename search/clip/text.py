"""Tokenising, and the short-text path.

CLIP's text tower is causal and pools at the end token, so the padding after it
cannot change the result: encoding a five-word phrase only up to its end token is
a tenth of the work. ``ShortText`` does that as a module (exportable, with the
sequence length as a dynamic axis); it is trusted only after it gave the model's
own ``encode_text`` vectors on a probe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

PROBE = ["a photo of a tiger playing in the snow", "snow"]


def is_truncated(tokenizer: Callable, context_length: int, phrase: str) -> bool:
    """Whether ``phrase`` is longer than the model reads (its end would be ignored)."""
    try:
        if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
            return len(tokenizer.encode(phrase)) + 2 > context_length
        if hasattr(tokenizer, "tokenizer"):
            ids = tokenizer.tokenizer(phrase)["input_ids"]
            return len(ids) > context_length
    except Exception:  # a tokenizer we do not know: assume it fits
        return False
    return False


def _has_short_layout(m: torch.nn.Module) -> bool:
    mask = getattr(m, "attn_mask", None)
    if (getattr(m, "text_pool_type", None) not in ("argmax", "eos")
            or not all(hasattr(m, a) for a in ("token_embedding", "positional_embedding",
                                               "transformer", "ln_final", "text_projection"))
            or not isinstance(mask, torch.Tensor) or mask.dim() != 2):
        return False
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    # causal: no token sees the padding after it
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def end_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    if getattr(model, "text_pool_type", None) == "eos":
        eos_id: int = getattr(model, "text_eos_id")  # noqa: B009 (an open_clip attribute)
        return (tokens == eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def cut(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens up to the longest phrase's end token: what ``ShortText`` needs."""
    return tokens[:, :int(end_positions(model, tokens).max()) + 1]


class ShortText(torch.nn.Module):
    """The text tower on tokens cut after the end token; normalised vectors out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m: Any = self.m  # open_clip's CLIP: its attributes are not typed
        length = tokens.shape[1]
        ends = end_positions(m, tokens)
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), ends]
        if m.text_projection is not None:
            x = (m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear)
                 else x @ m.text_projection)
        return torch.nn.functional.normalize(x.float(), dim=-1)


class FullText(torch.nn.Module):
    """The model's own ``encode_text``, normalised: for towers ``ShortText`` does not fit."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m: Any = self.m
        return torch.nn.functional.normalize(m.encode_text(tokens).float(), dim=-1)


def text_module(model: torch.nn.Module, tokenizer: Callable, device: str
                ) -> tuple[torch.nn.Module, bool]:
    """``(module, short)``: ``ShortText`` when it gives ``encode_text``'s vectors, else
    ``FullText``. ``short`` says whether callers should ``cut`` the tokens first."""
    full = FullText(model).eval()
    if not _has_short_layout(model):
        return full, False
    short = ShortText(model).eval()
    tokens = tokenizer(PROBE).to(device)
    with torch.inference_mode():
        want = full(tokens)
        try:
            got = short(cut(model, tokens))
        except Exception:  # a tower laid out differently: use encode_text as it is
            log.info("text encoder: full-length path (short path failed)", exc_info=True)
            return full, False
    if not bool((want * got).sum(-1).min() > 0.9999):
        log.info("text encoder: full-length path (short path differs)")
        return full, False
    return short, True
