"""The HTML report (softsae_lib.report) on a small synthetic results folder, and in a headless browser.

The report built from a real smoke run is checked in test_reproduce.py (it reuses that module's run).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from softsae_lib import reproduce  # noqa: E402
from softsae_lib.__main__ import main as cli_main  # noqa: E402
from softsae_lib.report import build_report, format_number, headline_numbers  # noqa: E402

SHA = "0123456789abcdef0123456789abcdef01234567"


def _png(color: str) -> bytes:
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [0, 1, 0], color=color)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _results(root: Path, profile: str = "smoke") -> Path:
    """results/<profile>/ with 01 ok (metrics, two figures, an executed notebook), 02 failed, rest absent."""
    prof = root / profile
    nb_dir = prof / "01_soft_topk"
    nb_dir.mkdir(parents=True)
    (nb_dir / "mask_vs_alpha.png").write_bytes(_png("red"))
    (nb_dir / "threshold.png").write_bytes(_png("blue"))
    metrics = {
        "params": {"alphas": [1.0, 0.1], "seed": 0},
        "hard_limit_max_error": 7.865930129469234e-14,
        "threshold_alpha_0.3": 0.8179964141396036,
        "sum_abs_error": {"1.0": 8.9e-16, "0.1": 0.0},
        "models": [{"model": "soft", "k": 8, "fvu": 0.01652550550063777, "l0_mean": 7.5697,
                    "train_seconds": 79.3}],
        "provenance": {"git_sha": SHA, "versions": {"torch": "2.13.0"}},
    }
    (nb_dir / "metrics.json").write_text(json.dumps(metrics))
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('sum of p equals k')", execution_count=1)
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="sum of p equals k\n"),
        nbformat.v4.new_output("display_data", data={
            "image/png": base64.b64encode(_png("green")).decode(), "text/plain": "<Figure>"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Soft top-k <demo>"), cell]
    nbformat.write(nb, str(nb_dir / "01_soft_topk.ipynb"))
    (prof / "02_synthetic_manifolds").mkdir()
    manifest = {"profile": profile, "provenance": {"git_sha": SHA, "versions": {"torch": "2.13.0"}},
                "notebooks": {
                    "01_soft_topk": {"status": "ok", "seconds": 5.8, "output": "x", "error": None},
                    "02_synthetic_manifolds": {"status": "failed", "seconds": 12.25, "output": "y",
                                               "error": "notebook 02 failed in cell 3: ValueError: <bad k>"}}}
    (prof / "manifest.json").write_text(json.dumps(manifest))
    return prof


def test_headline_numbers_skip_settings_and_label_records():
    metrics = {"params": {"lr": 0.1}, "provenance": {"seed": 3}, "acc": 0.5, "flag": True,
               "ce": {"kl": 2.0, "note": "x"}, "models": [{"model": "topk", "k": 8, "fvu": 0.25,
                                                          "train_seconds": 9.0}],
               "history": [{"loss": 1.0}]}
    assert headline_numbers(metrics) == [("acc", 0.5), ("ce.kl", 2.0), ("models[topk 8].fvu", 0.25)]
    assert len(headline_numbers({f"m{i}": float(i) for i in range(100)}, limit=5)) == 5
    assert format_number(0.01652550550063777) == "0.01653" and format_number(10000) == "10000"


def test_report_lists_every_notebook_number_and_figure(tmp_path):
    prof = _results(tmp_path)
    index = build_report(tmp_path, "smoke")
    assert index == prof / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in reproduce.NOTEBOOKS:  # every notebook has a row, run or not
        assert f'id="row-{name}"' in page
    row = lambda name: re.search(rf'<tr id="row-{name}">.*?</tr>', page, re.S).group(0)  # noqa: E731
    assert ">ok<" in row("01_soft_topk") and "5.8" in row("01_soft_topk") and SHA[:12] in row("01_soft_topk")
    assert ">failed<" in row("02_synthetic_manifolds") and "12.2" in row("02_synthetic_manifolds")
    assert html.escape("ValueError: <bad k>") in row("02_synthetic_manifolds")
    assert ">not run<" in row("04_vit")
    metrics = json.loads((prof / "01_soft_topk" / "metrics.json").read_text())
    heads = headline_numbers(metrics)
    assert len(heads) == 6  # 2 top-level, 2 nested, fvu and l0_mean of the one record
    for label, value in heads:
        assert f"{html.escape(label)} = <b>{format_number(value)}</b>" in row("01_soft_topk")
    assert "train_seconds" not in page and "alphas" not in page
    for fig in ("mask_vs_alpha.png", "threshold.png"):  # inline, as data URIs: no server, no copies
        data = base64.b64encode((prof / "01_soft_topk" / fig).read_bytes()).decode()
        assert f'src="data:image/png;base64,{data}"' in page and fig in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    link = prof / "report" / "notebooks" / "01_soft_topk.html"
    assert 'href="notebooks/01_soft_topk.html"' in page and link.is_file()
    rendered = link.read_text(encoding="utf-8")
    assert "sum of p equals k" in rendered and "data:image/png;base64," in rendered
    assert "notebooks/02_synthetic_manifolds.html" not in page  # no executed notebook, no link


def test_report_cli_and_reproduce_hook(tmp_path, monkeypatch):
    _results(tmp_path)
    assert cli_main(["report", "--profile", "smoke", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "report" / "index.html").is_file()
    shutil.rmtree(tmp_path / "smoke" / "report")
    # --report builds the page after the runs, failed ones included (exit code stays 1)
    failed = [reproduce.NotebookRun("02_synthetic_manifolds", "failed", 1.0, "y", "boom")]
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **k: failed)
    assert cli_main(["reproduce", "--profile", "smoke", "--out", str(tmp_path), "--report"]) == 1
    assert "02_synthetic_manifolds" in (tmp_path / "smoke" / "report" / "index.html").read_text()
    with pytest.raises(FileNotFoundError, match="no results for profile 'paper'"):
        build_report(tmp_path, "paper")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    """The page as a browser sees it from file://: the DOM has the table, the screenshot is not blank."""
    _results(tmp_path)
    index = build_report(tmp_path, "smoke")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1200,900"]
    dom = subprocess.run([*flags, "--dump-dom", index.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert '<table id="notebooks">' in dom and dom.count("<tr id=\"row-") == len(reproduce.NOTEBOOKS)
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", index.as_uri()], capture_output=True, timeout=120,
                   check=True)
    if os.environ.get("SOFTSAE_REPORT_SCREENSHOT"):  # keep the proof, e.g. as a CI artifact
        shutil.copy(shot, os.environ["SOFTSAE_REPORT_SCREENSHOT"])
    img = plt.imread(shot)
    assert img.shape[:2] == (900, 1200)
    assert np.std(img[..., :3]) > 0.05  # text, borders and figures, not an empty white page
