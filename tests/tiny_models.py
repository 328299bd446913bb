"""Test-size settings of the zoo's real models, in one place (the same timm / transformers
classes as the published models, a few blocks and a few channels wide)."""

from __future__ import annotations

TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)  # backbone_kwargs of any ViT family
TINY_WIDTH = 32  # decoder_hidden_size of any head (Mask2Former's GroupNorms need a multiple of 32)
TINY = dict(backbone_kwargs=TINY_VIT, decoder_hidden_size=TINY_WIDTH)
TINY_MIT = dict(backbone_kwargs=dict(hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                                     num_attention_heads=[1, 1, 1, 2]), decoder_hidden_size=TINY_WIDTH)
TINY_MASK2FORMER = dict(num_queries=8, decoder_layers=3, encoder_layers=1, num_attention_heads=2,
                        dim_feedforward=64, encoder_feedforward_dim=64)
# EoMT reads no decoder width: a 3-block ViT whose last 2 blocks see 8 queries
TINY_EOMT = dict(backbone_kwargs=dict(TINY_VIT, depth=3), num_queries=8, num_blocks=2, train_num_points=256)
