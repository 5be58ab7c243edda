"""report/html_report.py: index.html from the compare stage's Document, and what a real browser
(Debian's chromium, headless: scripts/chromium.sh installs it) makes of it on a constructed study
(tests/test_compare.py's fixture): every image loads from the page itself, the headline and
headings are there, the screenshot is not blank, and nothing comes from the network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from test_compare import (  # noqa: F401  (study: the fixture)
    STRATEGIES,
    run_compare,
    samples_per_second,
    study,
    values,
    write_params,
)

from backprop_bench import compare
from backprop_bench.report.document import Document, Figure, Section, Table
from backprop_bench.report.html_report import inline, render, slug
from backprop_bench.results.grid import read_study_params

CHROMIUM = shutil.which("chromium")
# After load, count the images the browser decoded: the test's copy of the page gets this script.
CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images], ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  const p = document.createElement("p"); p.id = "img-check";
  p.textContent = `loaded ${ok.length} of ${imgs.length}`; document.body.appendChild(p);
});</script>"""
# No name resolves and every request goes to a closed port: a network URL cannot load.
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
STABILITY = {
    "lr_summary": [
        {"strategy": s, "batch_size": b, "largest_learning_lr": lr, "largest_nondiverging_lr": lr * 2}
        | {"lowest_loss_lr": lr}
        for (s, b, lr) in (
            ("sequential", 16, 0.02),
            ("parallel", 16, 0.5),
            ("sequential", 64, 0.05),
            ("parallel", 64, 1.0),
        )
    ],
    "sentences": ["batch 16: sequential first diverges at lr 0.05 (epoch 1) while parallel still learns there."],
}
BENCH = "# Benchmark\n\nMachine: two cores.\n\n## Cells\n\n| cell | epoch s |\n|---|---:|\n| numpy parallel | 0.21 |\n"


