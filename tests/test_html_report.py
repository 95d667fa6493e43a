"""report.html: rendered by a real headless Chromium, offline, bounded in size."""

import copy
import json
import os
import struct

import pandas as pd
import pytest

from chromium import find_chromium
from poisonguard.pipelines import ScreenConfig, SimulateConfig, run_screen, run_simulate
from poisonguard.pipelines.html_report import MAX_CLASS_PLOTS, external_references, render_html
from poisonguard.simulators import Backdoor, LabelFlip

CREDIT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "credit.parquet")


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """A real run: the credit table with a planted backdoor and label flips, screened against the clean table as trusted rows.

    The backdoor's trigger (Expenses 400) lies outside the trusted range (35-180), so a
    range expectation fails for the planted rows.
    """
    if not os.path.exists(CREDIT):
        pytest.skip(f"real table {CREDIT} is absent (the project expects ../shared/data beside it)")
    root = tmp_path_factory.mktemp("html")
    run_simulate(SimulateConfig(inputs=(CREDIT,), out=str(root / "sim"), id_column="id", seed=3, attacks=(
        Backdoor(trigger={"features": {"Seniority": 45, "Expenses": 400}}, target="bad", count=60),
        LabelFlip(mode="random", count=40),
    )))
    trusted = pd.read_parquet(CREDIT).rename(columns={"id": "row_id"}).astype({"row_id": str})  # the batch's id column
    trusted.to_parquet(root / "trusted.parquet", index=False)
    # the simulated data keeps the table's int64 `id` beside its `row_id`; it is not a feature
    features = tuple(c for c in trusted.select_dtypes("number").columns)
    result = run_screen(ScreenConfig(inputs=(str(root / "sim" / "data"),), out=str(root / "out"),
                                     reference=(str(root / "trusted.parquet"),), feature_columns=features))
    return result


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_report_html_renders_offline_in_chromium(screened, tmp_path):
    if find_chromium() is None:
        pytest.skip("no Chromium found: install Debian's 'chromium' package (.ci/run does) to render report.html")
    from chromium import Chromium

    report = json.load(open(screened.path("report.json")))
    path = screened.path("report.html")
    text = open(path, encoding="utf-8").read()
    assert external_references(text) == []
    with Chromium() as browser:
        page = browser.open(path)
        # nothing but the file itself was requested
        assert page.requests == ["file://" + os.path.abspath(path)]
        verdict = page.evaluate("document.querySelector('#verdict').innerText")
        assert verdict.startswith("BREACHED" if report["policy"]["breached"] else "ACCEPTED")
        for reason in report["policy"]["reasons"]:
            assert reason in verdict
        # the expectation table: one rendered row per expectation, failures named
        rows = page.evaluate("[...document.querySelectorAll('#expectations tbody tr')].map(r => r.innerText)")
        assert len(rows) == report["validation"]["evaluated"]
        failed = [r for r in rows if r.startswith("FAIL")]
        assert len(failed) == len(report["validation"]["failed"]) > 0
        assert any(r.startswith("FAIL") and "expect_column_values_to_be_between(Expenses)" in r for r in rows)
        for name in report["validation"]["failed"]:
            assert any(name in r for r in failed)
        # one drawn plot per class, each with a panel per detector
        plots = page.evaluate("""[...document.querySelectorAll('figure.class-plot')].map(f => {
            const s = f.querySelector('svg').getBoundingClientRect();
            return [f.dataset.class, s.width, s.height, f.querySelector('svg').textContent]; })""")
        assert sorted(p[0] for p in plots) == sorted(report["classes"]) == ["bad", "good"]
        for name, width, height, svg_text in plots:
            assert width > 300 and height > 80, name
            assert "combined suspicion" in svg_text and "spectral score" in svg_text and "label score" in svg_text
        curves = page.evaluate("document.querySelector('#curves svg') && document.querySelector('#curves svg').textContent")
        assert "ROC" in curves and "precision-recall" in curves
        top = page.evaluate("[...document.querySelectorAll('#top-rows tr')].length")
        assert top == len(report["top_rows"]) + 1
        left, top_y, box_w, box_h = page.evaluate(
            "(() => { const r = document.querySelector('#verdict').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
        shot = page.screenshot(tmp_path / "report.png")
    width, height = _png_size(shot)
    assert width == 1280 and height > 1500  # the whole page, not one screen
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colour = (0xB0, 0x26, 0x2C) if report["policy"]["breached"] else (0x2A, 0x7A, 0x2A)
    # the verdict banner is drawn in its colour: most pixels inside its box have it (the rest is its text)
    band = [image.getpixel((int(left + box_w * fx), int(top_y + box_h * fy))) for fx in (0.02, 0.3, 0.6, 0.9, 0.98)
            for fy in (0.08, 0.5, 0.92)]
    assert sum(1 for px in band if px == colour) > len(band) // 2, band


def test_report_html_is_bounded_for_many_classes(screened):
    """1,000 classes: only MAX_CLASS_PLOTS are drawn, the rest listed; the page stays small."""
    report = json.load(open(screened.path("report.json")))
    one = report["classes"]["bad"]
    decision = report["decision"]["classes"]["bad"]
    report["classes"] = {f"c{i:04d}": copy.deepcopy(one) for i in range(1000)}
    report["decision"]["classes"] = {f"c{i:04d}": copy.deepcopy(decision) for i in range(1000)}
    odd = "c$1 <b>x</b>"  # a class name is text: no mathtext in the plot, no markup in the page
    report["classes"][odd] = report["classes"].pop("c0999")
    report["decision"]["classes"][odd] = report["decision"]["classes"].pop("c0999")
    text = render_html(report)
    assert "<b>x</b>" not in text and "c$1 &lt;b&gt;x&lt;/b&gt;" in text
    assert text.count('<figure class="class-plot"') == MAX_CLASS_PLOTS
    assert "976 more classes" in text
    assert len(text.encode()) < 3_000_000
    assert external_references(text) == []


def test_report_html_is_written_beside_report_json(screened):
    size = os.path.getsize(screened.path("report.html"))
    assert 20_000 < size < 1_000_000
    assert set(os.listdir(screened.out)) >= {"report.json", "report.html", "expectations.json", "cleaned", "quarantine", "invalid"}


def test_manifest_html_shows_attacks_and_class_balance(screened):
    """simulate writes manifest.html beside manifest.json: the attacks, the rows each touched, the balance before and after."""
    sim = os.path.join(os.path.dirname(screened.out), "sim")
    manifest = json.load(open(os.path.join(sim, "manifest.json")))
    assert manifest["classes"] == {
        c: {"before": manifest["classes"][c]["before"], "after": manifest["classes"][c]["after"]} for c in ("bad", "good")}
    balance = manifest["classes"]
    assert sum(b["before"] for b in balance.values()) == sum(b["after"] for b in balance.values()) == manifest["counts"]["rows_out"]
    assert balance["bad"]["after"] > balance["bad"]["before"]  # the backdoor relabels 60 rows as 'bad'
    text = open(os.path.join(sim, "manifest.html"), encoding="utf-8").read()
    assert external_references(text) == []
    assert '<figure id="balance"><svg' in text
    for attack in manifest["attacks"]:
        assert f'<td class="mono">{attack["name"]}</td>' in text
        assert f'<td class="n">{attack["touched"]:,}</td>' in text
    for name, b in balance.items():
        assert f"<tr><td>{name}</td><td class=\"n\">{b['before']:,}</td><td class=\"n\">{b['after']:,}</td>" in text
