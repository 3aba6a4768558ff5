"""report.json schema, figures, report.pdf and JUnit XML on a hand-built report."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.pdf import pdf_text
from tests.helpers.sample_report import HOSTILE_ID, make_extras, make_pictures, make_report
from worker.report import figures as figmod
from worker.report.fmt import fmt_num
from worker.report.inputs import FigureData
from worker.report.junit import gate_case_name, write_junit
from worker.report.model import (
    SCHEMA_VERSION,
    clean_numbers,
    load_schema,
    to_json_bytes,
    validate_report,
    write_report_json,
)
from worker.report.pdf import render_html, render_pdf
from worker.results import Ranking, Report


@pytest.fixture(scope="module")
def report() -> dict:
    return make_report()


@pytest.fixture(scope="module")
def typed(report) -> Report:
    return Report.model_validate(report)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, report, typed):
    out = tmp_path_factory.mktemp("report")
    figs = figmod.make_figures(typed, make_extras(report), out / "figures")
    pictures = make_pictures(report, typed)
    pdf = render_pdf(typed, figs, out / "report.pdf", pictures)
    html = render_html(typed, figs, pictures)
    return {"out": out, "figures": figs, "pdf": pdf, "html": html, "pictures": pictures}


# --- report.json -----------------------------------------------------------------------------


def test_schema_is_draft_2020_12_and_report_validates(report):
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"schema_version", "passed", "secondaries", "gates", "skipped"} <= set(
        schema["required"]
    )
    validate_report(report)
    extra = copy.deepcopy(report)
    extra["something_new"] = {"x": 1}  # extra fields are allowed
    validate_report(extra)
    partial = copy.deepcopy(report)
    partial["secondaries"][0]["statistics"] = {"fid": 1.5}  # a declared block must be whole
    with pytest.raises(ValueError, match=r"\$\.secondaries\[0\]\.statistics"):
        validate_report(partial)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("passed",), "$: 'passed' is a required property"),
        (("secondaries", 1, "o_dist"), "$.secondaries[1]: 'o_dist' is a required property"),
        (("secondaries", 0, "selections", 2, "ids"), "$.secondaries[0].selections[2]"),
        (("secondaries", 2, "images", 3, "i_dist_scaled"), "$.secondaries[2].images[3]"),
        (("pca", "dims"), "$.pca: 'dims' is a required property"),
    ],
)
def test_schema_rejects_missing_required_field(report, path, expected):
    bad = copy.deepcopy(report)
    node = bad
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(ValueError) as err:
        validate_report(bad)
    assert expected in str(err.value)


def test_schema_rejects_wrong_types_and_gate_without_bound(report):
    bad = copy.deepcopy(report)
    bad["secondaries"][0]["count"] = "30"
    with pytest.raises(ValueError, match=r"\$\.secondaries\[0\]\.count"):
        validate_report(bad)
    bad = copy.deepcopy(report)
    del bad["gates"][0]["max"]
    with pytest.raises(ValueError, match=r"\$\.gates\[0\]"):
        validate_report(bad)


def test_nan_and_inf_are_refused(report, tmp_path):
    bad = copy.deepcopy(report)
    bad["secondaries"][1]["images"][7]["i_dist"] = float("nan")
    with pytest.raises(ValueError, match=r"\$\.secondaries\[1\]\.images\[7\]\.i_dist"):
        validate_report(bad)
    with pytest.raises(ValueError, match="use null"):
        to_json_bytes(bad)
    with pytest.raises(ValueError):
        write_report_json(bad, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
    bad = copy.deepcopy(report)
    bad["o_dist_scaled"]["S1 near"] = np.float64("inf")
    with pytest.raises(ValueError, match=r'\$\.o_dist_scaled\["S1 near"\]'):
        validate_report(bad)
    ok = copy.deepcopy(report)
    ok["secondaries"][1]["images"][7]["i_dist_scaled"] = None  # null is the missing value
    validate_report(ok)


def test_clean_numbers_converts_numpy():
    out = clean_numbers(
        {
            "a": np.float32(0.5),
            "b": np.int64(3),
            "c": np.arange(3),
            "d": np.bool_(True),
            "e": (1, np.float64(2.0)),
            "f": None,
            "g": np.str_("x"),
        }
    )
    assert out == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": True, "e": [1, 2.0], "f": None, "g": "x"}
    assert type(out["b"]) is int and type(out["a"]) is float and type(out["d"]) is bool
    with pytest.raises(ValueError, match=r"\$\.x\[1\]"):
        clean_numbers({"x": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match="not a JSON type"):
        clean_numbers({"x": object()})


def test_write_report_json_roundtrip_is_atomic(report, tmp_path):
    numpyish = copy.deepcopy(report)
    numpyish["primary"]["count"] = np.int64(40)
    numpyish["secondaries"][0]["o_dist"] = np.float64(report["secondaries"][0]["o_dist"])
    path = write_report_json(numpyish, tmp_path / "sub" / "report.json")
    data = path.read_bytes()
    assert json.loads(data) == report
    assert data == to_json_bytes(report)  # deterministic bytes, insertion order kept
    assert data.decode().startswith('{\n  "schema_version": "' + SCHEMA_VERSION)
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    # An invalid report leaves the previous file untouched.
    bad = copy.deepcopy(report)
    del bad["gates"]
    with pytest.raises(ValueError):
        write_report_json(bad, path)
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


# --- figures and PDF -------------------------------------------------------------------------


def test_figures_cover_every_dataset(rendered, report):
    figs = rendered["figures"]
    assert set(figs) == {"i_dist_violin", "i_dist_sorted", "scatter"}  # pictures are no figures
    for path in figs.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.parent == rendered["out"] / "figures"
    with Image.open(figs["i_dist_violin"]) as im:
        assert im.size[0] >= 1000  # about 170 dpi at text width


def test_figures_deterministic_and_without_extras(report, tmp_path):
    small = copy.deepcopy(report)
    small["secondaries"] = small["secondaries"][:1]
    small["secondaries"][0]["selections"] = small["secondaries"][0]["selections"][:1]
    small = Report.model_validate(small)
    a = figmod.make_figures(small, FigureData(), tmp_path / "a")
    b = figmod.make_figures(small, None, tmp_path / "b")
    assert set(a) == {"i_dist_violin", "i_dist_sorted"}  # no scatter without extras
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key


def test_html_is_autoescaped(rendered, report):
    html = rendered["html"]
    assert HOSTILE_ID not in html and "<b>&" not in html
    assert "&lt;b&gt;&amp;x.png" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;.png" in html
    assert "S2 far &amp; wide" in html and "S2 far & wide" not in html
    # Both models of the cross-model table and every secondary's block.
    assert html.count('<div class="secondary"') == 3
    assert ">clip</th>" in html and ">hog</th>" in html
    # Pictures are embedded JPEGs, closest and farthest of the two secondaries with images;
    # the embeddings-only secondary gets a note instead.
    ends = rendered["pictures"].ends
    assert set(ends) == {"S1 near", "S2 far & wide"}
    assert [label for label, _ in ends["S1 near"]] == ["closest", "farthest"]
    assert html.count('src="data:image/jpeg;base64,') == 16
    assert "No pictures: S3-emb" in html
    # Figures are referenced as file URIs of the generated PNGs.
    for path in rendered["figures"].values():
        assert path.resolve().as_uri() in html


def _pdftotext(pdf: Path) -> str:
    return pdf_text(pdf)


def test_pdf_opens_and_names_every_dataset(rendered, report):
    pdf = rendered["pdf"]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    assert sorted(p.name for p in pdf.parent.iterdir()) == ["figures", "report.pdf"]
    text = _pdftotext(pdf)
    for name in [report["primary"]["name"]] + [s["name"] for s in report["secondaries"]]:
        assert name in text
    assert "Page 1 of" in text
    pages = text.count("\f")
    assert f"Page {pages} of {pages}" in text
    assert HOSTILE_ID in text  # shown as text, not swallowed as markup
    assert "FAILED" in text and "ranking changes with" in text
    assert not re.search(r"\de-1[4-9]", text)  # no float noise such as -4.441e-16


def test_fmt_ratio_keeps_a_ratio_below_one_below_one():
    from worker.report.fmt import fmt_ratio

    assert fmt_ratio(0.95) == "0.95×"  # was rounded to '1.0x'
    assert fmt_ratio(0.999) == "0.999×" and fmt_ratio(12.34) == "12.3×"
    assert fmt_ratio(None) == "n/a"


def test_headers_wrap_at_underscores_never_mid_word(tmp_path):
    """A column title in a column narrower than it wraps after an underscore (hdr filter),
    never inside a word ('o_dist_mea / n' was the defect); the cells' names still fit."""
    from weasyprint import HTML

    from tests.helpers.pdf import pdf_text
    from worker.report.pdf import header_breaks, templates_dir

    title = "o_dist_mean_scaled_p90"
    assert str(header_breaks(title)) == "o_<wbr>dist_<wbr>mean_<wbr>scaled_<wbr>p90"
    html = (
        '<link rel="stylesheet" href="report.css"><table class="data">'
        '<colgroup><col style="width:14mm"><col></colgroup>'
        f"<thead><tr><th>{header_breaks(title)}</th><th>other</th></tr></thead>"
        "<tbody><tr><td>1</td><td>2</td></tr></tbody></table>"
    )
    pdf = tmp_path / "h.pdf"
    HTML(string=html, base_url=templates_dir().as_uri() + "/").write_pdf(pdf)
    tokens = pdf_text(pdf).split()
    pieces = [t for t in tokens if t not in ("other", "1", "2", "Page", "of")]
    assert len(pieces) > 1 and "".join(pieces) == title  # wrapped, nothing lost
    assert all(p.endswith("_") for p in pieces[:-1]), pieces  # each line ends at a '_'


