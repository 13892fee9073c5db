"""Jobs through the whole service in-process: submit, follow, fetch, cancel, ownership."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from imagegen.errors import RateLimited
from imagegen.schemas import MAX_PREVIEWS
from imagegen.serving.work_limit import WorkRateLimit
from tests.conftest import OTHER_AUTH

# Long enough on two CPU cores (about 3 s with sd-tiny) to be cancelled while it runs.
LONG = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 100}


def submit(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/jobs", json={"prompt": "a red apple", **fields})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == body["links"]["self"] == f"/jobs/{body['id']}"
    return body


def wait_for(client: TestClient, job_id: str, *statuses: str, within_s: float = 60) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def events(client: TestClient, job_id: str, **headers: str) -> list[dict[str, Any]]:
    """The job's SSE stream, parsed frame by frame (it ends after the terminal event)."""
    response = client.get(f"/jobs/{job_id}/events?preview=true", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        frames.append(fields)
    return frames


def test_a_job_answers_202_then_succeeds_with_the_image_of_the_sync_api(
    client: TestClient,
) -> None:
    accepted = submit(client, seed=21, num_inference_steps=3)
    assert accepted["status"] == "queued" and accepted["queue_position"] >= 0
    job = wait_for(client, accepted["id"], "succeeded")
    assert job["progress"]["fraction"] == 1.0
    assert job["parameters"]["seed"] == 21
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    result = client.get(accepted["links"]["result"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/png"
    assert result.headers["x-seed"] == "21"
    sync = client.post(
        "/generate/image", json={"prompt": "a red apple", "seed": 21, "num_inference_steps": 3}
    )
    assert result.content == sync.content


def test_several_images_come_back_as_the_json_of_generate_images(client: TestClient) -> None:
    accepted = submit(client, seed=3, num_images=2, num_inference_steps=2)
    wait_for(client, accepted["id"], "succeeded")
    body = client.get(accepted["links"]["result"]).json()
    assert [image["seed"] for image in body["images"]] == [3, 4]


def test_the_event_stream_has_every_step_then_the_end(client: TestClient) -> None:
    accepted = submit(client, num_inference_steps=5, scheduler="euler")
    frames = events(client, accepted["id"])
    names = [frame["event"] for frame in frames]
    assert names[0] == "queued"
    assert names[-1] == "succeeded"
    assert [int(frame["id"]) for frame in frames] == list(range(1, len(frames) + 1))
    steps = [json.loads(frame["data"])["step"] for frame in frames if frame["event"] == "progress"]
    assert steps == [0, 1, 2, 3, 4, 5]  # every denoising step, in order


def test_previews_are_small_pngs_only_when_asked_for(client: TestClient) -> None:
    accepted = submit(client, num_inference_steps=2, scheduler="euler", preview=True)
    wait_for(client, accepted["id"], "succeeded")
    with_previews = [json.loads(f["data"]) for f in events(client, accepted["id"])]
    previews = [data["preview"] for data in with_previews if "preview" in data]
    assert previews
    image = Image.open(io.BytesIO(base64.b64decode(previews[-1])))
    assert image.format == "PNG" and image.size == (8, 8)  # a 64x64 image's latent size
    plain = client.get(f"/jobs/{accepted['id']}/events").text
    assert "preview" not in plain


def test_a_job_that_did_not_ask_keeps_no_preview_and_one_that_did_a_bounded_number(
    client: TestClient,
) -> None:
    """Was: every job's event log held a preview per step, asked for or not."""
    unasked = submit(client, num_inference_steps=4, scheduler="euler")
    many = submit(client, num_inference_steps=40, scheduler="euler", preview=True)
    for job in (unasked, many):
        wait_for(client, job["id"], "succeeded")
    assert not any("preview" in f["data"] for f in events(client, unasked["id"]))
    kept = [json.loads(f["data"]) for f in events(client, many["id"]) if "preview" in f["data"]]
    assert 2 <= len(kept) <= MAX_PREVIEWS + 1  # step 0, every third step, the last
    assert kept[-1]["step"] == 40


def test_last_event_id_resumes_after_that_event(client: TestClient) -> None:
    accepted = submit(client, num_inference_steps=3, scheduler="euler")
    wait_for(client, accepted["id"], "succeeded")
    everything = events(client, accepted["id"])
    resumed = events(client, accepted["id"], **{"Last-Event-ID": "2"})
    assert resumed == everything[2:]


def test_a_running_job_is_cancelled_within_a_step_and_the_model_is_free(
    client: TestClient,
) -> None:
    accepted = submit(client, **LONG)
    running = wait_for(client, accepted["id"], "running")
    while client.get(f"/jobs/{accepted['id']}").json()["progress"]["step"] < 2:
        time.sleep(0.02)
    cancelled = client.delete(f"/jobs/{accepted['id']}")
    assert cancelled.status_code == 200
    job = cancelled.json()
    assert job["status"] == "cancelled" and job["error"] == "cancelled by its client"
    stopped_at = job["progress"]["step"]
    assert running["progress"]["steps"] > stopped_at
    # The pipeline stopped: the next job runs at once and the cancelled one never moves on.
    after = submit(client, num_inference_steps=2)
    assert after["queue_position"] == 0
    wait_for(client, after["id"], "succeeded")
    assert client.get(f"/jobs/{accepted['id']}").json()["progress"]["step"] == stopped_at
    assert client.get(f"/jobs/{accepted['id']}/result").status_code == 409
    assert client.delete(f"/jobs/{accepted['id']}").status_code == 409


def test_a_finished_job_cannot_be_cancelled(client: TestClient) -> None:
    accepted = submit(client, num_inference_steps=1)
    wait_for(client, accepted["id"], "succeeded")
    response = client.delete(f"/jobs/{accepted['id']}")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["error"]


def test_a_result_before_the_end_is_a_409(client: TestClient) -> None:
    accepted = submit(client, **LONG)
    response = client.get(accepted["links"]["result"])
    assert response.status_code == 409
    assert "once it has succeeded" in response.json()["error"]
    client.delete(accepted["links"]["self"])


@pytest.mark.parametrize("suffix", ["", "/events", "/result"])
def test_another_key_sees_no_job(client: TestClient, suffix: str) -> None:
    accepted = submit(client, num_inference_steps=1)
    response = client.get(f"/jobs/{accepted['id']}{suffix}", headers=OTHER_AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == f"There is no job {accepted['id']}."
    assert client.delete(f"/jobs/{accepted['id']}", headers=OTHER_AUTH).status_code == 404
    assert client.get(f"/jobs/{accepted['id']}{suffix}").status_code != 404


def test_an_unknown_job_is_a_404(client: TestClient) -> None:
    response = client.get("/jobs/0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/jobs", "/generate/image", "/generate/images"])
def test_work_over_the_budget_is_a_400_saying_how_to_fit(client: TestClient, path: str) -> None:
    response = client.post(
        path,
        json={"prompt": "big", "width": 2048, "height": 2048, "num_inference_steps": 150},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "1262.5 megapixel-steps" in error and "limit of 16 per request" in error
    assert "`num_inference_steps` up to 1 fits" in error


def test_a_bad_job_field_is_a_400_naming_it(client: TestClient) -> None:
    response = client.post("/jobs", json={"prompt": "a", "width": 65})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "`width` must be a multiple of 8, but is 65."
    assert body["detail"][0]["loc"] == ["width"]


def test_a_job_refused_by_the_model_names_the_field_in_its_view_and_event(
    client: TestClient,
) -> None:
    # The token count is known only where the tokenizer is: the job is accepted, then fails.
    job = submit(client, prompt="a red apple " * 40)
    view = wait_for(client, job["id"], "failed")
    assert view["error"].startswith("`prompt` must be at most 77 tokens")
    assert view["error_field"] == "prompt"
    last = events(client, job["id"])[-1]
    assert last["event"] == "failed" and json.loads(last["data"])["error_field"] == "prompt"


def test_models_shows_the_work_budget(client: TestClient) -> None:
    (model,) = client.get("/models").json()
    assert model["max_request_work"] == 16.0  # the CPU default


def test_the_work_rate_limit_charges_by_megapixel_steps() -> None:
    async def scenario() -> None:
        limit = WorkRateLimit("1/minute", "memory://")
        await limit.charge("key:a", 0.6)
        await limit.charge("key:b", 0.6)  # each client has its own window
        with pytest.raises(RateLimited) as refused:
            await limit.charge("key:a", 0.6)
        assert refused.value.status_code == 429
        assert int(refused.value.headers["Retry-After"]) >= 1
        assert "0.60 megapixel-steps would pass the work limit of 1/minute" in refused.value.message
        assert "(0.40 left in this window)" in refused.value.message

    asyncio.run(scenario())
