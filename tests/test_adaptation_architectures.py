"""Several segmentation architectures in one job (method.md §5.5), the model-selection summary, the
gain-aware verdicts, the noise (FP) rate on sets without positives, and the mask check of
`validate`. Tiny random transformers models are saved with save_pretrained and loaded back with
from_pretrained; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers.adaptation import TEMPLATES, band_select, hog_i_dist, make_job, write_set
from worker.adapt import block, ods, verdicts
from worker.adapt import summary as summ
from worker.adapt.masks import build_masked_sets
from worker.adapt.run import run_adaptation
from worker.adapt.segmenters import (
    build_segmenter,
    encoder_features,
    load_segmenter,
    save_segmenter,
    stride_indices,
)
from worker.errors import JobError
from worker.job import AdaptationConfig, GateConfig, parse_job


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_efficientnet(folder: Path) -> Path:
    from transformers import EfficientNetConfig, EfficientNetModel

    torch.manual_seed(0)
    config = EfficientNetConfig(
        width_coefficient=0.1, depth_coefficient=0.1, image_size=64, hidden_dim=128
    )
    EfficientNetModel(config).save_pretrained(folder)
    return folder


def tiny_convnext(folder: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    ConvNextModel(
        ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    ).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- architectures


def test_stride_indices_pick_the_last_map_of_each_stride():
    shapes = [(32, 32), (32, 32), (16, 16), (8, 8), (4, 4), (4, 4), (2, 2), (2, 2)]
    assert stride_indices(shapes, 64) == [1, 2, 3, 5, 7]
    assert stride_indices([(17, 17), (9, 9), (5, 5), (3, 3), (2, 2)], 33) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="stride 32"):
        stride_indices(shapes[:-2], 64)


def test_unetplusplus_efficientnet_encoder(tmp_path):
    from transformers import EfficientNetModel

    folder = tiny_efficientnet(tmp_path / "eff")
    model = build_segmenter("unetplusplus", encoder=str(folder), seed=0).eval()
    reference = EfficientNetModel.from_pretrained(folder)
    for k, v in reference.state_dict().items():  # the encoder is the saved one, unchanged
        assert torch.equal(model.net.encoder.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.encoder_maps(x)
        logits = model(x)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]  # strides 2..32
    assert logits.shape == (2, 1, 64, 64)
    assert encoder_features(model, x).shape == (2, model.feature_dim)
    # nested decoder: X^{i,j} for i + j <= 4, j >= 1 -> 10 nodes
    assert sorted(model.net.nodes) == sorted(f"{i}_{j}" for j in range(1, 5) for i in range(5 - j))
    # same seed, same decoder; whole-model .pt round trip
    again = build_segmenter("unetplusplus", encoder=str(folder), seed=0).eval()
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    save_segmenter(model, tmp_path / "upp.pt")
    back = build_segmenter("unetplusplus", str(tmp_path / "upp.pt"))
    with torch.no_grad():
        assert torch.allclose(back(x), logits, atol=1e-6)
    with pytest.raises(JobError, match="holds a 'unetplusplus' model, not 'unet'"):
        build_segmenter("unet", str(tmp_path / "upp.pt"))
    with pytest.raises(JobError, match="adaptation.encoder: model 'unetplusplus' needs"):
        build_segmenter("unetplusplus")
    with pytest.raises(JobError, match=r"models\[1\].encoder: cannot load EfficientNet"):
        build_segmenter(
            "unetplusplus", encoder=str(tmp_path / "nope"), field="adaptation.models[1]"
        )


@pytest.mark.parametrize("num_labels", [2, 10])
def test_upernet_convnext(tmp_path, num_labels):
    from transformers import (
        ConvNextBackbone,
        ConvNextConfig,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    folder = tiny_convnext(tmp_path / "cnx")
    model = build_segmenter("upernet", encoder=str(folder), seed=0).eval()
    stages = ["stage1", "stage2", "stage3", "stage4"]
    reference = ConvNextBackbone.from_pretrained(folder, out_features=stages)
    for k, v in reference.state_dict().items():
        if not k.startswith("hidden_states_norms"):  # not in a ConvNextModel folder
            assert torch.equal(model.net.backbone.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1, 64, 64)
        assert [m.shape[-1] for m in model.encoder_maps(x)] == [16, 8, 4, 2]
    assert encoder_features(model, x).shape == (2, 8 + 16 + 32 + 64)
    assert not model.net.config.use_auxiliary_head

    # a whole UperNet checkpoint: 2 labels kept (logit l1 - l0), others get a 1-label head
    cfg = UperNetConfig(
        backbone_config=ConvNextConfig(
            hidden_sizes=[8, 16, 32, 64], depths=[1] * 4, out_features=stages
        ),
        hidden_size=16,
        num_labels=num_labels,
        use_auxiliary_head=False,
    )
    torch.manual_seed(1)
    UperNetForSemanticSegmentation(cfg).save_pretrained(tmp_path / "upernet")
    whole = build_segmenter("upernet", str(tmp_path / "upernet"), seed=0).eval()
    assert whole.net.config.num_labels == (2 if num_labels == 2 else 1)
    with torch.no_grad():
        out = whole(x)
        if num_labels == 2:
            raw = whole.net(pixel_values=whole._normalise(x)).logits
            assert torch.allclose(torch.sigmoid(out), torch.softmax(raw, 1)[:, 1:2], atol=1e-5)
    save_segmenter(whole, tmp_path / "u.pt")
    with torch.no_grad():
        assert torch.allclose(load_segmenter(tmp_path / "u.pt")(x), out, atol=1e-6)
    with pytest.raises(JobError, match="checkpoint: cannot load UperNet"):
        build_segmenter("upernet", str(tmp_path / "missing"))


def test_job_models_list_and_gate_architecture():
    assert [a.label for a in AdaptationConfig().architectures] == ["unet"]
    single = AdaptationConfig(model="segformer", checkpoint="x")
    assert [(a.name, a.checkpoint) for a in single.architectures] == [("segformer", "x")]
    cfg = AdaptationConfig.model_validate(
        {"models": ["unet", {"name": "unetplusplus", "encoder": "e"}, "unet"]}
    )
    assert [a.label for a in cfg.architectures] == ["unet", "unetplusplus", "unet-2"]
    assert AdaptationConfig.model_validate({"models": "upernet"}).architectures[0].name == "upernet"
    for bad, match in (
        ({"model": "unet", "models": ["unet"]}, "not both"),
        ({"models": ["resnet"]}, "unetplusplus"),
        ({"models": [{"name": "unet", "encoder": "e"}]}, "no pretrained encoder"),
        ({"models": [{"name": "upernet", "encoder": "e", "checkpoint": "c"}]}, "not both"),
        ({"models": [{"name": "unet", "label": "a"}, {"name": "unet", "label": "a"}]}, "unique"),
    ):
        with pytest.raises(ValueError, match=match):
            AdaptationConfig.model_validate(bad)
    gate = GateConfig(metric="ods_f", min=0.5, architecture="unetplusplus")
    assert gate.architecture == "unetplusplus"


# ----------------------------------------------------------------------------- noise


def test_false_positive_rate_hand_count():
    probs = [
        np.array([[200, 150, 100], [120, 50, 0], [0, 0, 0]], dtype=np.uint8),
        np.array([[60, 40, 30], [10, 0, 0], [0, 0, 0]], dtype=np.uint8),
    ]
    masks = [np.zeros((3, 3), bool), np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]], bool)]
    counts = np.stack([ods.threshold_counts(p, m) for p, m in zip(probs, masks, strict=True)])
    pixels = np.array([9, 9])
    # t = 0.5: positive where v / 255 > 0.5, i.e. v >= 128: 200 and 150 of image 1
    rate, per = ods.false_positive_rate(counts, pixels, 0.5)
    assert rate == pytest.approx(2 / 16) and per == pytest.approx([2 / 9, 0 / 7])
    # t = 0.12: v > 30.6: 200, 150, 100, 120, 50 of image 1; image 2's 60, 40 are in the mask
    rate, per = ods.false_positive_rate(counts, pixels, 0.12)
    assert rate == pytest.approx(5 / 16) and per == pytest.approx([5 / 9, 0.0])
    # t = 0.0: every non-zero negative pixel: image 1 five, image 2 two (30 and 10)
    assert ods.false_positive_rate(counts, pixels, 0.0)[1] == pytest.approx([5 / 9, 2 / 7])
    with pytest.raises(ValueError, match="not one of"):
        ods.false_positive_rate(counts, pixels, 0.125)
    assert ods.false_positive_rate(counts[:0], pixels[:0], 0.5) == (None, [])


# ----------------------------------------------------------------------------- verdicts


def test_baseline_verdict_weighs_the_gains():
    flat = "no fine-tuning needed: F is flat against I_dist"
    # the case: a flat curve, but M3 raised ODS F from 0.874 to 0.914
    v = verdicts.baseline_verdict(flat, 0.02, 0.874, {"M1": 0.870, "M3": 0.914, "M7": 0.90})
    assert v.startswith("fine-tuning recommended: M3 raised ODS F from 0.874 to 0.914 (+0.040)")
    v = verdicts.baseline_verdict(flat, 0.02, 0.874, {"M1": 0.876, "M3": 0.88})
    assert v.startswith("no fine-tuning needed") and "best M3: +0.006" in v
    falls = "fine-tuning recommended: F falls with distance from the training set"
    v = verdicts.baseline_verdict(falls, -0.4, 0.6, {"M1": 0.59, "M3": 0.6})
    assert v.startswith("fine-tuning recommended: F falls") and "did not raise" in v
    assert verdicts.baseline_verdict(falls, -0.4, 0.6, {}) == falls
    incon = "inconclusive: F tends to fall with distance, but the correlation is not significant"
    assert verdicts.baseline_verdict(incon, -0.2, 0.5, {"M1": 0.51}).startswith("inconclusive")
    assert verdicts.baseline_verdict("not enough images", None, 0.5, {"M1": 0.9}).startswith("not")


def test_adapted_verdict_says_whether_the_curve_flattened():
    assert verdicts.adapted_verdict(-0.5, -0.05, 0.4, 0.6, 20).startswith(
        "adaptation flattened the curve (slope -0.500 -> -0.050, ODS F 0.400 -> 0.600)"
    )
    assert verdicts.adapted_verdict(-0.5, -0.3, 0.4, 0.6, 20).startswith("adaptation reduced")
    assert verdicts.adapted_verdict(-0.5, -0.6, 0.4, 0.3, 20).startswith("adaptation did not")
    v = verdicts.adapted_verdict(0.0, 0.02, 0.8, 0.8, 20)
    assert v.startswith("the curve was already flat")
    assert "now falls" in verdicts.adapted_verdict(0.0, -0.3, 0.8, 0.7, 20)
    assert verdicts.adapted_verdict(-0.5, -0.05, 0.4, 0.6, 3).startswith("not enough")


# ----------------------------------------------------------------------------- summary


def _block(label, *, m, m7, slope, p, r, fp, seconds, params=1000):
    """A planted architecture: M and M7 on two sets with positives and one without."""

    def row(model, dataset, ods_f, **kw):
        base = {
            "model": model,
            "dataset": dataset,
            "architecture": label,
            "blind": False,
            "count": 10,
            "mask_pixels": 50,
            "ods_f": ods_f,
            "ods_threshold": 0.5,
            "ois_f": ods_f,
            "precision": p,
            "recall": r,
            "f_slope": slope,
            "f_spearman": None,
            "f_spearman_p": None,
            "verdict": "v",
            "training_seconds": seconds / 2,
            "per_image": [],
        }
        base.update(kw)
        return block.AdaptationScore.model_validate(base)

    results = []
    for model, f in (("M", m), ("M7", m7)):
        results += [row(model, "A", f), row(model, "B", f)]
        results.append(
            row(
                model,
                "NEG",
                None,
                mask_pixels=0,
                ods_threshold=None,
                ois_f=None,
                precision=None,
                recall=None,
                f_slope=None,
                fp_rate=fp,
                fp_threshold=0.5,
            )
        )
    models = [
        block.TrainedModel(name="M", q=0, negatives=0, train_ids=[], training_seconds=seconds / 2),
        block.TrainedModel(name="M7", q=7, negatives=0, train_ids=[], training_seconds=seconds / 2),
    ]
    return block.ArchitectureBlock(
        label=label,
        name="unet",
        checkpoint=None,
        encoder=None,
        parameters=params,
        models=models,
        results=results,
        splits={},
    )


def test_summary_rows_from_planted_results():
    # "nearfit" cannot fit far images (steep slope), precise but misses cracks, noisy;
    # "steady" is flat, recall-leaning, quiet, and gains most from 7 labels; "dead" predicts
    # nothing useful (the trivial-baseline flag is test_adaptation_choice's).
    blocks = [
        _block("nearfit", m=0.70, m7=0.75, slope=-0.6, p=0.9, r=0.55, fp=1e-2, seconds=10),
        _block("steady", m=0.65, m7=0.85, slope=-0.05, p=0.6, r=0.8, fp=1e-4, seconds=30),
        _block("dead", m=0.05, m7=0.05, slope=0.0, p=0.5, r=0.5, fp=5e-2, seconds=5),
    ]
    summary = summ.summarise(blocks)
    rows = {r.architecture: r for r in summary.architectures}
    assert rows["nearfit"].baseline_ods_unseen == pytest.approx(0.70)
    assert rows["steady"].gain == pytest.approx(0.20)
    assert rows["nearfit"].tendency == "precision" and rows["steady"].tendency == "recall"
    assert rows["dead"].tendency == "balanced"
    assert rows["steady"].noise_fp_rate == pytest.approx(1e-4)
    assert rows["steady"].training_seconds == pytest.approx(30)
    # without replicates no difference is beyond the noise but cost (dead is 6x cheaper)
    won = {s.criterion: s.architectures for s in summary.statements}
    assert won["cheapest to train"] == ["dead"]
    assert won["best on unseen data"] == ["nearfit", "steady", "dead"]
    # so the choice falls through the criteria to cost
    assert (summary.recommended.architecture, summary.recommended.decided_by) == ("dead", "cost")
    # no set without positives: noise is not measured
    for b in blocks:
        b.results = [r for r in b.results if r.dataset != "NEG"]
    rows = summ.summarise(blocks).architectures
    assert all(r.noise_fp_rate is None for r in rows)


# ----------------------------------------------------------------------------- end to end


def test_two_architectures_give_two_complete_blocks(tmp_path):
    write_set(tmp_path, "P", [{"orientation": "h"}] * 6, seed=1)
    write_set(tmp_path, "S1", [{"orientation": "h"}] * 4 + [{"orientation": "v"}] * 4, seed=2)
    write_set(tmp_path, "S2", [{"background": 120.0, "crack": 30.0}] * 6, seed=3)
    write_set(tmp_path, "S3", [{"lines": 0}] * 5, seed=5)  # masks without a positive pixel
    write_set(tmp_path, "NEG", [{"lines": 0}] * 2, seed=4, masks=False)
    eff = tiny_efficientnet(tmp_path / "eff")
    job = make_job(
        tmp_path,
        {
            "model": None,
            "models": ["unet", {"name": "unetplusplus", "encoder": str(eff), "label": "upp"}],
            "counts": [1, 2],
            "epochs": 1,
            "image_size": 32,
            "batch_size": 4,
            "lr": 3e-3,
            "negatives": {"path": "NEG/images", "counts": [2]},
        },
        [
            {"name": "S1", "path": "S1/images", "masks": "S1/masks"},
            {"name": "S2", "path": "S2/images", "masks": "S2/masks", "select": False},
            {"name": "S3", "path": "S3/images", "masks": "S3/masks", "select": False},
        ],
        cache={"enabled": False},
        save_checkpoints=True,
    )
    raw, scaled = {}, {}
    for name in ("S1", "S2", "S3"):
        raw[name], scaled[name] = hog_i_dist(tmp_path / "P", tmp_path / name)
    sel = {n: {q: band_select(scaled[n], q, seed=0) for q in (1, 2)} for n in ("S1", "S2", "S3")}
    ad, extras = run_adaptation(
        job, build_masked_sets(job), sel, scaled, tmp_path / "o", i_dist=raw, unet_width=4
    )
    data = ad.model_dump(mode="json")
    json.dumps(data, allow_nan=False)
    blocks = data["architectures"]
    assert [b["label"] for b in blocks] == ["unet", "upp"]
    assert [b["name"] for b in blocks] == ["unet", "unetplusplus"]
    names = ["M", "M1", "M2", "M_B2"]
    for b in blocks:
        assert [m["name"] for m in b["models"]] == names
        assert b["parameters"] > 0
        assert all(m["training_seconds"] > 0 for m in b["models"])
        assert {(r["model"], r["dataset"]) for r in b["results"]} == {
            (m, d) for m in names for d in ("S1", "S2", "S3")
        }
        assert set(b["splits"]) == {"S1", "S2"}  # sets with positive pixels
    # same training sets and the same scored images for both architectures
    assert [m["train_ids"] for m in blocks[0]["models"]] == [
        m["train_ids"] for m in blocks[1]["models"]
    ]
    ids = {
        (r["dataset"], tuple(p["id"] for p in r["per_image"])) for b in blocks for r in b["results"]
    }
    assert len(ids) == 3
    # the top-level block is the baseline architecture's (gates keep their meaning)
    assert data["results"] == blocks[0]["results"] and data["models"] == blocks[0]["models"]
    assert data["model"] == "unet" and data["baseline_architecture"] == "unet"
    assert block.adaptation_metric(data, "S1", "ods_f") == blocks[0]["results"][0]["ods_f"]
    upp_m_s2 = next(r for r in blocks[1]["results"] if r["model"] == "M" and r["dataset"] == "S2")
    assert block.adaptation_metric(ad, "S2", "f_slope", architecture="upp") == upp_m_s2["f_slope"]
    assert block.adaptation_metric(ad, "S2", "ods_f", architecture="nope") is None

    # blind sets are never listed with selections
    roles = {d["name"]: d for d in data["datasets"]}
    assert roles["S1"]["role"] == "selected"
    assert [s["q"] for s in roles["S1"]["selections"]] == [1, 2]
    assert roles["S1"]["selections"][1]["ids"] == sel["S1"][2]
    for blind in ("S2", "S3"):
        assert roles[blind]["role"] == "blind" and roles[blind]["selections"] is None
    assert not any(
        t.startswith(("S2/", "S3/")) for b in blocks for m in b["models"] for t in m["train_ids"]
    )

    # the set without positives: F null with the reason, the FP rate instead
    for b in blocks:
        for r in (r for r in b["results"] if r["dataset"] == "S3"):
            assert r["ods_f"] is None and r["f_null_reason"] and r["mask_pixels"] == 0
            assert 0.0 <= r["fp_rate"] <= 1.0 and r["verdict"].startswith("not applicable")
            assert all(p["f"] is None for p in r["per_image"])
    # FP rate of the baseline M on S3 against a recount from the saved model
    s3 = next(r for r in blocks[0]["results"] if r["model"] == "M" and r["dataset"] == "S3")
    m1_s1 = next(r for r in blocks[0]["results"] if r["model"] == "M" and r["dataset"] == "S1")
    model = load_segmenter(tmp_path / "o" / "checkpoints" / "M.pt")
    files = [tmp_path / "S3" / "images" / p["id"] for p in s3["per_image"]]
    from worker.adapt.train import to_uint8_prob
    from worker.images import resize_square

    small = [np.asarray(resize_square(Image.open(f).convert("RGB"), 32)) for f in files]
    x = torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        prob = torch.sigmoid(model(x))
    # scored as 8-bit maps at the mask's size (32 -> 64, bilinear)
    prob8 = np.stack([to_uint8_prob(p, (64, 64)) for p in prob]).astype(np.int64)
    assert s3["fp_threshold"] is not None and m1_s1["ods_threshold"] is not None
    k = int(round(s3["fp_threshold"] * 100))
    fp = (100 * prob8 > 255 * k).sum()
    assert s3["fp_rate"] == pytest.approx(fp / prob8.size, abs=1e-12)
    assert [p["fp_rate"] for p in s3["per_image"]] == pytest.approx(
        list((100 * prob8 > 255 * k).reshape(len(files), -1).mean(axis=1)), abs=1e-12
    )
    assert (tmp_path / "o" / "checkpoints" / "upp-M2.pt").exists()

    # summary: one row per architecture, a statement per criterion
    summary = data["summary"]
    assert [r["architecture"] for r in summary["architectures"]] == ["unet", "upp"]
    assert all(r["adapted_model"] == "M2" for r in summary["architectures"])
    criteria = [s["criterion"] for s in summary["statements"]]
    assert criteria[:4] == [
        "best on unseen data",
        "largest gain from labels",
        "most stable across unseen data",
        "cheapest to train",
    ]
    assert summary["choose_by"] == ["ods_unseen", "gain", "stability", "cost"]
    assert {(c["criterion"], c["a"], c["b"]) for c in summary["comparisons"]} == {
        (k, "unet", "upp") for k in ("ods_unseen", "gain", "stability", "cost")
    }
    assert summary["recommended"]["reason"]
    # trivial baselines of every scored set; none on the set without positives
    base = {b["dataset"]: b for b in data["baselines"]}
    assert set(base) == {"S1", "S2", "S3"} and base["S3"]["f_trivial"] is None
    p = base["S1"]["prevalence"]
    assert base["S1"]["f_all_positive"] == pytest.approx(2 * p / (1 + p))
    assert base["S1"]["f_all_negative"] == 0.0
    assert data["seeds"] == [0] and all(len(b["per_seed"]) == len(b["results"]) for b in blocks)

    # figures and the PDF section
    import jinja2

    from worker.report.adaptation_figures import make_adaptation_figures
    from worker.report.inputs import AdaptationFigureData

    data_fig = AdaptationFigureData.from_extras(extras)
    figures = make_adaptation_figures(ad, data_fig, tmp_path / "fig")
    for key in (
        "adaptation_arch_f_bars",
        "adaptation_choice",
        "adaptation_arch_f_vs_idist_S1",
        "adaptation_arch_f_vs_idist_S3",
        "adaptation_f_vs_idist_S3",
    ):
        assert key in figures and Path(figures[key]).stat().st_size > 1000, key
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("adaptation.html.j2").render(
        report={"adaptation": data}, figures=figures
    )
    for text in (
        "Model selection: 2 architectures",
        "most stable across unseen data",
        summary["recommended"]["reason"][:30],
        "Blind sets",
        "upp",
        "FP rate",
    ):
        assert text in html, text
    assert html.count("<img ") == len(figures)


# ----------------------------------------------------------------------------- validate


def _cli_job(tmp_path: Path, **adaptation) -> Path:
    write_set(tmp_path, "P", [{}] * 2, seed=1)
    write_set(tmp_path, "S", [{}] * 3, seed=2)
    job = {
        "model": {"name": "hog"},
        "datasets": {
            "primary": {"name": "P", "path": "P/images", "masks": "P/masks"},
            "secondary": [{"name": "S", "path": "S/images", "masks": "S/masks"}],
        },
        "adaptation": {"enabled": True, **adaptation},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_validate_checks_masks_before_any_embedding(tmp_path, capsys, monkeypatch):
    import worker.pipeline
    from worker.__main__ import main

    def no_embedding(*a, **k):
        raise AssertionError("validate must not embed")

    monkeypatch.setattr(worker.pipeline, "embed_all", no_embedding)
    job = _cli_job(tmp_path)
    assert main(["validate", str(job)]) == 0
    assert "masks of 2 datasets checked" in capsys.readouterr().out

    (tmp_path / "S" / "masks" / "s_001.png").unlink()  # a missing mask
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "datasets.S.masks: 1 of 3 images" in err and "s_001.png" in err

    (tmp_path / "S" / "masks" / "s_001.png").write_bytes(b"not a png")  # unreadable
    assert main(["validate", str(job)]) == 2
    assert "s_001.png: cannot decode mask" in capsys.readouterr().err

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "S" / "masks" / "s_001.png")
    assert main(["validate", str(job)]) == 2
    assert "is 12x10 but its image is 64x64" in capsys.readouterr().err

    for f in (tmp_path / "P" / "masks").iterdir():  # an empty masks folder of the primary
        f.unlink()
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "datasets.P.masks" in err and "holds no mask images" in err


def test_validate_checks_negatives_and_model_paths(tmp_path, capsys):
    from worker.__main__ import main

    job = _cli_job(tmp_path, negatives={"path": "S/images", "counts": [5]})
    assert main(["validate", str(job)]) == 2
    assert "adaptation.negatives.path" in capsys.readouterr().err
    data = yaml.safe_load(job.read_text())
    data["adaptation"] = {
        "enabled": True,
        "models": ["unet", {"name": "unetplusplus", "encoder": "no/such/folder"}],
    }
    job.write_text(yaml.safe_dump(data))
    assert main(["validate", str(job)]) == 2
    assert "adaptation.models[1].encoder" in capsys.readouterr().err
    data["adaptation"]["enabled"] = False  # adaptation off: nothing about masks is checked
    job.write_text(yaml.safe_dump(data))
    assert main(["validate", str(job)]) == 0


def test_check_adaptation_inputs_returns_the_masked_sets(tmp_path):
    from worker.adapt.masks import check_adaptation_inputs

    job = parse_job(yaml.safe_load(_cli_job(tmp_path).read_text()), tmp_path)
    sets = check_adaptation_inputs(job)
    assert list(sets) == ["P", "S"] and all(s.has_masks for s in sets.values())