def test_tables_fit_their_columns_and_the_page():
    """Issue 30: every table cell's text stays inside its cell, and nothing runs past the
    page's content area, for the sample report (hostile ids: markup, a 130-character path
    without spaces); the check itself finds a cell and a line that overflow."""
    from tests.helpers.pdf import overflowing_text

    assert _overflowing(Report.model_validate(make_report())) == []
    narrow = (
        "<table style='width:60px;table-layout:fixed'><tr>"
        "<td style='white-space:nowrap'>an_identifier_without_breaks</td><td>x</td></tr></table>"
        "<p style='white-space:nowrap'>" + "word " * 200 + "</p>"
    )
    found = {(o.where, o.text.split()[0]) for o in overflowing_text(narrow)}
    assert found == {("cell", "an_identifier_without_breaks"), ("page", "word")}


def test_fmt_num():
    assert fmt_num(None) == "n/a"
    assert fmt_num(12345) == "12,345"
    assert fmt_num(0.123456) == "0.1235"
    assert fmt_num(123456.7) == "123,457"
    assert fmt_num(1.5e-5) == "1.500e-05"
    assert fmt_num(float("nan")) == "n/a"
    assert fmt_num(math.pi, 3) == "3.14"
    assert fmt_num(-4.440892098500626e-16) == "0"  # float noise of a sum that is zero


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_one_case_per_gate(report, typed, tmp_path):
    path = write_junit(typed, tmp_path / "ci" / "gates.xml")
    root = ET.parse(path).getroot()
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [gate_case_name(g) for g in typed.gates]
    assert cases[0].get("name") == "o_dist_scaled[S1 near] <= 0.5"
    assert cases[3].get("name") == "mmd_p_value[S1 near @ clip] >= 0.05"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == [
        gate_case_name(g) for g in typed.gates if not g.passed
    ]
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    value_failure = failed[0].find("failure")
    value = report["gates"][1]["value"]
    assert repr(value) in value_failure.get("message") and "max 0.3" in value_failure.get("message")
    assert "not computed" in failed[1].find("failure").get("message")
    assert sorted(p.name for p in path.parent.iterdir()) == ["gates.xml"]


