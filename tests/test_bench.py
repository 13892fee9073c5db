"""The benchmarks run (in a quick mode); their numbers are reported, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench import (
    batching,
    caching,
    controls,
    demo_model,
    edits,
    encoding,
    gpu,
    jobs,
    loras,
    middleware_overhead,
    serving,
    upscalers,
    work,
)


def test_middleware_overhead_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    middleware_overhead.main(["--requests", "20", "--rounds", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["requests_per_round"] == 20
    assert result["bare_us_median"] > 0 and result["stack_us_median"] > 0


def test_demo_model_benchmark_runs_and_draws_its_grid(tmp_path: Path) -> None:
    out, grid = tmp_path / "demo.json", tmp_path / "grid.png"
    demo_model.main(["--quick", "--json", str(out), "--grid", str(grid)])
    result = json.loads(out.read_text())
    assert result["model"].startswith("sd-shapes:v1-")
    assert result["seconds_per_image_64x64_20_steps"] > 0
    assert set(result["quality"]) == {"1.0", str(result["default_guidance_scale"]), "7.0"}
    for row in result["quality"].values():
        assert row["images"] == 12
        assert 0 <= row["background_right"] <= 1
    assert Image.open(grid).size == (8 * 128, 3 * 160)


@pytest.mark.e2e
def test_edits_benchmark_measures_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "edits.json"
    edits.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert list(result["modes"]) == ["text-to-image", "image-to-image", "inpainting"]
    steps_run = [row["steps_run"] for row in result["modes"].values()]
    assert steps_run == [4, 2, 4]  # image-to-image at strength 0.5 runs half the steps
    assert all(row["s_per_image"] > 0 and row["rss_mib"] > 0 for row in result["modes"].values())


def test_lora_benchmark_measures_first_use_and_switches(tmp_path: Path) -> None:
    out = tmp_path / "loras.json"
    loras.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    # Its two built from code, and any other test stored before it.
    assert {"sd-tiny-style", "sd-tiny-tint"} <= {tag.split(":")[0] for tag in result["adapters"]}
    assert result["first_use_ms"] > 0 and result["cached_switch_ms"] > 0
    assert result["image_with_one_ms"] > 0 and result["image_without_ms"] > 0


def test_caching_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "caching.json"
    caching.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [m["model"] for m in result["models"]] == ["sd-shapes", "sd-tiny"]
    for row in result["models"]:
        assert row["method"] == "pyramid-attention-broadcast"
        assert row["uncached_s"] > 0 and row["cached_s"] > 0 and row["mean_abs_difference"] >= 0
    read_back = result["models"][0]["read_back"]
    assert read_back["cached"]["images"] == read_back["uncached"]["images"] > 0


def test_encoding_benchmark_compares_the_service_png_with_pillows_defaults(tmp_path: Path) -> None:
    out = tmp_path / "encoding.json"
    encoding.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [row["image"] for row in result["rows"]] == ["sd-tiny 64x64", "sd-shapes 64x64"]
    for row in result["rows"]:
        assert list(row["encoders"]) == list(encoding.ENCODERS)
        assert all(e["ms"] > 0 and e["bytes"] > 0 for e in row["encoders"].values())


def test_serving_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    serving.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["quick"] is True
    for key in ("baseline_p50_ms", "service_p50_ms", "bare_pipeline_p50_ms"):
        assert result[key] > 0
    assert result["service_rss_after_requests_mib"] > 0
    # Interleaved: one round of three request/bare-call pairs each way (each side on quiet
    # cores; back to back), with its paired difference.
    for rounds, overhead in (
        ("rounds", "overhead_ms"),
        ("back_to_back_rounds", "back_to_back_overhead_ms"),
    ):
        (only_round,) = result[rounds]
        assert only_round["service_p50_ms"] > 0 and only_round["bare_p50_ms"] > 0
        assert result[overhead]["median"] == only_round["paired_difference_ms"]
    # Every stage of a request read from its Server-Timing, and the lone client's requests.
    assert len(result["stages_ms"]) == len(serving.STAGES) + 3
    stages = result["stages_ms"]
    assert stages["pipeline: denoising"] > 0
    assert next(ms for stage, ms in stages.items() if stage.startswith("hop both ways")) > 0
    assert result["client"] == "http.client"
    outside = result["outside_pipeline"]
    assert outside["service_ms"] > outside["bare_ms"] > 0
    # A generation costs more outside its pipeline than a request with no work at all.
    assert outside["service_ms"] > outside["empty_request_ms"] > 0
    assert outside["floor_app_ms"] > 0  # the same request to an app that does nothing
    assert [pair["request"] for pair in result["lone_client"]] == [1, 2, 3]


@pytest.mark.e2e
def test_batching_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "batching.json"
    batching.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["quick"] is True
    for setting in ("off", "on"):
        assert set(result[setting]) == {"1", "4"}
        assert all(level["images_per_s"] > 0 for level in result[setting].values())


@pytest.mark.slow
def test_gpu_benchmark_runs_in_its_quick_mode_on_any_device(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    gpu.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["switches"]) == set(gpu.QUICK_SWITCHES)
    for rows in result["switches"].values():
        assert [(row["steps"], row["batch"]) for row in rows] == [(3, 1), (3, 2)]
        assert all(row["it_per_s"] > 0 and row["s_per_image"] > 0 for row in rows)


@pytest.mark.e2e
@pytest.mark.slow
def test_jobs_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "jobs.json"
    jobs.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["cancel_by_delete"]["p50_ms"] > 0
    for size in result["throughput_8_clients"].values():
        assert size["jobs_images_per_s"] > 0 and size["sync_images_per_s"] > 0
    assert set(result["status_p50_ms"]) == {"memory", "redis"}
    assert result["progress"]["preview_ms_per_event"] > 0


def test_work_benchmark_compares_time_with_the_charge(tmp_path: Path) -> None:
    out = tmp_path / "work.json"
    work.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["rows"]) >= {"euler, guided", "heun, guided", "inpainting, strength 0.75"}
    heun, euler = result["rows"]["heun, guided"], result["rows"]["euler, guided"]
    assert heun["work"] > euler["work"]  # charged for its second evaluation per step
    assert result["rows"]["euler, guided, 1 ControlNet"]["work"] > euler["work"]
    assert result["spread"] >= 1 and result["parts_in_evaluations"]["evaluation"] == 1


def test_upscalers_benchmark_times_hires_fix_and_each_upscaler(tmp_path: Path) -> None:
    out = tmp_path / "upscalers.json"
    upscalers.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["generations"]) == {
        "plain", "hires, Latent", "hires, Lanczos", "hires, esrgan-tiny-x4"
    }  # fmt: skip
    assert set(result["upscalers"]) == {"Lanczos", "esrgan-tiny-x4"}
    assert result["network_work_per_megapixel"] > 0


def test_controls_benchmark_measures_placement_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "controls.json"
    controls.main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["controls"]) == {"silhouette", "outline", "none"}
    assert all(0 <= row["iou"] <= 1 for row in result["controls"].values())
    held = result["memory"]
    assert held["all_pipelines_mb"] == pytest.approx(
        held["model_mb"] + held["controlnet_mb"], abs=0.02
    )
