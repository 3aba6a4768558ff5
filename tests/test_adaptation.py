"""Adaptation stage: training, resume, evaluation, figures, report partial, evaluate CLI, SegFormer.

Synthetic crack-like data: thin lines on a textured background, masks = the lines, 64x64.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import linregress

from tests.helpers import reference as R
from tests.helpers.adaptation import (
    TEMPLATES,
    band_select,
    farthest,
    hog_i_dist,
    make_job,
    tiny_segformer,
    write_set,
)
from worker.adapt import evaluate_cli, ods
from worker.adapt.masks import MaskedSet, build_masked_sets
from worker.adapt.run import run_adaptation
from worker.adapt.segmenters import (
    TrainedEncoderExtractor,
    build_segmenter,
    encoder_features,
    load_segmenter,
    save_segmenter,
)
from worker.adapt.train import Sample, load_pair, predict_probs, train_segmenter
from worker.adapt.verdicts import MIN_IMAGES, SLOPE_TOL, trend, verdict
from worker.errors import JobError
from worker.job import parse_job


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run far faster on one thread, and much more steadily on a busy
    2-core machine (intra-op threads spin against other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- synthetic data


# ----------------------------------------------------------------------------- training


def load_training_set(samples: list[Sample], size: int):
    """(X (N, 3, S, S) float in [0, 1], Y (N, 1, S, S) 0/1, samples) through load_pair."""
    pairs = [load_pair(s, size) for s in samples]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(np.stack([p[1] for p in pairs])).float().unsqueeze(1)
    return x, y, samples


def _tiny_training_data(tmp_path: Path):
    folder = write_set(tmp_path, "T", [{"lines": 1}] * 4, seed=3)
    samples = [
        Sample("T", f.name, str(f), str(folder / "masks" / f.name))
        for f in sorted((folder / "images").glob("*.png"))
    ]
    return load_training_set(samples, 32)


def test_training_is_deterministic_and_resumes(tmp_path):
    x, y, kept = _tiny_training_data(tmp_path)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32) and len(kept) == 4
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}
    kw = {"batch_size": 2, "lr": 3e-3, "seed": 5}

    straight = build_segmenter("unet", width=4, depth=2, seed=1)
    h1 = train_segmenter(straight, x, y, epochs=3, **kw)
    again = build_segmenter("unet", width=4, depth=2, seed=1)
    train_segmenter(again, x, y, epochs=3, **kw)
    for a, b in zip(straight.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    ckpt = tmp_path / "ckpt"
    first = build_segmenter("unet", width=4, depth=2, seed=1)
    train_segmenter(first, x, y, epochs=2, checkpoint_dir=ckpt, fingerprint="fp", **kw)
    assert (ckpt / "last.pt").exists()
    resumed = build_segmenter("unet", width=4, depth=2, seed=1)  # a "restarted" process
    h2 = train_segmenter(resumed, x, y, epochs=3, checkpoint_dir=ckpt, fingerprint="fp", **kw)
    assert h2["resumed_from"] == 2
    assert h2["losses"] == pytest.approx(h1["losses"])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # a checkpoint past the epochs asked for is not used (it would be another model)
    fewer = build_segmenter("unet", width=4, depth=2, seed=1)
    h4 = train_segmenter(fewer, x, y, epochs=2, checkpoint_dir=ckpt, fingerprint="fp", **kw)
    assert h4["resumed_from"] == 0 and h4["losses"] == pytest.approx(h1["losses"][:2])

    # another fingerprint: the checkpoint is ignored and training starts over
    other = build_segmenter("unet", width=4, depth=2, seed=1)
    h3 = train_segmenter(other, x, y, epochs=1, checkpoint_dir=ckpt, fingerprint="zz", **kw)
    assert h3["resumed_from"] == 0


def test_mask_missing_or_wrong_size_names_the_file(tmp_path):
    folder = write_set(tmp_path, "T", [{"lines": 1}] * 2, seed=3)
    img = sorted((folder / "images").glob("*.png"))
    with pytest.raises(JobError, match=img[0].name):
        load_training_set([Sample("T", img[0].name, str(img[0]), None)], 32)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(bad)
    with pytest.raises(JobError, match=r"bad\.png.*12x10"):
        load_training_set([Sample("T", img[1].name, str(img[1]), str(bad))], 32)
    # negatives: no mask file, an empty mask of the image's size
    x, y, _ = load_training_set([Sample("N", "n", str(img[0]), None, empty_mask=True)], 32)
    assert y.sum() == 0


def test_decode_mask_modes():
    import io

    from worker.adapt.evaluate_cli import decode_mask

    want = np.array([[0, 1, 0], [1, 1, 0]], dtype=bool)

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    u8 = want.astype(np.uint8)
    cases = {
        "0/255": Image.fromarray(u8 * 255),
        "0/1": Image.fromarray(u8),
        "mode 1": Image.fromarray(want),
        "rgb": Image.fromarray(np.stack([u8 * 255, u8 * 0, u8 * 0], axis=-1)),
        "16-bit 0/1": Image.fromarray(u8.astype(np.uint16)),
        "16-bit 0/65535": Image.fromarray(u8.astype(np.uint16) * 65535),
        "palette": Image.fromarray(u8).convert("P"),
    }
    for name, img in cases.items():
        assert np.array_equal(decode_mask(png(img), name), want), name
    with pytest.raises(JobError, match="broken.png: cannot decode mask"):
        decode_mask(b"not an image", "broken.png")


def test_build_masked_sets_pairs_by_stem(tmp_path):
    write_set(tmp_path, "P", [{}] * 3, seed=1)
    write_set(tmp_path, "S", [{}] * 3, seed=2)
    (tmp_path / "S" / "masks" / "s_001.png").rename(tmp_path / "S" / "masks" / "s_001.bmp")
    (tmp_path / "S" / "masks" / "s_002.png").unlink()
    job = make_job(tmp_path, {}, [{"name": "S", "path": "S/images", "masks": "S/masks"}])
    sets = build_masked_sets(job)
    assert list(sets) == ["P", "S"]
    assert sets["S"].ids == ["s_000.png", "s_001.png", "s_002.png"]
    assert sets["S"].mask_uris[1].endswith("s_001.bmp") and sets["S"].mask_uris[2] is None

    # a missing mask is reported before any training
    t0 = time.perf_counter()
    with pytest.raises(JobError, match=r"1 images have no mask.*s_002\.png"):
        run_adaptation(job, sets, {"S": {q: [] for q in (1, 3, 7)}}, {}, tmp_path / "o")
    assert time.perf_counter() - t0 < 5

    nomask = make_job(tmp_path, {}, [{"name": "S", "path": "S/images"}])
    nomask.datasets.primary.masks = None
    with pytest.raises(JobError, match="datasets.primary.masks"):
        build_masked_sets(nomask)


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_tiny_unet(tmp_path):
    t0 = time.perf_counter()
    write_set(tmp_path, "P", [{"orientation": "h"}] * 8, seed=1)
    write_set(tmp_path, "S1", [{"orientation": "h"}] * 6 + [{"orientation": "v"}] * 6, seed=2)
    write_set(tmp_path, "S2", [{"background": 120.0, "crack": 30.0}] * 8, seed=3)
    write_set(tmp_path, "NEG", [{"lines": 0}] * 4, seed=4, masks=False)
    job = make_job(
        tmp_path,
        {
            "counts": [1, 3],
            "epochs": 2,
            "batch_size": 4,
            "lr": 3e-3,
            "features_from_trained": True,
            "negatives": {"path": "NEG/images", "counts": [2]},
        },
        [
            {"name": "S1", "path": "S1/images", "masks": "S1/masks"},
            {"name": "S2", "path": "S2/images", "masks": "S2/masks", "select": False},
        ],
        save_checkpoints=True,
    )
    sets = build_masked_sets(job)
    raw, scaled = {}, {}
    for name in ("S1", "S2"):
        raw[name], scaled[name] = hog_i_dist(tmp_path / "P", tmp_path / name)
    # the selection stage chooses in every secondary; S2 is blind (select: false), so its
    # choices neither train a model nor leave S2's evaluation
    selections = {n: {q: band_select(scaled[n], q, seed=0) for q in (1, 3)} for n in ("S1", "S2")}
    out = tmp_path / "staging"
    calls = []
    adaptation, extras = run_adaptation(
        job,
        sets,
        selections,
        scaled,
        out,
        progress=lambda *a: calls.append(a),
        i_dist=raw,
        unet_width=4,
    )
    typed, adaptation = adaptation, adaptation.model_dump(mode="json")
    json.dumps(adaptation, allow_nan=False)  # plain JSON, no NaN

    names = [m["name"] for m in adaptation["models"]]
    assert names == ["M", "M1", "M3", "M_B2"]
    by_name = {m["name"]: m for m in adaptation["models"]}
    p_ids = sorted(f.name for f in (tmp_path / "P" / "images").glob("*.png"))
    assert by_name["M"]["train_ids"] == p_ids and by_name["M"]["q"] == 0
    assert by_name["M3"]["train_ids"] == p_ids + [f"S1/{i}" for i in selections["S1"][3]]
    assert by_name["M_B2"]["q"] == 3 and by_name["M_B2"]["negatives"] == 2
    assert len(by_name["M_B2"]["train_ids"]) == len(p_ids) + 3 + 2
    assert all(t.startswith("negatives/") for t in by_name["M_B2"]["train_ids"][-2:])
    assert not any(i.startswith("S2/") for m in adaptation["models"] for i in m["train_ids"])

    results = adaptation["results"]
    assert {(r["model"], r["dataset"]) for r in results} == {
        (m, d) for m in names for d in ("S1", "S2")
    }
    selected = {i for ids in selections["S1"].values() for i in ids}
    keys = (
        "ods_f ods_threshold ois_f precision recall f_slope f_spearman f_spearman_p verdict"
    ).split()
    for r in results:
        for key in keys:
            assert key in r
        # F at the ODS threshold from the reported P and R (method.md §5.2)
        prec, rc = r["precision"], r["recall"]
        f_ref = 2 * prec * rc / (prec + rc) if prec + rc else 0.0
        assert r["ods_f"] == pytest.approx(f_ref, rel=1e-12)
        # the trend is the least-squares slope of per-image F on scaled I_dist (§5.4)
        f = np.array([q["f"] for q in r["per_image"]])
        x = np.array([scaled[r["dataset"]][q["id"]] for q in r["per_image"]])
        assert r["f_slope"] == pytest.approx(linregress(x, f).slope, rel=1e-9, abs=1e-12)
        ids = [p["id"] for p in r["per_image"]]
        expected = 12 - len(selected) if r["dataset"] == "S1" else 8
        assert len(ids) == r["count"] == expected
        assert not set(ids) & selected
        assert isinstance(r["verdict"], str) and r["verdict"]
    # every model on the same images
    for d in ("S1", "S2"):
        id_lists = {tuple(p["id"] for p in r["per_image"]) for r in results if r["dataset"] == d}
        assert len(id_lists) == 1

    # ODS of one result equals an independent re-evaluation of the saved model
    model = load_segmenter(out / "checkpoints" / "M.pt")
    s2 = sets["S2"]
    imgs = [np.asarray(Image.open(u).convert("RGB")) for u in s2.image_uris]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    probs = predict_probs(model, x)
    probs8 = [(p[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy() for p in probs]
    masks = [np.asarray(Image.open(u)) for u in s2.mask_uris]
    ref = ods.evaluate(probs8, masks, s2.ids)
    got = next(r for r in results if r["model"] == "M" and r["dataset"] == "S2")
    assert got["ods_f"] == pytest.approx(ref["ods_f"])
    assert got["ods_threshold"] == pytest.approx(ref["ods_threshold"])

    # splits: halves and thirds with counts summing to the evaluated images
    for d, n in (("S1", 12 - len(selected)), ("S2", 8)):
        for m in names:
            sp = adaptation["splits"][d][m]
            assert [p["count"] for p in sp["halves"]] == [
                len(a) for a in np.array_split(range(n), 2)
            ]
            assert sum(p["count"] for p in sp["thirds"]) == n
            assert sp["halves"][0]["i_dist_mean"] <= sp["halves"][1]["i_dist_mean"]

    # checkpoints of every model
    for m in names:
        assert (out / "checkpoints" / f"{m}.pt").exists()
    # resume checkpoints under the cache folder
    resume = tmp_path / ".cache" / "embeddings" / "adaptation"
    assert len(list(resume.glob("*/last.pt"))) == len(names)
    assert any(c[0].startswith("train") for c in calls)
    assert any(c[0].startswith("evaluate") for c in calls)

    # features from the trained baseline
    ext = extras["trained_extractor"]
    assert isinstance(ext, TrainedEncoderExtractor)
    feats = ext.embed([Image.open(u) for u in s2.image_uris[:3]])
    assert feats.shape == (3, ext.info["feature_dim"]) and feats.dtype == np.float32
    assert ext.info["name"] == "trained" and "trained" in ext.cache_key

    # figures and the report partial
    from worker.report.adaptation_figures import make_adaptation_figures
    from worker.report.inputs import AdaptationFigureData

    data = AdaptationFigureData.from_extras(extras)
    figures = make_adaptation_figures(typed, data, tmp_path / "figures")
    for key in (
        "adaptation_f_vs_idist_S1",
        "adaptation_f_vs_idist_S2",
        "adaptation_f_bars",
        "adaptation_grid_S1",
        "adaptation_grid_S2",
    ):
        assert key in figures and Path(figures[key]).stat().st_size > 1000, key
    ex = extras["adaptation"]["examples"]["S2"]
    assert len(ex) == 4 and set(ex[0]["predictions"]) == set(names)
    assert scaled["S2"][ex[0]["id"]] == max(scaled["S2"].values())

    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined
    )
    html = env.get_template("adaptation.html.j2").render(
        report={"adaptation": adaptation}, figures=figures
    )
    for text in ("M_B2", "S1", "F(", "half 1", "third 3", "Verdict rule", "adaptation_grid"):
        assert text in html, text
    assert env.get_template("adaptation.html.j2").render(report={}, figures={}).strip() == ""
    assert time.perf_counter() - t0 < 60


def test_demo_dataset_run(tmp_path):
    """The embedded demo (P, S1, S2, S3 with empty masks) through training, evaluation,
    figures and the partial rendered the way worker.report.pdf renders (autoescape, trim)."""
    import jinja2

    from worker.demo import make_demo_data
    from worker.report.adaptation_figures import make_adaptation_figures

    make_demo_data(tmp_path / "data", per_set=6)
    names = ["S1", "S2", "S3"]
    job = parse_job(
        {
            "datasets": {
                "primary": {"name": "P", "path": "data/P/images", "masks": "data/P/masks"},
                "secondary": [
                    {"name": n, "path": f"data/{n}/images", "masks": f"data/{n}/masks"}
                    for n in names
                ],
            },
            "cache": {"enabled": False},
            "adaptation": {
                "enabled": True,
                "model": "unet",
                "counts": [1, 3],
                "epochs": 1,
                "image_size": 32,
                "batch_size": 4,
                "lr": 3e-3,
            },
        },
        tmp_path,
    )
    scaled = {n: hog_i_dist(tmp_path / "data" / "P", tmp_path / "data" / n)[1] for n in names}
    selections = {n: {q: farthest(scaled[n], q) for q in (1, 3)} for n in names}
    adaptation, extras = run_adaptation(
        job, build_masked_sets(job), selections, scaled, tmp_path / "o", unet_width=4
    )
    typed, adaptation = adaptation, adaptation.model_dump(mode="json")
    assert [m["name"] for m in adaptation["models"]] == ["M", "M1", "M3"]
    assert len(adaptation["models"][2]["train_ids"]) == 6 + 3 * 3
    by = {(r["model"], r["dataset"]): r for r in adaptation["results"]}
    assert len(by) == 9 and all(r["count"] == 3 for r in by.values())
    assert by[("M", "S1")]["mask_pixels"] > 0 and by[("M", "S3")]["mask_pixels"] == 0
    assert by[("M", "S3")]["verdict"].startswith("not applicable")
    assert extras["trained_extractor"] is None  # features_from_trained is off
    from worker.report.inputs import AdaptationFigureData

    data = AdaptationFigureData.from_extras(extras)
    figures = make_adaptation_figures(typed, data, tmp_path / "fig")
    assert len(figures) == 1 + 2 * len(names)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    uris = {k: Path(v).resolve().as_uri() for k, v in figures.items()}
    html = env.get_template("adaptation.html.j2").render(
        report={"adaptation": adaptation}, figures=uris
    )
    assert html.count("<img ") == len(figures) and "not applicable" in html


def test_missing_selection_is_a_job_error(tmp_path):
    write_set(tmp_path, "P", [{}] * 2, seed=1)
    write_set(tmp_path, "S", [{}] * 3, seed=2)
    job = make_job(
        tmp_path,
        {"counts": [1], "epochs": 1},
        [{"name": "S", "path": "S/images", "masks": "S/masks"}],
    )
    with pytest.raises(JobError, match="selection.counts"):
        run_adaptation(job, build_masked_sets(job), {"S": {}}, {"S": {}}, tmp_path / "o")


# ----------------------------------------------------------------------------- the claim


def test_m7_beats_m_on_far_half(tmp_path):
    """P: dark horizontal cracks on a light background. S: half like P, half bright vertical
    cracks on a dark background (far by construction). The baseline never saw the far kind;
    M7 sees the 7 farthest S images, so it must do better on the far half of the rest."""
    write_set(tmp_path, "P", [{"orientation": "h"}] * 6, seed=11)
    far_spec = {"orientation": "v", "background": 60.0, "crack": 210.0, "texture": 12.0}
    write_set(tmp_path, "S", [{"orientation": "h"}] * 6 + [far_spec] * 10, seed=12)
    job = make_job(
        tmp_path,
        {"counts": [7], "epochs": 12, "batch_size": 4, "lr": 1e-2, "selection": "farthest"},
        [{"name": "S", "path": "S/images", "masks": "S/masks"}],
        cache={"enabled": False},
    )
    raw, scaled = hog_i_dist(tmp_path / "P", tmp_path / "S")
    far_ids = {f"s_{k:03d}.png" for k in range(6, 16)}
    assert set(farthest(scaled, 10)) == far_ids  # the far kind is far by I_dist too
    chosen = farthest(scaled, 7)
    adaptation, _ = run_adaptation(
        job,
        build_masked_sets(job),
        {"S": {7: chosen}},
        {"S": scaled},
        tmp_path / "o",
        i_dist={"S": raw},
        unet_width=8,
    )
    adaptation = adaptation.model_dump(mode="json")
    res = {r["model"]: r for r in adaptation["results"]}
    halves = {m: adaptation["splits"]["S"][m]["halves"] for m in ("M", "M7")}
    far_m, far_m7 = halves["M"][1]["mean"], halves["M7"][1]["mean"]
    assert far_m7 > far_m + 0.3, (far_m, far_m7)
    assert res["M7"]["ods_f"] > res["M"]["ods_f"]
    # the baseline degrades with distance, as the paper's figures show
    assert res["M"]["f_slope"] < 0


# ----------------------------------------------------------------------------- verdict


def test_verdict_rule():
    assert verdict(-0.5, -0.8, 0.001, 20).startswith("fine-tuning recommended")
    assert verdict(-0.5, -0.2, 0.4, 20).startswith("inconclusive")
    assert verdict(0.01, 0.1, 0.6, 20) == "no fine-tuning needed: F is flat against I_dist"
    assert verdict(SLOPE_TOL / 2, 0.9, 0.001, 20).startswith("no fine-tuning needed")
    assert verdict(0.4, 0.7, 0.01, 20).startswith("no fine-tuning needed")
    assert verdict(-0.5, -0.8, 0.001, MIN_IMAGES - 1).startswith("not enough")
    x = np.linspace(0, 1, 20)
    t = trend(1.0 - 0.8 * x, x)
    assert t["f_slope"] == pytest.approx(-0.8) and t["f_spearman"] == pytest.approx(-1.0)
    assert t["verdict"].startswith("fine-tuning recommended")
    flat = trend(np.full(20, 0.7), x)
    assert flat["f_slope"] == pytest.approx(0.0, abs=1e-12) and flat["f_spearman"] is None
    assert flat["verdict"] == "no fine-tuning needed: F is flat against I_dist"


def test_moving_average():
    from worker.report.adaptation_figures import f_vs_idist_series, moving_average

    assert moving_average(np.arange(5.0), 2).tolist() == [0.5, 1.5, 2.5, 3.5]
    assert moving_average(np.arange(3.0), 10).tolist() == [1.0]
    per_image = [{"id": str(i), "f": float(i % 2)} for i in range(20)]
    x, f = f_vs_idist_series(per_image, {str(i): i / 19 for i in range(20)})
    assert len(x) == 19 and np.allclose(f, 0.5)  # window 20 // 10 = 2


# ----------------------------------------------------------------------------- evaluate CLI


def _write_pngs(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        Image.fromarray(arr).save(folder / f"{stem}.png")


def test_evaluate_cli_hand_vector(tmp_path, capsys):
    HAND_PROBS, HAND_MASKS = R.ODS_PROBS_HAND, R.ODS_MASKS_HAND
    _write_pngs(tmp_path / "pred", {"a": HAND_PROBS[0], "b": HAND_PROBS[1]})
    _write_pngs(
        tmp_path / "masks",
        {"a": HAND_MASKS[0].astype(np.uint8) * 255, "b": HAND_MASKS[1].astype(np.uint8)},
    )
    code = evaluate_cli.main(
        ["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ods_f"] == pytest.approx(0.833333, abs=1e-6)
    assert out["ods_threshold"] == pytest.approx(0.12)
    assert out["precision"] == pytest.approx(5 / 7) and out["recall"] == 1.0
    assert out["ois_f"] == pytest.approx(10 / 11)
    assert [p["id"] for p in out["per_image"]] == ["a", "b"]
    assert [p["f"] for p in out["per_image"]] == pytest.approx([0.75, 1.0])

    code = evaluate_cli.main(["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks")])
    assert code == 0 and "ODS F: 0.8333 at threshold 0.12" in capsys.readouterr().out


def test_evaluate_cli_errors(tmp_path, capsys):
    _write_pngs(tmp_path / "pred", {"a": np.zeros((3, 3), np.uint8)})
    _write_pngs(
        tmp_path / "masks", {"a": np.zeros((3, 3), np.uint8), "b": np.zeros((3, 3), np.uint8)}
    )
    args = ["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--json"]
    assert evaluate_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "1 masks have no probability map" in err and ": b" in err

    _write_pngs(tmp_path / "pred", {"b": np.zeros((4, 3), np.uint8)})
    assert evaluate_cli.main(args) == 2
    assert "b.png: probability map is 3x4 but mask" in capsys.readouterr().err

    _write_pngs(
        tmp_path / "pred", {"b": np.zeros((3, 3), np.uint8), "c": np.zeros((3, 3), np.uint8)}
    )
    assert evaluate_cli.main(args) == 2
    assert "probability maps have no mask" in capsys.readouterr().err

    missing = ["--pred", str(tmp_path / "nope"), "--masks", str(tmp_path / "masks")]
    assert evaluate_cli.main(missing) == 2
    assert "folder not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- SegFormer


@pytest.mark.parametrize("num_labels", [1, 2, 10])
def test_segformer_tiny_round_trip(tmp_path, num_labels):
    ckpt = tiny_segformer(tmp_path / "segformer", num_labels)
    model = build_segmenter("segformer", str(ckpt), seed=0).eval()
    assert model.net.config.num_labels == (num_labels if num_labels in (1, 2) else 1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats = encoder_features(model, x)
    assert logits.shape == (2, 1, 64, 64)
    assert feats.shape == (2, 8 + 16) == (2, model.feature_dim)
    if num_labels == 2:  # sigmoid(l1 - l0) is softmax's class-1 probability
        with torch.no_grad():
            raw = model.net(pixel_values=model._normalise(x)).logits
        p1 = torch.softmax(raw, dim=1)[:, 1:2]
        up = torch.nn.functional.interpolate(p1, size=(64, 64), mode="bilinear")
        assert torch.allclose(torch.sigmoid(logits), up, atol=1e-5)

    y = (torch.rand(2, 1, 64, 64) > 0.9).float()
    train_segmenter(model, x, y, epochs=1, batch_size=2, lr=1e-3, seed=0)
    save_segmenter(model, tmp_path / "m.pt")
    back = load_segmenter(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(back(x), model.eval()(x), atol=1e-6)
    ext = TrainedEncoderExtractor(back, 64, label="M")
    assert ext.embed([Image.new("RGB", (80, 70))]).shape == (1, 24)


def test_segformer_adaptation_run(tmp_path):
    write_set(tmp_path, "P", [{}] * 3, seed=1)
    write_set(tmp_path, "S", [{}] * 4, seed=2)
    ckpt = tiny_segformer(tmp_path / "segformer", 10)
    job = make_job(
        tmp_path,
        {
            "model": "segformer",
            "checkpoint": str(ckpt),
            "counts": [1],
            "epochs": 1,
            "image_size": 32,
            "features_from_trained": True,
        },
        [{"name": "S", "path": "S/images", "masks": "S/masks"}],
        cache={"enabled": False},
        save_checkpoints=True,
    )
    scaled = {"S": {f"s_{k:03d}.png": k / 3 for k in range(4)}}
    adaptation, extras = run_adaptation(
        job, build_masked_sets(job), {"S": {1: ["s_003.png"]}}, scaled, tmp_path / "o"
    )
    adaptation = adaptation.model_dump(mode="json")
    assert [r["model"] for r in adaptation["results"]] == ["M", "M1"]
    assert all(r["count"] == 3 for r in adaptation["results"])
    back = load_segmenter(tmp_path / "o" / "checkpoints" / "M1.pt")
    assert back.kind == "segformer" and back.net.config.num_labels == 1
    feats = extras["trained_extractor"].embed([Image.new("RGB", (40, 40))] * 2)
    assert feats.shape == (2, 24)


def test_segformer_bad_checkpoint_is_a_job_error(tmp_path):
    with pytest.raises(JobError, match="adaptation.checkpoint"):
        build_segmenter("segformer", str(tmp_path / "missing"))
    with pytest.raises(JobError, match="adaptation.checkpoint"):
        build_segmenter("segformer", None)


def test_masked_set_unknown_id():
    ms = MaskedSet("S", ["a.png"], ["/x/a.png"], ["/m/a.png"])
    with pytest.raises(JobError, match="no image 'b.png'"):
        ms.samples(["b.png"])


# ----------------------------------------------------------------------------- whole pipeline


@pytest.mark.slow
def test_pipeline_with_adaptation_on_demo(tmp_path):
    """`run(job)` with adaptation on the demo data: report.json block, figures, PDF."""
    pipeline = pytest.importorskip("worker.pipeline", exc_type=ImportError)
    from worker.demo import make_demo_data

    make_demo_data(tmp_path / "data", per_set=10)
    sets = ["S1", "S2", "S3"]
    job = parse_job(
        {
            "model": {"name": "hog", "image_size": 64},
            "pca": {"dims": 5, "sweep": [2, 5]},
            "datasets": {
                "primary": {"name": "P", "path": "data/P/images", "masks": "data/P/masks"},
                "secondary": [
                    {"name": n, "path": f"data/{n}/images", "masks": f"data/{n}/masks"}
                    for n in sets
                ],
            },
            "metrics": {"null_repeats": 2, "mmd_permutations": 10},
            "selection": {"strategy": "band", "counts": [1, 3]},
            "cache": {"dir": ".cache"},
            "output": {"dir": "out", "save_checkpoints": True},
            "adaptation": {
                "enabled": True,
                "model": "unet",
                "counts": [1, 3],
                "epochs": 2,
                "image_size": 32,
                "batch_size": 4,
                "lr": 3e-3,
            },
        },
        tmp_path,
    )
    result = pipeline.run(job)
    ad = result.report.model_dump(mode="json")["adaptation"]
    assert [m["name"] for m in ad["models"]] == ["M", "M1", "M3"]
    assert {r["dataset"] for r in ad["results"]} == set(sets)
    out = tmp_path / "out"
    assert (out / "report.pdf").stat().st_size > 0
    assert len(list((out / "figures").glob("adaptation_*.png"))) == 1 + 2 * len(sets)
    assert (out / "checkpoints" / "M3.pt").exists()
    saved = json.loads((out / "report.json").read_text())
    assert saved["adaptation"]["results"][0]["per_image"]
