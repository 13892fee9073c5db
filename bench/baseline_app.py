"""The anti-pattern this service replaces: a web handler that loads the pipeline per request.

Same model files, same parameters and the same response as the service's /generate/image;
only the load moves into the handler. Served by bench/serving.py with uvicorn:

    IMAGEGEN_BASELINE_MODEL_PATH=<stored model dir> uvicorn bench.baseline_app:app
"""

from __future__ import annotations

import io
import os

import torch
from diffusers import AutoPipelineForText2Image
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

app = FastAPI()


class Body(BaseModel):
    prompt: str
    width: int
    height: int
    num_inference_steps: int
    seed: int


@app.post("/generate/image")
def generate(body: Body) -> Response:
    pipeline = AutoPipelineForText2Image.from_pretrained(
        os.environ["IMAGEGEN_BASELINE_MODEL_PATH"], dtype=torch.float32
    )
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        prompt=body.prompt,
        width=body.width,
        height=body.height,
        num_inference_steps=body.num_inference_steps,
        generator=torch.Generator("cpu").manual_seed(body.seed),
    ).images[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")
