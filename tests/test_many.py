"""Many secondaries (issue 15): ranking, summary PDF, groups, the dataset matrix, a
100-secondary render. References: scipy cdist on the raw vectors (pca.dims null: distances in
the centred raw space, which equal the raw ones), numpy argsort, the PDF's own text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from tests.helpers.jobs import write_job
from tests.helpers.pdf import pdf_text, underfull_pages
from worker.job import load_job
from worker.pipeline import run

DIM = 8


def _many_job(folder: Path, count: int, *, rows: int = 12, groups=None, **extra) -> Path:
    """P (20 x 8) and `count` secondaries of `rows` x 8, S_k shifted by a seeded amount."""
    rng = np.random.default_rng(11)
    emb = folder / "emb"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / "P.npy", rng.normal(size=(20, DIM)))
    secondaries = []
    for k in range(count):
        name = f"S{k:03d}"
        shift = rng.uniform(0.0, 3.0) if groups is None else groups[k][1]
        np.save(emb / f"{name}.npy", rng.normal(size=(rows, DIM)) + shift)
        entry = {"name": name, "embeddings": f"emb/{name}.npy"}
        if groups is not None:
            entry["group"] = groups[k][0]
        secondaries.append(entry)
    job = {
        "seed": 5,
        "model": {"name": "precomputed"},
        "cache": {"enabled": False},
        "pca": {"dims": None, "sweep": [2, 4]},
        "datasets": {
            "primary": {"name": "P", "embeddings": "emb/P.npy"},
            "secondary": secondaries,
        },
        "metrics": {"statistics": False, "duplicates": False},
        "selection": {"strategy": ["band", "kcenter"], "counts": [1, 3]},
    }
    for key, value in extra.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    return write_job(folder, job)


def _vectors(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted((folder / "emb").glob("*.npy"))}


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many49")
    job = _many_job(folder, 49)
    result = run(load_job(job), out_dir=str(folder / "out"))
    report = json.loads((folder / "out" / "report.json").read_text())
    return folder, result, report


def _energy(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance (V-statistic, method.md §12.1) by scipy cdist."""
    return 2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean()


def test_ranking_matches_numpy(many):
    """The default ranking is by the energy distance (closest first); o_dist_mean stays the
    paper's number, and where the two orders differ the report says so."""
    folder, _, report = many
    vec = _vectors(folder)
    names = [f"S{k:03d}" for k in range(49)]
    expected = np.array([cdist(vec[n], vec["P"]).mean() for n in names])
    got = {s["name"]: s["o_dist_mean"] for s in report["secondaries"]}
    np.testing.assert_allclose([got[n] for n in names], expected, rtol=1e-10)
    energy = np.array([_energy(vec[n], vec["P"]) for n in names])
    got_e = {s["name"]: s["energy"]["distance"] for s in report["secondaries"]}
    np.testing.assert_allclose([got_e[n] for n in names], energy, rtol=1e-10)
    order = [names[i] for i in np.argsort(energy, kind="stable")]
    ranking = report["ranking"]
    assert ranking["metric"] == ranking["by"] == "energy_distance"
    paper = [names[i] for i in np.argsort(expected, kind="stable")]
    differ = {n for n in names if order.index(n) != paper.index(n)}
    assert {d["name"] for d in ranking["disagreements"]} == differ
    for d in ranking["disagreements"]:
        assert (d["rank"], d["o_dist_mean_rank"]) == (order.index(d["name"]) + 1,
                                                      paper.index(d["name"]) + 1)  # fmt: skip
        assert "by the paper's o_dist_mean" in d["explanation"]
    assert ranking["order"] == order
    assert ranking["top_k"] == 5
    assert ranking["closest"] == order[:5]
    assert ranking["farthest"] == order[::-1][:5]
    assert ranking["detail"] == "summary"  # 49 > 10 secondaries
    assert ranking["sections"] == order[:5] + order[-5:]
    assert "groups" not in report and "matrix" not in report


