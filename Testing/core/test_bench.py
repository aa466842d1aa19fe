"""The benchmarks run end to end on small generated CT and report consistent figures (no timing asserted)."""

from __future__ import annotations

import numpy as np

from covidlesionseg.bench import bench_live, bench_pipeline, score_mismatches
from covidlesionseg.phantom import generate_phantom
from covidlesionseg.severity import SeverityCounter, compute_severity


def test_bench_live_runs_and_reports_figures():
    result = bench_live(shape=(40, 96, 96), strokes=8, stroke_radius_mm=6.0)  # raises when scores disagree
    assert result["shape"] == [40, 96, 96] and result["strokes"] == 8
    assert result["stroke_voxels"] > 0 and result["lesion_percent"] > 0
    assert result["median_ms"] >= 0 and result["full_pass_ms"] >= 0


def test_incremental_scores_equal_a_full_pass_on_every_score():
    phantom = generate_phantom(3, "CT3", shape=(32, 80, 80))
    lesions = phantom.lesions.copy()
    counter = SeverityCounter(phantom.ct, lesions, phantom.lungs, phantom.lobes, lobe_source="truth")
    rng = np.random.default_rng(0)
    for n in range(6):  # paint and erase boxes inside the lungs
        k, j, i = (int(rng.integers(4, s - 12)) for s in lesions.shape)
        box = (slice(k, k + 8), slice(j, j + 10), slice(i, i + 10))
        old = lesions[box] > 0
        stamp = phantom.lungs[box] > 0
        new = old | stamp if n % 2 == 0 else old & ~stamp
        counter.update(box, old, new)
        lesions[box] = np.where(new, np.maximum(lesions[box], 1), 0)
    full = compute_severity(phantom.ct, lesions, phantom.lungs, phantom.lobes, lobe_source="truth")
    assert score_mismatches(full, counter.severity()) == []
    assert full["LSS"] is not None and full["lobes"]["RUL"]["lss"] is not None


def test_score_mismatches_names_each_differing_score():
    a = {"PO": 10.0, "LSS": 7, "CT_category": "CT1", "lobes": {"RUL": {"percent": 3.0}}, "software": {"v": 1}}
    b = {"PO": 10.0 + 1e-9, "LSS": 8, "CT_category": "CT2", "lobes": {"RUL": {"percent": 3.5}}, "software": {"v": 2}}
    assert score_mismatches(a, a) == []
    assert score_mismatches(a, b) == ["CT_category: 'CT1' vs 'CT2'", "LSS: 7 vs 8", "lobes.RUL.percent: 3.0 vs 3.5"]


def test_bench_pipeline_reports_stages_of_a_real_segment_run():
    result = bench_pipeline(shape=(40, 96, 96))
    assert result["shape"] == [40, 96, 96] and result["engine"] == "classical"
    assert set(result["stages"]) >= {"lungs_s", "lesions_s", "scores_s"}
    assert result["peak_rss_mb"] > 0 and result["seconds"] > 0
