"""The report a radiologist reads: report.png and a self-contained report.html from `segment --report`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from covidlesionseg import labels
from covidlesionseg.cli import main
from covidlesionseg.io import Volume
from covidlesionseg.report import report_html, score_rows
from covidlesionseg.report_page import key_slices
from covidlesionseg.severity import SCORES

pytest.importorskip("matplotlib", reason="the report needs the optional matplotlib (pip install '.[report]')")


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    assert main(["phantom", "-o", str(root / "p"), "--seed", "2", "--severity", "CT2", "--shape", "48", "96", "96",
                 "-q"]) == 0
    assert main(["segment", str(root / "p" / labels.CT_FILE), "-o", str(root / "s"), "--engine", "classical",
                 "--lobes", "builtin", "--report", "-q"]) == 0
    return root / "s"


def test_segment_report_writes_a_readable_png_and_a_self_contained_html(reported):
    png = sitk.ReadImage(str(reported / "report.png"))
    assert png.GetSize() == (1600, 1050)  # key slices at readable size, not a thumbnail strip
    page = (reported / "report.html").read_text(encoding="utf-8")
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: one file to hand on
    severity = json.loads((reported / labels.SEVERITY_FILE).read_text())
    for text in ("Research use only: not a diagnosis and not a triage decision", "coverage: complete",
                 "lobe source: builtin", "engine classical (no trained weights)",
                 f"<td>{severity['CT_category']}</td>", "Chaganti"):
        assert text in page, text
    for value, name in labels.LOBE_NAMES.items():
        assert f"<td>{name} ({labels.LOBE_LONG_NAMES[value]})</td>" in page


def test_score_table_comes_from_the_declared_scores():
    severity = {"PO": 12.345, "PHO": 1.0, "LSS": None, "LHOS": None, "CTSS": None, "CTSS_category": None,
                "CT_category": None, "coverage": {"complete": False, "reason": "left lung cut by the field of view"},
                "lobes": {}}
    rows = score_rows(severity)
    assert [r["key"] for r in rows] == [s.key for s in SCORES]
    assert rows[0]["value"] == "12.35%" and rows[2]["value"] == "- (needs whole lobes/lungs)"
    assert "INCOMPLETE" in report_html({**severity, "software": {}, "model": {}}, "t")


def _ct_with_right_lung_lesion(direction: np.ndarray) -> tuple[Volume, np.ndarray, np.ndarray]:
    """Body, two lungs and a lesion in the patient's right lung only, stored with ``direction``."""
    shape = (12, 64, 64)
    ct = Volume(np.full(shape, 40.0, np.float32), (3.0, 3.0, 5.0), (0.0, 0.0, 0.0), direction)
    x = ct.lps_points(np.argwhere(np.ones(shape, bool)))[:, 0].reshape(shape)
    centre_x = 0.5 * (x.min() + x.max())
    _, j, _ = np.indices(shape)
    lungs = np.zeros(shape, np.uint8)
    lungs[(x < centre_x - 15) & (x > centre_x - 80) & (j > 12) & (j < 52)] = labels.RIGHT_LUNG
    lungs[(x > centre_x + 15) & (x < centre_x + 80) & (j > 12) & (j < 52)] = labels.LEFT_LUNG
    ct.array[lungs > 0] = -850
    lesions = ((lungs == labels.RIGHT_LUNG) & (j > 25) & (j < 40)).astype(np.uint8)
    ct.array[lesions > 0] = -500
    return ct, lesions, lungs


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0])])
def test_key_slices_put_the_patients_right_on_the_image_left(direction):
    """Radiological convention from the direction cosines, whatever the stored index order."""
    ct, lesions, lungs = _ct_with_right_lung_lesion(direction)
    slices = key_slices(ct, lesions, lungs, None)
    assert [s.letters for s in slices] == [("R", "L", "A", "P"), ("R", "L", "A", "P"), ("R", "L", "S", "I")]
    for sl in slices:
        cols = np.argwhere(sl.labels["lesions"] > 0)[:, 1]
        assert cols.size and cols.mean() < sl.labels["lesions"].shape[1] / 2, sl.title
        right = np.argwhere(sl.labels["lungs"] == labels.RIGHT_LUNG)[:, 1].mean()
        left = np.argwhere(sl.labels["lungs"] == labels.LEFT_LUNG)[:, 1].mean()
        assert right < left


_WITHOUT_MATPLOTLIB = """
import sys
sys.modules["matplotlib"] = None  # as if it were not installed
import numpy as np
from covidlesionseg.io import InputError, Volume
from covidlesionseg.report_page import write_report
ct = Volume(np.full((2, 8, 8), -800.0, np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
empty = np.zeros((2, 8, 8), np.uint8)
severity = {"PO": 0.0, "lobes": {}, "lungs": {}, "software": {}, "model": {}}
png, page = write_report(ct, empty, empty, None, severity, sys.argv[1], "t", picture=None)
print(png, page.name)
try:
    write_report(ct, empty, empty, None, severity, sys.argv[1], "t")
except InputError as exc:
    print("refused:", exc)
"""


def test_report_without_matplotlib_is_the_html_tables_alone(tmp_path):
    """``picture=None`` (the demo) writes report.html without a picture; ``--report`` asks for it and is refused."""
    run = subprocess.run([sys.executable, "-c", _WITHOUT_MATPLOTLIB, str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "None report.html"
    assert lines[1] == "refused: the report needs matplotlib: pip install 'covidlesionseg[report]'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<img" not in page and "<h2>Scores</h2>" in page
