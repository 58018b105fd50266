"""The start-up warm-up runs every stage a query runs, on the CPU path and on the GPU path
(batched JPEG decode and tensor preprocessing, run here on CPU tensors), so the first query
of a process pays no first-call cost. Stages are what the encoder counts as it runs them."""

import pytest

from search.clip import ClipEncoder
from search.service import SearchService

# torchvision 0.29 warns on every decode_jpeg call; the call is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.mark.parametrize("path", ["cpu", "gpu"])
async def test_the_warm_up_calls_every_stage_a_query_calls(settings, fake_pixabay, path):
    async with ClipEncoder(settings.clip_model, None, "cpu", backend="torch") as encoder:
        stages = encoder.stats.stages
        stages.clear()  # the load's own first passes are not the warm-up
        async with SearchService.open(settings, encoder=encoder) as svc:
            if path == "gpu":  # the strategy CUDA gets; the warm-up again, for it
                svc.embedder.on_device = True
                stages.clear()
                await svc.embedder.warm_up()
            warmed = dict(stages)
            assert fake_pixabay.api_requests == fake_pixabay.image_requests == 0
            stages.clear()
            result = await svc.find("circle", "a red circle on snow", candidates=60)
            queried = dict(stages)
    assert result.candidates == 60 and result.downloaded == 60
    expected = {"decode:pil", "normalise:levels", "encode:image", "encode:text"}
    if path == "gpu":
        expected = {"decode:batched", "preprocess:tensor", "encode:image", "encode:text"}
    assert expected <= set(queried), queried
    assert set(queried) <= set(warmed), (queried, warmed)
