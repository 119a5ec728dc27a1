"""CLIP's two encoders with HF names: ``CLIPVisionTransformer`` (``vision_model``) and ``CLIPTextTransformer``."""
from typing import Any

import torch
from torch import Tensor, nn

from .transformer import CLIPEncoder


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (Conv2d without bias) + class token + learned positions (``grid**2 + 1``)."""

    def __init__(self, width: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding((image_size // patch_size) ** 2 + 1, width)

    def forward(self, pixel_values: Tensor) -> Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if patches.shape[1] + 1 != self.position_embedding.num_embeddings:
            raise ValueError(f'Image of size {tuple(pixel_values.shape[-2:])} gives {patches.shape[1]} patches; '
                             f'the model has {self.position_embedding.num_embeddings - 1} positions.')
        cls = self.class_embedding.expand(patches.shape[0], 1, -1).to(patches.dtype)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class CLIPVisionTransformer(nn.Module):
    """Image -> pooled feature: ``post_layernorm(encoder(pre_layrnorm(embeddings))[:, 0])``.

    ``pre_layrnorm`` keeps HF's spelling so HF checkpoints load unchanged.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 with_cp: bool = False, **block: Any) -> None:
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(width, image_size, patch_size)
        self.pre_layrnorm = nn.LayerNorm(width, eps=block.get('layer_norm_eps', 1e-5))
        self.encoder = CLIPEncoder(width, layers, heads, with_cp=with_cp, **block)
        self.post_layernorm = nn.LayerNorm(width, eps=block.get('layer_norm_eps', 1e-5))

    def forward(self, pixel_values: Tensor) -> Tensor:
        tokens = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return self.post_layernorm(tokens[:, 0])


class CLIPTextEmbeddings(nn.Module):
    """Token table and learned positions (HF's ``text_model.embeddings``; applied in the text transformer)."""

    def __init__(self, vocab_size: int, context_length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)


class CLIPTextTransformer(nn.Module):
    """Token ids -> pooled feature: causal encoder, ``final_layer_norm``, the hidden state at the end-of-text token.

    Args:
        context_length: Number of positions (77 for OpenAI's models).
        vocab_size: Size of the token table.
        eot_token_id: Id of the end-of-text token whose position is pooled (default ``vocab_size - 1``, OpenAI's
            ``<|endoftext|>``; as the largest id it is also what OpenAI's ``argmax`` pooling finds).
    """

    def __init__(self, context_length: int, vocab_size: int, width: int, layers: int, heads: int,
                 eot_token_id: int = None, with_cp: bool = False, **block: Any) -> None:
        super().__init__()
        self.eot_token_id = vocab_size - 1 if eot_token_id is None else eot_token_id
        self.embeddings = CLIPTextEmbeddings(vocab_size, context_length, width)
        self.encoder = CLIPEncoder(width, layers, heads, with_cp=with_cp, **block)
        self.final_layer_norm = nn.LayerNorm(width, eps=block.get('layer_norm_eps', 1e-5))

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.embeddings.position_embedding.num_embeddings:
            raise ValueError(f'Token sequence of length {length} exceeds the context length '
                             f'{self.embeddings.position_embedding.num_embeddings}.')
        is_eot = input_ids == self.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError(f'Every token sequence must contain the end-of-text token id {self.eot_token_id}.')
        x = self.embeddings.token_embedding(input_ids) + self.embeddings.position_embedding.weight[:length]
        x = self.final_layer_norm(self.encoder(x, causal=True))
        return x[torch.arange(x.shape[0], device=x.device), is_eot.int().argmax(dim=1)]
