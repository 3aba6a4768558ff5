"""The seven transformers extractors, on tiny random models saved and reloaded from disk.

Each tiny model is built from its config class, written with save_pretrained (model and
processor) and loaded back through worker.extractors.hf.build -> from_pretrained, the same
path a real checkpoint takes. Features are checked against a direct model call on the same
processed input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.extractors import RESIZE, SIZE, save_tiny
from worker.errors import JobError
from worker.extractors import get_extractor
from worker.images import resize_square
from worker.job import ModelConfig

transformers = pytest.importorskip("transformers")


FAMILIES = ["sam", "clipseg", "efficientnet", "clip", "dinov2", "convnextv2", "swinv2"]

# Feature width with pooling "flatten" for the tiny models above.
FLAT_DIMS = {
    "sam": 16 * 4 * 4,  # output_channels x (64/16)^2
    "clipseg": 3 * 17 * 16,  # decoder hidden states (3) x (1 + 16 tokens) x reduce_dim
    "efficientnet": 128,  # pooler_output width
    "clip": 24,  # projection_dim
    "dinov2": 17 * 32,  # (1 + 16 tokens) x hidden
    "convnextv2": 32 * 8 * 8,  # last width x (64/4/2)^2
    "swinv2": 64 * 32,  # (64/4/2)^2 tokens x 2*embed_dim
}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {fam: save_tiny(fam, root / fam) for fam in FAMILIES}


@pytest.fixture(scope="session")
def extractors(tiny_dirs) -> dict:
    """One loaded extractor per family (pooling flatten), shared by the tests."""
    return {
        fam: get_extractor(
            ModelConfig(name=fam, checkpoint=str(tiny_dirs[fam]), image_size=RESIZE, batch_size=2)
        )
        for fam in FAMILIES
    }


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(50, 80), (90, 60), (64, 64), (33, 120), (100, 100)]
    return [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in shapes
    ]


def reference_features(ex, family: str, pooling: str, imgs: list[Image.Image]) -> np.ndarray:
    """The feature from a direct call on the loaded model, on the processor's batch output."""
    resized = [resize_square(im, RESIZE) for im in imgs]
    pixel_values = ex.image_processor(images=resized, return_tensors="pt")["pixel_values"]
    m = ex.model
    with torch.inference_mode():
        if family == "sam":
            emb = m.get_image_embeddings(pixel_values)
            out = emb.flatten(1) if pooling == "flatten" else emb.mean(dim=(2, 3))
        elif family == "clipseg":
            proc = transformers.AutoProcessor.from_pretrained(ex.info["checkpoint"], backend="pil")
            tok = proc.tokenizer([ex.prompt] * len(imgs), return_tensors="pt")
            res = m(**tok, pixel_values=pixel_values, output_hidden_states=True)
            states = res.decoder_output.hidden_states
            pick = {
                "flatten": lambda h: h.flatten(1),
                "mean": lambda h: h[:, 1:].mean(1),
                "cls": lambda h: h[:, 0],
            }[pooling]
            out = torch.cat([pick(h) for h in states], dim=1)
        elif family == "efficientnet":
            out = m(pixel_values=pixel_values).pooler_output
        elif family == "clip":
            feats = m.get_image_features(pixel_values=pixel_values)
            out = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        else:
            h = m(pixel_values=pixel_values).last_hidden_state
            if pooling == "flatten":
                out = h.flatten(1)
            elif pooling == "cls":
                out = h[:, 0]
            elif family == "dinov2":
                out = h[:, 1:].mean(1)
            elif family == "convnextv2":
                out = h.mean(dim=(2, 3))
            else:
                out = h.mean(1)
    return out.float().numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 summation order (batches of 2 here vs one batch in the reference)."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_matches_direct_model_call(family, extractors, images):
    ex = extractors[family]
    feats = ex.embed(images)  # 5 images in batches of 2
    assert feats.dtype == np.float32
    assert feats.shape == (len(images), FLAT_DIMS[family])
    ref = reference_features(ex, family, "flatten", images)
    assert_close(feats, ref)
    assert ex.info["feature_dim"] == FLAT_DIMS[family]
    assert ex.info["name"] == family and ex.info["pooling"] == "flatten"
    assert ex.info["image_size"] == RESIZE
    assert ex.info["device"] == "cpu" and ex.info["dtype"] == "float32"
    assert ex.info["revision"] is None  # local folder, no revision given
    assert len(ex.info["checkpoint_sha256"]) == 64


@pytest.mark.parametrize(
    "family,pooling,dim",
    [
        ("sam", "mean", 16),
        ("dinov2", "mean", 32),
        ("dinov2", "cls", 32),
        ("clipseg", "mean", 3 * 16),
        ("clipseg", "cls", 3 * 16),
        ("convnextv2", "mean", 32),
        ("swinv2", "mean", 32),
    ],
)
def test_pooling(family, pooling, dim, tiny_dirs, images):
    cfg = ModelConfig(
        name=family, checkpoint=str(tiny_dirs[family]), pooling=pooling, image_size=RESIZE
    )
    ex = get_extractor(cfg)
    feats = ex.embed(images[:3])
    assert feats.shape == (3, dim)
    assert_close(feats, reference_features(ex, family, pooling, images[:3]))
    assert f"pool={pooling}" in ex.cache_key