def needs_chromium() -> str:
    """chromium's path; a skip that says why where it is missing and cannot be installed here."""
    if CHROMIUM:
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail("chromium is missing on a root Debian shell: scripts/chromium.sh (make test runs it) installs it")
    pytest.skip("chromium is not installed and this is not a root Debian shell (apt-get install chromium)")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [needs_chromium(), "--headless", "--no-sandbox", "--disable-gpu", *OFFLINE, *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def external_urls(page_html: str) -> list[str]:
    """Every src, href or CSS url() that is not a data: URI or a #fragment in the page."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page_html)
    found += re.findall(r"""url\(\s*["']?([^"')]+)""", page_html) + re.findall(r"@import\s+([^;]+)", page_html)
    return [u for u in found if not u.startswith(("data:", "#"))]


def loaded_dom(page: Path) -> str:
    """The DOM after load of a copy of page with CHECK in it (the page itself has no script)."""
    checked = page.with_name("checked.html")
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    return chromium(checked, "--virtual-time-budget=5000", "--dump-dom").stdout


@pytest.fixture
def page(study):  # noqa: F811
    reports = study[2]
    reports.mkdir()
    (reports / "stability.json").write_text(json.dumps(STABILITY))
    (reports / "bench.md").write_text(BENCH)
    stripes = np.tile(np.linspace(0, 1, 64), (32, 1))  # (32, 64): the stability stage's plot stands in
    image.imsave(reports / "stability.png", stripes, cmap="viridis")
    run_compare(study)
    return reports / "index.html"


def test_the_page_has_the_headline_every_section_and_inlined_plots(page):
    text = page.read_text()
    assert external_urls(text) == []
    assert text.count('<img src="data:image/png;base64,') == len(compare.PNGS) + 1  # and stability.png
    headline = text.split('<section class="headline"')[1].split("</section>")[0]
    torch = np.mean(
        [
            np.mean(values(samples_per_second, "torch", s, "controlled"))
            / np.mean(values(samples_per_second, "numpy", s, "controlled"))
            for s in STRATEGIES
        ]
    )  # torch's samples/s over NumPy's, the mean over strategies
    speed = f"Fastest in controlled mode on cpu: numpy, {1 / torch:.2f}× as fast as the next, torch; samples/s"
    assert speed in headline and f"numpy 1.00×, torch {torch:.2f}×; the study" in headline
    assert "none of the 8 differences is distinguishable from zero at 3 seeds" in headline
    assert "batch 16: sequential 0.02, parallel 0.5; batch 64: sequential 0.05, parallel 1." in headline
    assert "sequential, cpu: yes (F = " in headline  # native mode: torch is 1 pp above numpy
    assert "Fastest to 88 % validation accuracy in controlled mode: numpy parallel on cpu, 2.26 ± 1.91 s" in headline
    for title in ("Per framework, strategy, device and mode", "Plots", "Stability map: where the strategies part"):
        assert f'<h2 id="{slug(title)}">' in text and f'href="#{slug(title)}"' in text
    assert "<td>numpy parallel</td><td>0.21</td>" in text  # bench.md's table, converted
    assert "<td>sequential</td><td>16</td><td>0.02</td><td>0.04</td><td>0.02</td>" in text  # the lr table


@pytest.mark.slow
def test_a_browser_loads_every_image_offline_and_draws_the_page(page):
    dom = loaded_dom(page)
    assert '<p id="img-check">loaded 6 of 6</p>' in dom
    assert "<h1>Comparison of the study's runs</h1>" in dom and "Headline</h2>" in dom
    assert "Fastest in controlled mode on cpu: numpy" in dom
    assert dom.count("<figcaption>") == 6 and "Native mode: do frameworks differ?</h2>" in dom
    shot = page.with_name("shot.png")
    chromium(page, f"--screenshot={shot}", "--window-size=1280,2000")
    pixels = image.imread(shot)  # (2000, 1280, 3 or 4) floats in [0, 1]
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, table rules, the inlined plots: not a blank page


def test_a_network_url_is_caught_both_ways(page):
    """The checks above would fail on a page that fetched anything: an image from the network
    neither passes external_urls nor loads in the offline browser."""
    bad = page.with_name("bad.html")
    bad.write_text(page.read_text().replace("</h1>", '</h1><img src="https://example.org/x.png" alt="x">', 1))
    assert external_urls(bad.read_text()) == ["https://example.org/x.png"]
    assert '<p id="img-check">loaded 6 of 7</p>' in loaded_dom(bad)
    styled = "<style>body { background: url('http://example.org/bg.png') }</style><link href=x.css>"
    assert sorted(external_urls(styled)) == ["http://example.org/bg.png", "x.css"]


def test_inline_markdown_is_escaped_then_tagged():
    assert inline("**How** *this* `a < b` <script> 2 * 3 * 4") == (
        "<strong>How</strong> <em>this</em> <code>a &lt; b</code> &lt;script&gt; 2 * 3 * 4"
    )
    assert inline("`*not em*`") == "<code>*not em*</code>"


def test_a_missing_figure_is_said_not_hidden(tmp_path):
    doc = Document("T", [Section("S", [Table(["a"], [["<1>"]])])], figures=[Figure("gone.png", "Gone.")])
    text = render(doc, tmp_path)
    assert "<p>gone.png: not written.</p><figcaption>Gone.</figcaption>" in text
    assert "<td>&lt;1&gt;</td>" in text and "<img" not in text and 'class="headline"' not in text  # no headline given


def test_the_headline_says_what_it_cannot_compare(tmp_path):
    p = read_study_params(write_params(tmp_path / "params.yaml", frameworks=("numpy",), modes=("native",)))
    facts = dict(counts="2 runs: 1 finished, 1 missing", speed={"numpy": 1.0}, paired=[], spreads=[], targets=[])
    lines = compare.headline(facts | dict(target=0.9), p, {"sentences": []})  # an old stability.json: no lr_summary
    assert lines == [
        "2 runs: 1 finished, 1 missing.",
        "Fastest in native mode on cpu: numpy; samples/s as a multiple of NumPy's (mean over strategies): numpy 1.00×; "
        "the study's short runs beside other stages, a rough order (the bench's paired figures follow the main table).",
        "Sequential and parallel: no seed finished under both strategies, nothing to pair.",
        "No native run reached 90 % validation accuracy.",
    ]


def test_a_malformed_stability_json_names_the_file(tmp_path):
    assert compare.read_stability(tmp_path / "stability.json") is None  # the stage has not run
    (tmp_path / "stability.json").write_text("{oops")
    with pytest.raises(compare.ReportError, match=r"stability.json: line 1 column 2: not valid JSON"):
        compare.read_stability(tmp_path / "stability.json")
    (tmp_path / "stability.json").write_text("[]")
    with pytest.raises(compare.ReportError, match=r"stability.json: expected a JSON object"):
        compare.read_stability(tmp_path / "stability.json")
