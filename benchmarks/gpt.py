"""A GPT-style decoder in plain PyTorch, for the benchmarks: GPT-2's layout at any size, random tokens as data.

Token and position embeddings, ``layers`` pre-norm blocks (causal self-attention through
``scaled_dot_product_attention``, a 4x MLP with GELU), a final norm and a head tied to the token embedding: the
parameter names and shapes of GPT-2 (``h.0.attn.c_attn.weight``, ...), without the ``transformers`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional


@dataclass(frozen=True)
class Size:
    """A model and batch size: GPT-2 124M is ``Size(12, 768, 12, 50257, 1024, 16)``."""

    layers: int
    width: int
    heads: int
    vocab: int
    context: int
    batch: int

    @property
    def parameters(self) -> int:
        """Parameters of the model (the head shares the token embedding)."""
        block = 12 * self.width**2 + 13 * self.width
        return self.layers * block + (self.vocab + self.context) * self.width + 2 * self.width


SIZES = {
    "smoke": Size(layers=2, width=32, heads=2, vocab=128, context=16, batch=2),
    "cpu": Size(layers=12, width=128, heads=4, vocab=512, context=64, batch=8),
    "gpt2-124m": Size(layers=12, width=768, heads=12, vocab=50257, context=1024, batch=16),
    "gpt2-1.5b": Size(layers=48, width=1600, heads=25, vocab=50257, context=1024, batch=4),
}


class Block(nn.Module):
    def __init__(self, size: Size) -> None:
        super().__init__()
        self.heads = size.heads
        self.ln_1 = nn.LayerNorm(size.width)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(size.width, 3 * size.width)
        self.attn.c_proj = nn.Linear(size.width, size.width)
        self.ln_2 = nn.LayerNorm(size.width)
        hidden = 4 * size.width
        self.mlp = nn.Sequential(nn.Linear(size.width, hidden), nn.GELU(), nn.Linear(hidden, size.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2's architecture at ``size``.

    Example::

        >>> model = GPT(SIZES["smoke"])
        >>> sum(p.numel() for p in model.parameters()) == SIZES["smoke"].parameters
        True
        >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
        torch.Size([2, 16, 128])
    """

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.wte = nn.Embedding(size.vocab, size.width)
        self.wpe = nn.Embedding(size.context, size.width)
        self.h = nn.ModuleList(Block(size) for _ in range(size.layers))
        self.ln_f = nn.LayerNorm(size.width)
        self.lm_head = nn.Linear(size.width, size.vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def language_model(size: Size, fused: bool) -> Any:
    """A LightningModule that trains :class:`GPT` on next-token prediction with AdamW (fused on CUDA)."""
    import lightning.pytorch as pl

    class LanguageModel(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = GPT(size)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            logits = self.model(batch[:, :-1])
            return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=3e-4, weight_decay=0.1, fused=fused or None)

    return LanguageModel()


def token_batches(size: Size, steps: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """``steps`` batches of random tokens (one more than the context, for the shifted targets)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, size.vocab, (steps * size.batch, size.context + 1), generator=generator)
    return torch.utils.data.DataLoader(tokens, batch_size=size.batch)