def test_junit_all_pass_and_odd_characters(tmp_path):
    rep = make_report()
    rep["passed"] = True
    rep["gates"] = [
        {
            "metric": "o_dist",
            "dataset": "a<&>\x01b",
            "model": None,
            "value": 1.0,
            "min": 0.5,
            "max": 2,
            "passed": True,
        }
    ]
    rep = Report.model_validate(rep)
    root = ET.parse(write_junit(rep, tmp_path / "j.xml")).getroot()
    (case,) = root.iter("testcase")
    assert case.get("name") == "o_dist[a<&>\ufffdb] in [0.5, 2]"
    assert case.find("failure") is None and root.get("failures") == "0"


def test_pdf_fetcher_reads_only_report_resources(tmp_path):
    from worker.report.pdf import _allowed

    roots = [tmp_path / "figures"]
    assert _allowed((tmp_path / "figures" / "a b.png").as_uri(), roots)
    assert _allowed("data:image/png;base64,AAAA", roots)
    assert not _allowed((tmp_path / "other.png").as_uri(), roots)
    assert not _allowed((tmp_path / "figures" / ".." / "x.png").as_uri(), roots)
    assert not _allowed("http://example.com/x.png", roots)


# --- the schema is generated from the typed models ---------------------------------------


def test_shipped_schema_equals_generated():
    from worker.report.model import generate_schema, schema_text

    shipped = Path(__file__).resolve().parents[1] / "worker" / "report" / "report.schema.json"
    assert shipped.read_text(encoding="utf-8") == schema_text(), (
        "worker/report/report.schema.json is stale: regenerate it with "
        "`python -m worker schema > worker/report/report.schema.json`"
    )
    assert load_schema() == generate_schema()


