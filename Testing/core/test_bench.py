"""The benchmarks run end to end on small generated CT and report consistent figures (no timing asserted)."""

from __future__ import annotations

from covidlesionseg.bench import bench_live, bench_pipeline


def test_bench_live_incremental_scores_match_a_full_pass():
    result = bench_live(shape=(40, 96, 96), strokes=8, stroke_radius_mm=6.0)
    assert result["shape"] == [40, 96, 96] and result["strokes"] == 8
    assert result["stroke_voxels"] > 0 and result["lesion_percent"] > 0
    assert result["median_ms"] >= 0 and result["full_pass_ms"] >= 0


def test_bench_pipeline_reports_stages_of_a_real_segment_run():
    result = bench_pipeline(shape=(40, 96, 96))
    assert result["shape"] == [40, 96, 96] and result["engine"] == "classical"
    assert set(result["stages"]) >= {"lungs_s", "lesions_s", "scores_s"}
    assert result["peak_rss_mb"] > 0 and result["seconds"] > 0
