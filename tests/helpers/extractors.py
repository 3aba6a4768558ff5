"""Tiny random transformers models of every extractor family, saved to a folder (no hub)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")


SIZE = 64  # the size every tiny model (and its processor) was configured for


RESIZE = 96  # model.image_size in the tests: every family but SAM sees 96 x 96, SAM its 64


def _text_config() -> dict:
    return dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=64,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _vit_config() -> dict:
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=16,
    )


def _tokenizer():
    """A character-level CLIP tokenizer (no download): enough for any lowercase prompt."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def save_tiny(family: str, folder: Path) -> Path:
    """Build a tiny random `family` model + processor and save_pretrained both to folder."""
    t = transformers
    torch.manual_seed(0)
    square = {"height": SIZE, "width": SIZE}
    if family == "sam":
        config = t.SamConfig(
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                mlp_dim=64,
                image_size=SIZE,
                patch_size=16,
                output_channels=16,
                global_attn_indexes=[1],
                window_size=2,
            ),
            prompt_encoder_config=dict(hidden_size=16, image_size=SIZE, patch_size=16),
            mask_decoder_config=dict(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                mlp_dim=32,
                iou_head_hidden_dim=16,
            ),
        )
        model = t.SamModel(config)
        processor = t.SamImageProcessorPil(size={"longest_edge": SIZE}, pad_size=square)
    elif family == "clipseg":
        config = t.CLIPSegConfig(
            text_config=_text_config(),
            vision_config=_vit_config(),
            projection_dim=24,
            extract_layers=[0, 1],  # within the tiny depth of 2
            reduce_dim=16,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
            conditional_layer=0,
        )
        model = t.CLIPSegForImageSegmentation(config)
        processor = t.CLIPSegProcessor(
            image_processor=t.ViTImageProcessorPil(size=square), tokenizer=_tokenizer()
        )
    elif family == "efficientnet":
        # hidden_dim must match the scaled top width: round_filters(1280 * 0.1) = 128
        config = t.EfficientNetConfig(
            image_size=SIZE,
            width_coefficient=0.1,
            depth_coefficient=0.1,
            hidden_dim=128,
            num_hidden_layers=4,
        )
        model = t.EfficientNetModel(config)
        processor = t.EfficientNetImageProcessorPil(size=square)
    elif family == "clip":
        config = t.CLIPConfig(
            text_config=_text_config(), vision_config=_vit_config(), projection_dim=24
        )
        model = t.CLIPModel(config)
        processor = t.CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size=square)
    elif family == "dinov2":
        config = t.Dinov2Config(**_vit_config())
        model = t.Dinov2Model(config)
        processor = t.BitImageProcessorPil(size={"shortest_edge": SIZE}, crop_size=square)
    elif family == "convnextv2":
        config = t.ConvNextV2Config(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=SIZE
        )
        model = t.ConvNextV2Model(config)
        processor = t.ConvNextImageProcessorPil(size={"shortest_edge": SIZE})
    elif family == "swinv2":
        config = t.Swinv2Config(
            image_size=SIZE,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
        )
        model = t.Swinv2Model(config)
        processor = t.ViTImageProcessorPil(size=square)
    else:
        raise ValueError(family)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