def _objects(node, path="$"):
    """Every object schema (with its JSON path in the schema) under `node`."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}[{i}]")


def test_every_object_declares_properties_with_descriptions():
    schema = load_schema()
    seen = 0
    for path, obj in _objects(schema):
        if "additionalProperties" in obj and "properties" not in obj:
            continue  # a name -> value mapping: its values are declared instead
        assert obj.get("properties"), f"{path}: object without declared properties"
        for name, prop in obj["properties"].items():
            ref = prop.get("$ref", "").rsplit("/", 1)[-1]  # a block: described by its class
            described = prop.get("description") or schema["$defs"].get(ref, {}).get("description")
            assert described, f"{path}.{name}: no description"
            seen += 1
    assert seen > 150
    defs = schema["$defs"]
    for block in ("Statistics", "Duplicates", "Adaptation", "ModelAgreement", "Perturbation"):
        assert block in defs, block
    props = schema["properties"]
    assert {"model_agreement", "robustness", "adaptation"} <= set(props)
    assert "robustness" in defs["SecondaryResult"]["properties"]


def test_typed_report_dumps_the_validated_json(report, typed, tmp_path):
    """The typed path (what the pipeline writes) gives the same JSON as the dict path, and the
    result validates against the shipped schema."""
    path = write_report_json(typed, tmp_path / "report.json")
    data = json.loads(path.read_bytes())
    validate_report(data)
    assert Report.model_validate(data) == typed

    def contained(expected, got, where="$"):  # the hand report's every value, unchanged
        if isinstance(expected, dict):
            for k, v in expected.items():
                contained(v, got[k], f"{where}.{k}")
        elif isinstance(expected, list):
            assert len(expected) == len(got), where
            for i, (a, b) in enumerate(zip(expected, got, strict=True)):
                contained(a, b, f"{where}[{i}]")
        else:
            assert expected == got, where

    contained(report, data)
    bad = copy.deepcopy(report)
    bad["secondaries"][0]["images"][0]["i_dist"] = float("nan")
    with pytest.raises(ValueError):
        Report.model_validate(bad)


def test_contract_page_equals_the_generated_tables():
    from worker.report.model import schema_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "report-json.md"
    text = page.read_text(encoding="utf-8")
    assert text.split("\n## Fields\n\n", 1)[1] == schema_markdown(), (
        "docs/report-json.md is stale: regenerate its Fields section with "
        "`python -m worker schema --markdown`"
    )


# --- page 1 and the page budget (issue 30) ---------------------------------------------------


def _decided(typed: Report) -> Report:
    """The sample report with energy, novelty and a verdict on every secondary."""
    from worker.results import EnergyResult, NoveltySummary, Verdict

    out = typed.model_copy(deep=True)
    for k, sec in enumerate(out.secondaries):
        label = ["same", "shifted", "far"][k % 3]
        sec.energy = EnergyResult(
            distance=0.1 * (k + 1), cross=1.0, within_secondary=0.9, within_primary=0.9,
            coefficient=0.05, p_value=0.001, p_value_adjusted=0.003, min_p_value=0.001,
            permutations=999, n_x=10, n_y=10, explanation=f"{sec.name} is shifted.",
        )  # fmt: skip
        sec.novelty = NoveltySummary(
            k=1, quantile=0.95, threshold=1.0, novel_count=3, novel_fraction=0.375,
            base_rate=0.05, p_value=0.01, p_value_adjusted=0.02,
        )  # fmt: skip
        sec.verdict = Verdict(label=label, reason=f"planted {label}")
    return out


def test_page_one_names_every_secondary_its_verdict_and_what_to_do(report, typed, tmp_path):
    from tests.helpers.pdf import pdf_text as text_of
    from worker.report.decide import decision

    decided = _decided(typed)
    d = decision(decided)
    assert [r.name for r in d.rows] == [s.name for s in decided.secondaries]  # no ranking block
    assert [r.verdict.text for r in d.rows] == [
        next(s for s in decided.secondaries if s.name == r.name).verdict.label for r in d.rows
    ]
    assert all(r.novel.text == "38%" and r.novel.sub == "base 5%" for r in d.rows)
    pdf = render_pdf(decided, {}, tmp_path / "report.pdf", make_pictures(report, decided))
    page1 = " ".join(text_of(pdf).split("\f")[0].split())
    for s in decided.secondaries:
        assert s.name in page1 and s.verdict.label in page1
    for words in ("What to do", "Label ", "Fine-tuning:", "Architecture:"):
        assert words in page1, words
    assert "38%" in page1 and "base 5%" in page1
    assert not re.search(r"\de-1\d", page1)
    # every column of a row: the ranking metric with its adjusted p, the paper's o_dist_mean,
    # the estimate's reason and the change as numbered footnotes, the gates' outcome
    assert page1.count("p = 0.003") == len(decided.secondaries)
    for s in decided.secondaries:
        assert fmt_num(s.o_dist_mean, 4) in page1, s.o_dist_mean
    assert "no labelled secondaries to estimate from" in page1 and "first run" in page1
    assert "✗ 1 of 2" in page1 and "✓ 1" in page1
    assert f"Label {d.todo[0].split()[1]} images" in page1


def test_page_one_cells_say_the_estimate_its_interval_and_the_change(typed):
    """The estimate with its 90% interval (or the reason there is none) and the relative
    change of o_dist_mean since the previous run, as decide.py writes them."""
    from worker.report.decide import decision
    from worker.results import Change, DatasetEstimate, History, SecondaryHistory

    rep = _decided(typed)
    a, b, c = rep.secondaries
    a.estimate = DatasetEstimate.model_construct(
        estimated_f=0.612, low=0.5, high=0.74, extrapolation=False, reason=None
    )
    b.estimate = DatasetEstimate.model_construct(
        estimated_f=None, low=None, high=None, extrapolation=True, reason="farther than all"
    )
    rep.history = History.model_construct(
        secondaries=[
            SecondaryHistory.model_construct(
                name=a.name, status="kept", vs_previous=Change.model_construct(o_dist_mean_rel=0.05)
            ),
            SecondaryHistory.model_construct(name=b.name, status="added", vs_previous=None),
        ]
    )
    rows = {r.name: r for r in decision(rep).rows}
    assert (rows[a.name].estimate.text, rows[a.name].estimate.sub) == ("0.61", "[0.50, 0.74]")
    assert (
        rows[b.name].estimate.text == "none" and rows[b.name].estimate.title == "farther than all"
    )
    assert rows[a.name].change.text == "+5.0%"
    assert rows[b.name].change.text == "added" and rows[c.name].change.text == "new"


def test_page_one_says_whether_each_selection_beat_random(report, typed, tmp_path):
    from tests.helpers.pdf import pdf_text as text_of

    decided = _decided(typed)  # S2 shifted and S3-emb far: each has images to label
    beats = {"S2 far & wide": True, "S3-emb": False}
    for sec in decided.secondaries:
        for sel in sec.selections:
            sel.beats_random = beats.get(sec.name)
    pdf = render_pdf(decided, {}, tmp_path / "report.pdf", make_pictures(report, decided))
    page1 = " ".join(text_of(pdf).split("\f")[0].split())
    # the largest selection of the first strategy, judged in words
    assert "7 of S2 far & wide (band, beats random)" in page1
    assert "7 of S3-emb (band, does not beat random)" in page1


def test_page_one_shows_both_ends_of_a_long_ranking(typed):
    from worker.report.decide import decision

    many = typed.model_copy(deep=True)
    base = many.secondaries[0]
    many.secondaries = [
        base.model_copy(update={"name": f"S{k:02d}", "o_dist_mean": float(k)}) for k in range(12)
    ]
    order = [f"S{k:02d}" for k in range(12)]
    many.ranking = Ranking(
        by="o_dist_mean", metric="o_dist_mean", top_k=3, order=order, closest=order[:3],
        farthest=order[::-1][:3], detail="summary", sections=order[:3] + order[-3:],
    )  # fmt: skip
    d = decision(many)
    assert [r.name if r else None for r in d.shown] == order[:3] + [None] + order[-3:]
    assert d.hidden == 6
    assert many.ranking.highlighted == order[:3] + order[-3:]


def _overflowing(report: Report) -> list:
    """The text of `report`'s PDF layout (figures aside) that runs past its cell or page."""
    from tests.helpers.pdf import overflowing_text
    from worker.report.pdf import templates_dir

    return overflowing_text(render_html(report, None), templates_dir().resolve().as_uri() + "/")