def test_summary_pdf_is_short_and_names_every_secondary(many):
    folder, _, report = many
    from pypdf import PdfReader

    pdf = folder / "out" / "report.pdf"
    assert len(PdfReader(str(pdf)).pages) <= 16  # the page budget of 49 secondaries
    # no page less than a third full except at a section's end
    assert not underfull_pages(pdf), underfull_pages(pdf)
    # page 1 shows both ends of the ranking and says where the rest are
    order = report["ranking"]["order"]
    page1 = " ".join(pdf_text(pdf).split("\f")[0].split())
    rows = re.findall(r"(?:^|\s)(\d+) (S\d{3}) \d+ ", page1)  # rank, name, images
    assert rows == [(str(k), order[k - 1]) for k in [1, 2, 3, 4, 5, 45, 46, 47, 48, 49]]
    assert "39 more secondaries (ranks 6–44)" in page1
    assert "in the appendix's first table and in report.html" in page1
    text = pdf_text(pdf)
    for s in report["secondaries"]:
        assert s["name"] in text
    # a section (and its figures) only for both ends of the ranking
    sections = re.findall(r"Secondary: (S\d{3})", text)
    assert sections == report["ranking"]["sections"]
    figures = {p.name for p in (folder / "out" / "figures").iterdir()}
    middle = report["ranking"]["order"][5:-5]
    assert not any(m in f for m in middle for f in figures)
    assert "ranking_strip.png" not in figures  # precomputed: no images to show


def test_summary_pdf_tables_fit_their_columns(many):
    """Issue 30: laid out as report.pdf is (without its figures, which are no table), no
    cell's text of the 49-secondary report runs past its cell or the page."""
    from tests.helpers.pdf import overflowing_text
    from worker.report.pdf import render_html, templates_dir
    from worker.results import Report

    _, _, report = many
    html = render_html(Report.model_validate(report), None)
    assert overflowing_text(html, templates_dir().resolve().as_uri() + "/") == []


def test_random_subset_coverage_is_reported(many):
    folder, _, report = many
    vec = _vectors(folder)
    sec = report["secondaries"][0]
    s = vec[sec["name"]]
    from worker import selection

    for sel in sec["selections"]:
        rand = selection.random_subset(len(s), sel["count"], 5)
        # dims null: coverage in the centred raw space equals the raw one
        expected = cdist(s, s[rand]).min(axis=1)
        assert sel["random_coverage"]["mean"] == pytest.approx(expected.mean(), rel=1e-10)
        assert sel["random_coverage"]["max"] == pytest.approx(expected.max(), rel=1e-10)
        assert sum(sel["random_coverage"]["histogram"]["counts"]) == len(s)
        assert sum(sel["coverage"]["histogram"]["counts"]) == len(s)


