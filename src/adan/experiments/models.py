"""Small versions of the paper's model families: a ResNet, a ViT and a GPT."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images (He et al.'s CIFAR design): 3 stages of n blocks."""

    def __init__(self, in_channels: int, classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(_Block(cin, cout, 2 if (stage > 0 and i == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


class ViT(nn.Module):
    """A small Vision Transformer: patch embedding, pre-norm encoder, class token."""

    def __init__(self, in_channels: int, classes: int, image: int, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4):
        super().__init__()
        if image % patch:
            raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class CharGPT(nn.Module):
    """A character-level GPT: causal pre-norm transformer with learned positions."""

    def __init__(self, vocab: int, context: int = 128, dim: int = 128, depth: int = 4, heads: int = 4):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos[:, :t]
        x = self.blocks(x, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(x))


class CharBERT(nn.Module):
    """A character-level BERT-style encoder for masked-token pre-training: bidirectional
    pre-norm transformer with learned positions; token id ``vocab`` is ``[MASK]``."""

    def __init__(self, vocab: int, context: int = 64, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.mask_id = vocab
        self.tok = nn.Embedding(vocab + 1, dim)
        # BERT's init: at torch's default (std 1) the tokens drown the positions (std 0.02) and,
        # with no causal mask to tell positions apart, the loss sits at the unigram baseline
        # for thousands of steps
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        return self.head(self.norm(self.blocks(self.tok(idx) + self.pos[:, : idx.shape[1]])))


def mask_tokens(x: torch.Tensor, vocab: int, gen: torch.Generator, rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``rate`` of the positions are predicted; of those 80% become
    ``[MASK]`` (id ``vocab``), 10% a random token, 10% stay. Targets are -100 elsewhere."""
    selected = torch.rand(x.shape, generator=gen) < rate
    r = torch.rand(x.shape, generator=gen)
    inputs = x.clone()
    inputs[selected & (r < 0.8)] = vocab
    swap = selected & (r >= 0.8) & (r < 0.9)
    inputs[swap] = torch.randint(0, vocab, (int(swap.sum()),), generator=gen)
    targets = torch.where(selected, x, torch.full_like(x, -100))
    return inputs, targets


def vision_model(name: str, shape: tuple[int, int, int], classes: int, size: str = "full") -> nn.Module:
    c, h, _ = shape
    if name == "resnet":
        return ResNet(c, classes, depth=20 if size == "full" else 8, width=16)
    if name == "vit":
        patch = 4 if h % 4 == 0 else 7
        return ViT(c, classes, h, patch=patch, dim=64 if size == "full" else 32, depth=4 if size == "full" else 2)
    raise ValueError(f"unknown vision model {name!r}; choose resnet or vit")