def _pages(pdf: Path) -> int:
    """The page count, after checking that no page is less than a third full except at a
    section's end (tests.helpers.pdf.page_fill: measured from what the PDF draws; a section
    ends on the last page or where the next page starts with an h1/h2)."""
    from pypdf import PdfReader

    from tests.helpers.pdf import underfull_pages

    under = underfull_pages(pdf)
    assert not under, f"{pdf.name}: pages less than a third full mid-section: {under}"
    return len(PdfReader(str(pdf)).pages)


def test_page_fill_measures_what_is_drawn(tmp_path):
    """page_fill on a hand-made PDF: a half-full page that a section (h2) follows, a nearly
    empty one that an h3 follows (mid-section), and the last page."""
    from weasyprint import HTML

    from tests.helpers.pdf import page_fill, underfull_pages
    from worker.report.pdf import templates_dir

    html = (
        '<link rel="stylesheet" href="report.css"><h1>One</h1>'
        '<div style="height:120mm;background:#eee"></div>'
        '<h2 style="break-before:page">Two</h2><p>a line</p>'
        '<h3 style="break-before:page">Three, inside Two</h3>'
        '<div style="height:200mm;background:#eee"></div><p>last line</p>'
    )
    pdf = tmp_path / "fill.pdf"
    HTML(string=html, base_url=templates_dir().as_uri() + "/").write_pdf(pdf)
    pages = page_fill(pdf)
    area = 297 - 17 - 19  # mm of the A4 content area
    assert len(pages) == 3
    assert pages[0].fill == pytest.approx((120 + 12) / area, abs=0.03)  # heading + block
    assert pages[0].section_end and pages[0].next_starts == "Two"
    assert pages[1].fill < 0.1 and not pages[1].section_end  # the h3 is no section start
    assert pages[2].fill > 0.75 and pages[2].section_end and pages[2].next_starts is None
    assert [p.number for p in underfull_pages(pdf)] == [2]