def test_groups_planted_closer(tmp_path):
    groups = [("near", 0.2)] * 4 + [("far", 2.5)] * 4 + [("near", 0.3)] * 2
    job = _many_job(
        tmp_path,
        10,
        groups=groups,
        gates=[{"metric": "group_separation", "dataset": "*", "min": 0.9}],
        metrics={"group_permutations": 500},
        report={"detail": "summary", "top_k": 1},  # two sections: a faster PDF
    )
    result = run(load_job(job), out_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    block = report["groups"]
    assert [g["name"] for g in block["groups"]] == ["near", "far"]
    near = [f"S{k:03d}" for k in (0, 1, 2, 3, 8, 9)]
    assert block["groups"][0]["members"] == near
    values = {s["name"]: s["o_dist_mean"] for s in report["secondaries"]}
    mean = np.mean([values[n] for n in near])
    assert block["groups"][0]["o_dist_mean"]["mean"] == pytest.approx(mean, rel=1e-12)
    (pair,) = block["pairs"]
    assert (pair["group_a"], pair["group_b"]) == ("near", "far")
    assert pair["auc"] == 1.0
    assert pair["p_value"] < 0.05  # exact two-sided p: 2 / C(10, 4) = 0.0095
    (gate,) = report["gates"]
    assert gate["metric"] == "group_separation" and gate["dataset"] == "near vs far"
    assert gate["value"] == 1.0 and gate["passed"] and result.exit_code == 0


def test_group_gate_needs_two_groups(tmp_path):
    from worker.errors import JobError

    job = _many_job(tmp_path, 3, gates=[{"metric": "group_separation", "min": 0.5}])
    with pytest.raises(JobError, match="group_separation.*group"):
        load_job(job)


def test_matrix_symmetric_with_diagonal_against_itself(tmp_path):
    job = _many_job(
        tmp_path, 4, datasets={"matrix": True}, report={"detail": "summary", "top_k": 1}
    )
    run(load_job(job), out_dir=str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mx = report["matrix"]
    vec = _vectors(tmp_path)
    names = ["P", "S000", "S001", "S002", "S003"]
    assert mx["names"] == names and mx["pca"] == "pair"
    m = np.array(mx["o_dist_mean"])
    assert np.array_equal(m, m.T)
    expected = np.array([[cdist(vec[a], vec[b]).mean() for b in names] for a in names])
    np.testing.assert_allclose(m, expected, rtol=1e-10)  # diagonal: self-pairs included
    energy = np.array([[_energy(vec[a], vec[b]) for b in names] for a in names])
    e = np.array(mx["energy"])
    assert np.array_equal(e, e.T) and np.all(np.diag(e) == 0.0)
    np.testing.assert_allclose(e, energy, rtol=1e-10, atol=1e-12)
    assert mx["ordered_by"] == "energy"
    off = energy + np.diag(np.full(5, np.inf))
    assert mx["nearest"] == {n: names[int(np.argmin(off[i]))] for i, n in enumerate(names)}
    assert sorted(mx["order"]) == sorted(names)
    # the clustering behind order: scipy's average linkage of the energy matrix, leaves = order
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(energy, checks=False), method="average", optimal_ordering=True)
    np.testing.assert_allclose(np.array(mx["linkage"]), tree, rtol=1e-9, atol=1e-12)
    assert [names[i] for i in leaves_list(tree)] == mx["order"]
    # the matrix row of P against each secondary is the secondary's o_dist_mean
    for s in report["secondaries"]:
        assert m[0, names.index(s["name"])] == pytest.approx(s["o_dist_mean"], rel=1e-12)
    assert "Every dataset against every other" in pdf_text(tmp_path / "out" / "report.pdf")


def test_matrix_as_a_list_without_a_primary(tmp_path):
    """datasets: {matrix: [A, B, C]}: a list with no single primary gives the same matrix as
    the primary + secondary form (the first dataset only heads the per-secondary sections)."""
    from worker.errors import JobError
    from worker.job import parse_job

    vec = {n: np.random.default_rng(k).normal(size=(30, 6)) + k for k, n in enumerate("ABC")}
    for n, v in vec.items():
        np.save(tmp_path / f"{n}.npy", v)
    listed = [{"name": n, "embeddings": f"{n}.npy"} for n in "ABC"]
    job = parse_job(
        {"model": {"name": "precomputed"}, "pca": {"dims": None, "sweep": []},
         "datasets": {"matrix": listed}},
        tmp_path,
    )  # fmt: skip
    assert job.datasets.matrix and job.datasets.primary.name == "A"
    report = run(job, out_dir=str(tmp_path / "out")).report
    m = np.array(report.matrix.o_dist_mean)
    expected = np.array([[cdist(vec[a], vec[b]).mean() for b in "ABC"] for a in "ABC"])
    np.testing.assert_allclose(m, expected, rtol=1e-10)
    with pytest.raises(JobError, match="matrix: list at least two"):
        parse_job({"datasets": {"matrix": listed[:1]}}, tmp_path)
    with pytest.raises(JobError, match="not both"):
        parse_job({"datasets": {"matrix": listed, "primary": listed[0]}}, tmp_path)


def test_pca_shared_needs_matrix(tmp_path):
    from worker.errors import JobError

    job = _many_job(tmp_path, 2, pca={"shared": True})
    with pytest.raises(JobError, match="pca.shared"):
        load_job(job)


def _table_rows(html: str, marker: str) -> list[str]:
    """First cells of the rows of the first table whose opening tag contains `marker`."""
    start = html.index(marker)
    table = html[start : html.index("</table>", start)]
    body = table[table.index("<tbody>") :]
    cell = r"<td(?: class=\"(?:n|name)\")?>([^<]*)</td>"
    return re.findall(rf"<tr>\s*{cell}(?:{cell})?", body)


def test_100_secondaries_render_every_name_on_its_own_row(tmp_path):
    from worker.analysis import analyse_model
    from worker.pipeline import (
        Measured,
        RunInfo,
        _render_inputs,
        build_report,
        embed_all,
        render_outputs,
    )
    from worker.report.pdf import render_html
    from worker.results import Perturbation

    job = load_job(_many_job(tmp_path, 100, rows=6, selection={"counts": [1]}))
    model = job.model_list[0]
    embedded = embed_all(job, model, False)
    analysis = analyse_model(embedded.sets[0], embedded.sets[1:], job)
    names = [s.name for s in analysis.secondaries]
    robustness = {
        kind: Perturbation(
            kendall_tau=0.9,
            o_dist_scaled={n: 0.01 for n in names},
            image_kendall_tau={n: 0.5 + i / 1000 for i, n in enumerate(names)},
        )
        for kind in ("brighten", "darken", "blur")
    }
    measured = [Measured(model.label, embedded, analysis, robustness)]
    info = RunInfo(started="x", finished="y", duration_s=0.0, host="h", versions={})
    report = build_report(job, "job.yaml", measured, None, info)
    html = render_html(report, {})
    ranking_rows = _table_rows(html, '<table class="data ranking">')
    assert [name for _, name in ranking_rows] == report.ranking.order
    assert [int(rank) for rank, _ in ranking_rows] == list(range(1, 101))
    robust_rows = _table_rows(html, '<table class="data robustness">')
    assert [name for name, _ in robust_rows] == report.ranking.order
    assert "τ, images of" not in html  # no longer one column per secondary
    render_outputs(report, _render_inputs(measured[0], None, job), tmp_path / "r")
    text = pdf_text(tmp_path / "r" / "report.pdf")
    lines = text.splitlines()
    for rank, name in enumerate(report.ranking.order, 1):
        assert any(line.startswith(f"{rank} {name} ") for line in lines), name
        assert any(line.startswith(f"{name} 0.") for line in lines), name  # robustness row


def test_matrix_list_with_a_group_on_every_entry_separates_either_order(tmp_path):
    """datasets: {matrix: [...]} with `group:` on every entry (the first too): the groups come
    from the energy matrix over every dataset, and the separation and its p-value are the
    same whichever group is listed first."""
    from worker.analysis import analyse_matrix, compare_groups
    from worker.embeddings import EmbeddedSet
    from worker.job import parse_job

    rng = np.random.default_rng(4)
    vec = {f"{g}{k}": rng.normal(size=(25, 5)) + (0.0 if g == "x" else 2.5)
           for g in "xy" for k in range(3)}  # fmt: skip
    for n, v in vec.items():
        np.save(tmp_path / f"{n}.npy", v)

    def groups_of(names):
        listed = [{"name": n, "embeddings": f"{n}.npy", "group": n[0]} for n in names]
        job = parse_job(
            {"model": {"name": "precomputed"}, "pca": {"dims": None, "sweep": []},
             "datasets": {"matrix": listed}, "metrics": {"group_permutations": 200}},
            tmp_path,
        )  # fmt: skip
        sets = [EmbeddedSet(n, [f"{n}-{i}" for i in range(25)], vec[n]) for n in names]
        matrix = analyse_matrix(sets, job)
        return matrix, compare_groups([], job, matrix)

    names = list(vec)
    matrix, one = groups_of(names)
    assert matrix.ordered_by == "energy" and np.all(np.diag(matrix.energy) == 0.0)
    assert all(matrix.nearest[n][0] == n[0] for n in names)  # nearest other: same group
    _, two = groups_of(names[::-1])
    assert one.basis == "matrix" and [g.name for g in one.groups] == ["x", "y"]
    assert [g.name for g in two.groups] == ["y", "x"]
    a, b = one.pairs[0], two.pairs[0]
    assert a.separation == b.separation == 1.0
    assert a.p_value == b.p_value and a.p_value < 0.2
