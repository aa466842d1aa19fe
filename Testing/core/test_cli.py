"""The command line end to end on generated CT: outputs, contracts, one-line errors, nothing half-written."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from covidlesionseg import io, labels
from covidlesionseg.cli import main
from covidlesionseg.metrics import dice

SHAPE = ["56", "96", "96"]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "p"
    assert main(["phantom", "-o", str(out), "--seed", "4", "--severity", "CT2", "--shape", *SHAPE, "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def segmented(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "s"
    code = main(["segment", str(phantom_dir / labels.CT_FILE), "-o", str(out), "--engine", "classical",
                 "--lobes", str(phantom_dir / labels.LOBES_FILE), "-q"])
    assert code == 0
    return out


def test_phantom_writes_ct_truth_and_severity(phantom_dir):
    names = sorted(p.name for p in phantom_dir.iterdir())
    assert names == sorted([labels.CT_FILE, labels.LESIONS_FILE, labels.LUNGS_FILE, labels.LOBES_FILE,
                            labels.SEVERITY_FILE])
    ct = io.read_ct(phantom_dir / labels.CT_FILE)
    for name in (labels.LESIONS_FILE, labels.LUNGS_FILE, labels.LOBES_FILE):
        assert io.read_label(phantom_dir / name, ct).same_geometry(ct)
    sev = json.loads((phantom_dir / labels.SEVERITY_FILE).read_text())
    assert sev["CT_category"] == "CT2" and sev["lobe_source"] == "truth" and sev["engine"] == "truth"
    assert sev["coverage"]["complete"] is True


def test_segment_outputs_follow_the_contract(phantom_dir, segmented):
    ct = io.read_ct(phantom_dir / labels.CT_FILE)
    sev = json.loads((segmented / labels.SEVERITY_FILE).read_text())
    for key in ("software", "engine", "model", "lobe_source", "coverage", "config", "lung_ml", "lesion_ml",
                "high_opacity_ml", "PO", "PHO", "LSS", "LHOS", "CTSS", "CTSS_category", "CT_category", "lungs",
                "lobes"):
        assert key in sev, key
    assert sev["engine"] == "classical" and sev["model"]["sha256"] is None
    assert sev["lobe_source"].startswith("file:")
    assert set(sev["lobes"]) == set(labels.LOBE_NAMES.values())
    lesions = io.read_label(segmented / labels.LESIONS_FILE, ct).array
    lungs = io.read_label(segmented / labels.LUNGS_FILE, ct).array
    lobes = io.read_label(segmented / labels.LOBES_FILE, ct).array
    # lesion split derived from HU; lungs contain lesions; every lung voxel in exactly one lobe
    assert np.array_equal(lesions == labels.LESION_HIGH, (lesions > 0) & (ct.array >= labels.HIGH_OPACITY_HU))
    assert np.all(lungs[lesions > 0] > 0)
    assert np.array_equal(lobes > 0, lungs > 0)
    truth = io.read_label(phantom_dir / labels.LESIONS_FILE, ct).array
    assert dice(lesions > 0, truth > 0) > 0.6
    truth_lungs = io.read_label(phantom_dir / labels.LUNGS_FILE, ct).array
    for side in (labels.RIGHT_LUNG, labels.LEFT_LUNG):
        assert dice(lungs == side, truth_lungs == side) > 0.9


def test_score_recomputes_from_corrected_labels(phantom_dir, segmented, tmp_path):
    out = tmp_path / "sev.json"
    code = main(["score", str(phantom_dir / labels.CT_FILE), str(phantom_dir / labels.LESIONS_FILE),
                 "--lungs", str(phantom_dir / labels.LUNGS_FILE), "--lobes", str(phantom_dir / labels.LOBES_FILE),
                 "-o", str(out), "-q"])
    assert code == 0
    scored = json.loads(out.read_text())
    truth = json.loads((phantom_dir / labels.SEVERITY_FILE).read_text())
    for key in ("PO", "PHO", "LSS", "LHOS", "CTSS", "CTSS_category", "CT_category", "lesion_ml", "lung_ml"):
        assert scored[key] == pytest.approx(truth[key]), key


def test_score_extends_the_lungs_by_a_correction_past_their_border(phantom_dir, tmp_path, capsys):
    ct = io.read_ct(phantom_dir / labels.CT_FILE)
    lesions = io.read_label(phantom_dir / labels.LESIONS_FILE, ct).array.copy()
    lungs = io.read_label(phantom_dir / labels.LUNGS_FILE, ct).array
    k = int(np.argwhere(lungs == labels.RIGHT_LUNG)[:, 0].mean())
    row = np.argwhere(lungs[k] == labels.RIGHT_LUNG)
    j, i = row[np.argmin(row[:, 1])]  # on the right lung's border along the array's i axis
    block = (slice(k - 1, k + 2), slice(j - 2, j + 3), slice(i - 3, i + 3))
    outside = int(np.count_nonzero((lungs[block] == 0) & (lesions[block] == 0)))
    assert outside > 0
    lesions[block] = labels.LESION_LOW
    io.write_label(tmp_path / "edited.nii.gz", ct, lesions)
    out = tmp_path / "sev.json"
    capsys.readouterr()
    assert main(["score", str(phantom_dir / labels.CT_FILE), str(tmp_path / "edited.nii.gz"),
                 "--lungs", str(phantom_dir / labels.LUNGS_FILE), "--lobes", str(phantom_dir / labels.LOBES_FILE),
                 "-o", str(out)]) == 0
    scored = json.loads(out.read_text())
    truth = json.loads((phantom_dir / labels.SEVERITY_FILE).read_text())
    added_ml = np.count_nonzero(lungs[block] == 0) * ct.voxel_ml
    assert scored["lesions_outside_lungs_ml"] == pytest.approx(added_ml, abs=1e-3)
    assert scored["lung_ml"] == pytest.approx(truth["lung_ml"] + added_ml, abs=1e-3)
    assert scored["lesion_ml"] > truth["lesion_ml"]
    assert "lungs extended by" in capsys.readouterr().out


def test_evaluate_pairs_cases_and_scores_them(phantom_dir, tmp_path):
    images, labels_dir = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir()
    labels_dir.mkdir()
    shutil.copy(phantom_dir / labels.CT_FILE, images / "case1_0000.nii.gz")
    shutil.copy(phantom_dir / labels.LESIONS_FILE, labels_dir / "case1.nii.gz")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--images", str(images), "--labels", str(labels_dir), "-o", str(out),
                 "--engine", "classical", "-q"]) == 0
    doc = json.loads(out.read_text())
    assert [c["id"] for c in doc["cases"]] == ["case1"]
    case = doc["cases"][0]
    assert 0.6 < case["dice"] <= 1.0 and 0.0 <= case["nsd"] <= 1.0 and case["fp_ml"] >= 0 and case["fn_ml"] >= 0
    assert doc["mean_dice"] == pytest.approx(case["dice"])
    (images / "case2.nii.gz").write_bytes((phantom_dir / labels.CT_FILE).read_bytes())  # no label for case2
    (images / "case3.nii.gz").write_bytes((phantom_dir / labels.CT_FILE).read_bytes()[:5000])  # truncated
    shutil.copy(phantom_dir / labels.LESIONS_FILE, labels_dir / "case3.nii.gz")
    assert main(["evaluate", "--images", str(images), "--labels", str(labels_dir), "-o", str(tmp_path / "m2.json"),
                 "--engine", "classical", "-q"]) == 2  # every case tried, the failures said, the exit non-zero
    doc = json.loads((tmp_path / "m2.json").read_text())
    assert [c["id"] for c in doc["cases"]] == ["case1"]
    assert [e.split(":")[0] for e in doc["errors"]] == ["case2", "case3"]
    assert "no label file" in doc["errors"][0] and "truncated" in doc["errors"][1]


def test_models_json_lists_classical_as_the_only_default(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COVIDLESIONSEG_HOME", str(tmp_path))
    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ids = [m["id"] for m in doc["models"]]
    assert "classical" in ids and sum(m["default"] for m in doc["models"]) == 1
    classical = next(m for m in doc["models"] if m["id"] == "classical")
    assert classical["sha256"] is None
    assert main(["models", "--set-default", "no-such-model"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "{missing}", "-o", "{out}"], "not found"),
        (["segment", "{text}", "-o", "{out}"], "unsupported file type"),
        (["segment", "{ct}", "-o", "{out}", "--engine", "no-such-model"], "no-such-model"),
        (["segment", "{ct}", "-o", "{out}", "--lobes", "{missing}"], "lobe file not found"),
        (["segment", "{ct}", "-o", "{out}", "--lobes", "lungmask"], "not installed"),  # lungmask: optional
    ],
)
def test_errors_are_one_line_and_write_nothing(phantom_dir, tmp_path, capsys, argv, message):
    (tmp_path / "notes.txt").write_text("not an image")
    values = {"missing": str(tmp_path / "absent.nii.gz"), "out": str(tmp_path / "out"),
              "text": str(tmp_path / "notes.txt"), "ct": str(phantom_dir / labels.CT_FILE)}
    code = main([a.format(**values) for a in argv] + ["-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("covidlesionseg: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_failed_run_keeps_an_earlier_output_intact(phantom_dir, segmented, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(segmented, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["segment", str(phantom_dir / labels.CT_FILE), "-o", str(out), "--engine", "nope", "-q"])
    assert code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_python_dash_m_entry_point(tmp_path):
    run = subprocess.run([sys.executable, "-m", "covidlesionseg", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and "covidlesionseg" in run.stdout


def test_demo_writes_report_and_pictures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--shape", "48", "80", "80", "-q"]) == 0
    for rel in ("report.md", "report.png", "report.html", "metrics.json", "truth/ct.nii.gz",
                "segmentation/severity.json"):
        assert (out / rel).is_file(), rel
    assert not (out / "preview.png").exists()
    assert "![key slices, involvement per lobe, scores](report.png)" in (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lesions"]["dice"] > 0.5
    report = (out / "report.md").read_text()
    assert "| CT_category |" in report and "RUL" in report


def test_score_output_folder_gets_severity_json(phantom_dir, segmented, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    args = ["score", str(phantom_dir / labels.CT_FILE), str(segmented / labels.LESIONS_FILE), "--lobes",
            str(segmented / labels.LOBES_FILE), "-q", "-o"]
    assert main([*args, str(folder)]) == 0
    assert main([*args, str(tmp_path / "new") + "/"]) == 0
    for written in (folder / labels.SEVERITY_FILE, tmp_path / "new" / labels.SEVERITY_FILE):
        assert json.loads(written.read_text())["PO"] > 0


def test_every_option_has_help():
    from covidlesionseg.cli import build_parser

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif action.help != argparse.SUPPRESS:
                yield name, action

    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, a in walk(build_parser(), "covidlesionseg")
               if not a.help]
    assert missing == []


def test_score_help_says_pho_comes_from_hu(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "PHO and LHOS come from the CT's HU, never from the lesion labels" in text


def test_stage_lines_when_not_a_terminal_and_progress_lines_for_slicer(phantom_dir, tmp_path, capsys):
    ct = str(phantom_dir / labels.CT_FILE)
    assert main(["segment", ct, "-o", str(tmp_path / "a"), "--engine", "classical", "--lobes", "none"]) == 0
    captured = capsys.readouterr()
    stages = [line for line in captured.err.splitlines() if line.startswith("segment:")]
    assert len(stages) >= 5 and stages[-1].endswith("done")  # stderr is not a terminal under pytest
    assert "PROGRESS" not in captured.out
    assert main(["segment", ct, "-o", str(tmp_path / "b"), "--engine", "classical", "--lobes", "none",
                 "--progress-lines", "-q"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROGRESS ")]
    fractions = [float(line.split(" ", 2)[1]) for line in lines]  # parsed as COVIDLesionSegLib.process does
    assert len(lines) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(len(line.split(" ", 2)) == 3 for line in lines)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is present: nothing to warn about")
def test_device_cuda_without_gpu_warns(phantom_dir, tmp_path, capsys):
    assert main(["segment", str(phantom_dir / labels.CT_FILE), "-o", str(tmp_path / "s"), "--engine", "classical",
                 "--lobes", "none", "--device", "cuda", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: --device cuda: no CUDA GPU is available here; running on the CPU" in err


def test_no_lobe_message_without_lobes_and_no_none_sha(phantom_dir, tmp_path, capsys):
    from covidlesionseg.report import lobe_table, markdown_report

    doc = {"lobes": {}, "lobe_source": "none", "lesions_outside_lungs_ml": 1.5, "engine": "classical",
           "model": {"id": "classical", "sha256": None}, "software": {"name": "COVIDLesionSeg", "version": "x"}}
    assert "joined the nearest lung" in lobe_table(doc) and "lobe" not in lobe_table(doc).split("joined")[1]
    assert "None" not in markdown_report("t", doc) and "no trained weights" in markdown_report("t", doc)
    with_lobes = {**doc, "lobes": {"RUL": {"volume_ml": 1.0, "lesion_ml": 0.0, "percent": 0.0,
                                           "high_opacity_percent": 0.0, "lss": 0, "lhos": 0, "ctss": 0}}}
    assert "joined the nearest lobe" in lobe_table(with_lobes)


@pytest.mark.parametrize("cut", ["truncated", "header-only"])
def test_broken_input_files_exit_2_with_one_line(phantom_dir, tmp_path, capsys, cut):
    raw = (phantom_dir / labels.CT_FILE).read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2] if cut == "truncated" else __import__("gzip").compress(
        __import__("gzip").decompress(raw)[:352]))
    assert main(["segment", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidlesionseg: error: bad.nii.gz: truncated") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_readme_keeps_its_two_commands_first_and_its_doc_links_resolve():
    import re as _re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```")[1]
    assert "covidlesionseg demo -o demo_out" in first_block and "python -m pytest" in first_block
    links = _re.findall(r"\]\((docs/[^)#]+)", readme)
    assert "docs/contracts.md" in links
    for link in links:
        assert (root / link).exists(), link
    for doc in (root / "docs").glob("*.md"):
        for target in _re.findall(r"\]\(([\w.-]+\.md)", doc.read_text(encoding="utf-8")):
            assert (root / "docs" / target).exists(), f"{doc.name} -> {target}"