@pytest.mark.slow
def test_matrix_job_fits_12_pages_and_decides_on_page_1(tmp_path):
    from tests.helpers.pdf import pdf_text as text_of
    from tests.helpers.report_jobs import matrix_job
    from worker.job import load_job
    from worker.pipeline import run

    result = run(load_job(matrix_job(tmp_path)), out_dir=str(tmp_path / "out"))
    run_dir = Path(result.run_dir)
    pdf = run_dir / "report.pdf"
    pages = _pages(pdf)
    print(f"10-set matrix job: {pages} pages")
    assert pages <= 12
    text = text_of(pdf)
    page1 = " ".join(text.split("\f")[0].split())
    rep = result.report
    assert not set(rep.ranking.closest) & set(rep.ranking.farthest)  # no set at both ends
    for s in rep.secondaries:
        assert s.name in page1 and s.verdict.label in page1, s.name
    assert "What to do" in page1 and "Fine-tuning:" in page1
    assert not re.search(r"\de-1[4-9]", text)  # no float noise (tiny p-values may print as 1e-13)
    assert (run_dir / "report.html").stat().st_size > 100_000
    assert _overflowing(rep) == []  # tables fit their columns and the page


@pytest.mark.slow
def test_demo_fits_14_pages(tmp_path):
    from tests.helpers.pdf import pdf_text as text_of
    from worker.demo import write_demo
    from worker.job import load_job
    from worker.pipeline import run

    result = run(load_job(write_demo(tmp_path / "demo")), out_dir=str(tmp_path / "out"))
    pdf = Path(result.run_dir) / "report.pdf"
    pages = _pages(pdf)
    print(f"demo: {pages} pages")
    assert pages <= 14
    # the text defects, on the demo's own PDF
    text = text_of(pdf)
    assert not re.search(r"\de-1[4-9]", text)  # float noise
    assert not re.search(r"[a-z)]\.[A-Z][a-z]", text)  # 'splits).MMD': a sentence glued on
    assert text.count(result.run_id) >= 2  # page 1 and the Run table, never wrapped
    # page 1 decides, then the evidence, then the paper's tables as an appendix (h1/h2 order)
    from pypdf import PdfReader

    from tests.helpers.pdf import headings

    tops = [title for level, _, _, title in headings(PdfReader(str(pdf))) if level <= 2]
    parts = ("Is the new data far", "What to do", "Evidence", "The secondaries", "Adaptation",
             "Appendix")  # fmt: skip
    at = [next(i for i, t in enumerate(tops) if t.startswith(p)) for p in parts]
    assert at == sorted(at), tops
    yard = text[text.index("How far is far: yardsticks") :]
    yard = yard[: yard.index("Duplicates and leakage")]
    for s in result.report.secondaries:  # one row per secondary, its name said once
        assert yard.count(s.name) == 1, s.name
    assert _overflowing(result.report) == []  # tables fit their columns and the page