@pytest.mark.parametrize(
    "family,pooling",
    [
        ("efficientnet", "cls"),
        ("efficientnet", "mean"),
        ("clip", "mean"),
        ("clip", "cls"),
        ("sam", "cls"),
        ("convnextv2", "cls"),
        ("swinv2", "cls"),
    ],
)
def test_pooling_refused_where_it_does_not_apply(family, pooling, tiny_dirs):
    cfg = ModelConfig(name=family, checkpoint=str(tiny_dirs[family]), pooling=pooling)
    with pytest.raises(JobError, match="model.pooling"):
        get_extractor(cfg)


def test_prepare_then_embed_prepared_equals_embed(extractors, images):
    ex = extractors["dinov2"]
    prepared = [ex.prepare(im) for im in images]
    assert prepared[0].shape == (3, SIZE, SIZE) and prepared[0].dtype == np.float32
    np.testing.assert_array_equal(ex.embed_prepared(prepared), ex.embed(images))


def test_clipseg_prompt_changes_features_and_key(tiny_dirs, extractors, images):
    base = extractors["clipseg"]
    assert base.prompt == "line structures" and "prompt=line structures" in base.cache_key
    other = get_extractor(
        ModelConfig(
            name="clipseg",
            checkpoint=str(tiny_dirs["clipseg"]),
            image_size=RESIZE,
            prompt="cracks",
        )
    )
    assert other.cache_key != base.cache_key
    a, b = base.embed(images[:2]), other.embed(images[:2])
    assert not np.allclose(a, b)
    assert_close(b, reference_features(other, "clipseg", "flatten", images[:2]))


def test_cache_key_covers_size_pooling_and_weights(tmp_path, tiny_dirs, extractors):
    base = extractors["dinov2"]
    other_size = get_extractor(
        ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=96)
    )
    assert other_size.cache_key != base.cache_key
    # Same weights in another folder: same key. Different weights: different key.
    copy = save_tiny("dinov2", tmp_path / "copy")
    same = get_extractor(ModelConfig(name="dinov2", checkpoint=str(copy), image_size=RESIZE))
    assert same.cache_key == base.cache_key
    cfg = json.loads((copy / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    changed = get_extractor(ModelConfig(name="dinov2", checkpoint=str(copy), image_size=RESIZE))
    assert changed.cache_key != base.cache_key


def test_default_image_size_and_feature_dim_property(tiny_dirs):
    ex = get_extractor(ModelConfig(name="convnextv2", checkpoint=str(tiny_dirs["convnextv2"])))
    assert ex.image_size == 448 and ex.info["image_size"] == 448
    assert ex.info["feature_dim"] is None
    assert ex.feature_dim == FLAT_DIMS["convnextv2"]  # one forward pass on a blank image
    assert ex.info["feature_dim"] == FLAT_DIMS["convnextv2"]


def test_bfloat16_on_cpu_returns_float32(tiny_dirs, images, extractors):
    ex = get_extractor(
        ModelConfig(
            name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), image_size=RESIZE, dtype="bfloat16"
        )
    )
    assert ex.info["dtype"] == "bfloat16" and "dtype=bfloat16" in ex.cache_key
    assert ex.cache_key != extractors["dinov2"].cache_key
    feats = ex.embed(images[:2])
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    ref = extractors["dinov2"].embed(images[:2])
    assert np.abs(feats - ref).max() < 0.1 * np.abs(ref).max()


def test_missing_local_checkpoint_names_the_field(tmp_path):
    with pytest.raises(JobError, match="model.checkpoint") as err:
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tmp_path / "nope")))
    assert "not found" in str(err.value)


def test_unloadable_checkpoint_suggests_offline_or_local(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="model.checkpoint") as err:
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tmp_path / "empty")))
    assert "HF_HUB_OFFLINE" in str(err.value) and "local folder" in str(err.value)


def test_missing_processor_is_a_job_error(tmp_path, tiny_dirs):
    folder = tmp_path / "noproc"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_dirs["dinov2"] / name).read_bytes())
    with pytest.raises(JobError, match="image processor"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(folder)))


def test_family_mismatch_is_a_job_error(tiny_dirs):
    with pytest.raises(JobError, match="is a 'clip' model"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["clip"])))


def test_remote_code_is_never_run(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
        )
    )
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    with pytest.raises(JobError, match="model.checkpoint"):
        get_extractor(ModelConfig(name="dinov2", checkpoint=str(folder)))
    assert not marker.exists()


def test_prompt_only_for_clipseg(tiny_dirs):
    with pytest.raises(JobError, match="model.prompt"):
        get_extractor(
            ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), prompt="cracks")
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_job_error(tiny_dirs):
    with pytest.raises(JobError, match="model.device"):
        get_extractor(
            ModelConfig(name="dinov2", checkpoint=str(tiny_dirs["dinov2"]), device="cuda")
        )


def test_paper_checkpoints_are_the_defaults():
    from worker.extractors.hf import FAMILIES as DEFAULTS

    assert {k: v.checkpoint for k, v in DEFAULTS.items()} == {
        "sam": "facebook/sam-vit-base",
        "clipseg": "CIDAS/clipseg-rd64-refined",
        "efficientnet": "google/efficientnet-b3",
        "clip": "openai/clip-vit-base-patch32",
        "dinov2": "facebook/dinov2-base",
        "convnextv2": "facebook/convnextv2-tiny-1k-224",
        "swinv2": "microsoft/swinv2-tiny-patch4-window8-256",
    }