@pytest.mark.parametrize("missing", [None, "i_dist_sorted"])
def test_render_outputs_lays_out_the_planned_figures_or_again_without_one(
    report, typed, tmp_path, monkeypatch, missing
):
    """The PDF's layout starts from the planned figure files while they are drawn; a planned
    figure whose data turns out missing (its draw returns None) is left out of the PDF, which
    is laid out again without it."""
    from tests.helpers.pdf import pdf_text
    from worker.report import distance_figures
    from worker.report.inputs import RenderInputs
    from worker.report.render import render_outputs

    if missing:
        monkeypatch.setattr(distance_figures, "plot_sorted_overview", lambda *a: None)
    inputs = RenderInputs(scatter=make_extras(report).scatter)
    figures = render_outputs(typed, inputs, tmp_path)
    expected = {"i_dist_violin", "i_dist_sorted", "scatter"} - {missing}
    assert set(figures) == expected and all(p.exists() for p in figures.values())
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{k}.png" for k in expected
    )
    text = " ".join(pdf_text(tmp_path / "report.pdf").split())
    assert "I_dist of every image" in text  # the violin's caption
    assert ("sorted by I_dist, min-max scaled" in text) == (missing is None)
    assert json.loads((tmp_path / "report.json").read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("model", "says", "absent"),
    [
        ({"input_size": 1024, "preprocess": "fast", "resize_on": "device"},
         ["(the model sees 1024 px)", "preparation fast, resized on the GPU"], []),
        ({"input_size": 32, "preprocess": "fast", "resize_on": "cpu"},
         ["preparation fast, resized on the CPU"], ["the model sees"]),
        ({"input_size": 32, "preprocess": "exact", "resize_on": None},
         ["preparation exact"], ["resized on the"]),
    ],
)  # fmt: skip
def test_run_block_names_the_model_input_and_its_preparation(typed, model, says, absent):
    """report.json's model.input_size (where it differs from image_size), preprocess and
    resize_on, in the PDF's run block."""
    report = typed.model_copy(deep=True)
    report.model = report.model.model_copy(update={"image_size": 32, **model})
    row = next(r for r in render_html(report, None).split("<tr>") if "<th>model</th>" in r)
    for text in says:
        assert text in row, row
    for text in absent:
        assert text not in row, row
