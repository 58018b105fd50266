"""The GPU path's decode and preprocessing, proven on CPU tensors with the tiny model.

``search.decode`` must give the embeddings open_clip's own PIL transform gives,
and every file the batched decoder should not take must come back for the PIL path.
"""

import asyncio
import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import image_transform
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from bench.fakes.scenes import ALL_SCENES, jpeg_bytes, render
from search.clip import ClipEncoder
from search.config import Settings
from search.decode import batch_decodable, decode_image, jpeg_info, preprocess
from search.embed import Embedder
from search.service import SearchService
from search.sources import rank_url

TINY_CLIP = Path(__file__).parent / "fixtures" / "tiny-clip"
# torchvision 0.29 warns on every decode_jpeg call; the call is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
SIZES = [(340, 227), (227, 340), (340, 340), (340, 191), (640, 427), (96, 64), (1000, 700)]
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD


def scene(k: int, width: int = 340, height: int = 227) -> Image.Image:
    return render(ALL_SCENES[(k * 11) % len(ALL_SCENES)], k, width, height)


def scene_jpegs() -> list[bytes]:
    return [jpeg_bytes(scene(k, w, h), 85) for k, (w, h) in enumerate(SIZES)]


def decoded(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                       mode=ImageReadMode.RGB)


def saved(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{TINY_CLIP}")
    return model.eval(), transform


@pytest.fixture
async def encoder():
    async with ClipEncoder(f"local-dir:{TINY_CLIP}", None, "cpu", backend="torch") as enc:
        yield enc


@pytest.fixture
def jpegs(encoder):
    """The GPU strategy, run on CPU tensors."""
    return Embedder(encoder, variant=340, on_device=True)


def test_tensor_preprocessing_gives_the_embeddings_of_open_clips_pil_transform(tiny):
    model, transform = tiny
    cfg = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    datas = scene_jpegs()
    by_pil = torch.stack([transform(Image.open(io.BytesIO(d))) for d in datas])
    by_tensor = preprocess([decoded(d) for d in datas], size=size, mean=cfg["mean"],
                           std=cfg["std"], interpolation=cfg["interpolation"],
                           resize_mode=cfg["resize_mode"])
    assert by_tensor.shape == by_pil.shape
    with torch.inference_mode():
        a = F.normalize(model.encode_image(by_pil), dim=-1)
        b = F.normalize(model.encode_image(by_tensor), dim=-1)
    cosines = (a * b).sum(-1)
    assert float(cosines.min()) >= 0.99, cosines.tolist()


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [(64, 64), (224, 224), (96, 64)])
def test_every_resize_mode_matches_open_clips_pixels(resize_mode, size):
    if resize_mode == "shortest" and size[0] != size[1]:
        transform = image_transform(size, False, MEAN, STD, resize_mode=resize_mode)
    else:
        transform = image_transform(size if size[0] != size[1] else size[0], False, MEAN, STD,
                                    resize_mode=resize_mode)
    datas = scene_jpegs()
    by_pil = torch.stack([transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in datas])
    by_tensor = preprocess([decoded(d) for d in datas], size=size, mean=MEAN, std=STD,
                           resize_mode=resize_mode)
    assert by_tensor.shape == by_pil.shape
    # One level of 8 bits is 1/255/std ≈ 0.015 here; we are well inside it on average.
    assert float((by_tensor - by_pil).abs().mean()) < 0.01


def test_grey_jpegs_become_three_channels_and_an_empty_list_an_empty_batch():
    grey = decode_jpeg(torch.frombuffer(bytearray(saved(scene(1).convert("L"), "JPEG")),
                                        dtype=torch.uint8))
    assert grey.shape[0] == 1
    out = preprocess([grey], size=(64, 64), mean=MEAN, std=STD)
    assert out.shape == (1, 3, 64, 64)
    levels = out[0] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(levels[0], levels[1], atol=1e-5)
    assert torch.allclose(levels[0], levels[2], atol=1e-5)
    assert preprocess([], size=(64, 64), mean=MEAN, std=STD).shape == (0, 3, 64, 64)


def test_the_header_screen_sends_odd_files_to_pil():
    img = scene(2, 120, 80)
    plain = saved(img, "JPEG", quality=85)
    info = jpeg_info(plain)
    assert (info.width, info.height, info.components) == (120, 80, 3)
    assert batch_decodable(info)
    assert batch_decodable(jpeg_info(saved(img, "JPEG", progressive=True)))
    assert batch_decodable(jpeg_info(saved(img.convert("L"), "JPEG")))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: nvjpeg would not apply it
    assert jpeg_info(saved(img, "JPEG", exif=exif)).orientation == 6
    assert not batch_decodable(jpeg_info(saved(img, "JPEG", exif=exif)))
    assert not batch_decodable(jpeg_info(saved(img.convert("CMYK"), "JPEG")))
    assert not batch_decodable(jpeg_info(plain[:len(plain) // 2]))  # truncated
    assert not batch_decodable(info, max_pixels=120 * 80 - 1)  # a bomb, by its header
    assert jpeg_info(saved(img, "PNG")) is None
    assert jpeg_info(b"\xff\xd8" + bytes(range(256)) * 4) is None
    assert jpeg_info(b"") is None


async def test_encode_jpegs_gives_the_pil_paths_vectors_and_hands_back_what_it_refuses(
        encoder, jpegs):
    img = scene(3, 200, 150)
    plain = [jpeg_bytes(scene(k, w, h), 85) for k, (w, h) in enumerate(SIZES[:3])]
    truncated = plain[0][:len(plain[0]) // 2]
    cut = plain[1].index(b"\xff\xda")
    no_scan = plain[1][:cut] + b"\xff\xd9"  # passes the screen; the decoder refuses it
    exif = Image.Exif()
    exif[0x0112] = 3
    batch = [plain[0], saved(img, "PNG"), truncated, plain[1], saved(img.convert("CMYK"), "JPEG"),
             saved(img, "JPEG", exif=exif), no_scan, b"\xff\xd8garbage", plain[2]]
    result = await jpegs.encode_jpegs(batch)
    assert result.encoded == [0, 3, 8]
    assert result.failed == [1, 2, 4, 5, 6, 7]
    assert result.vectors.shape[0] == 3
    for row, index in enumerate(result.encoded):
        pixels = encoder.preprocess(decode_image(batch[index], min_side=min(encoder.image_size)))
        alone, _ = await encoder.encode_images(pixels[None])
        assert float(alone[0] @ result.vectors[row]) >= 0.99
    nothing = await jpegs.encode_jpegs([truncated])
    assert nothing.encoded == [] and nothing.failed == [0] and len(nothing.vectors) == 0


async def test_jpegs_in_chunks_keep_their_indices(encoder, jpegs, monkeypatch):
    monkeypatch.setattr(encoder, "max_batch", 2)
    datas = scene_jpegs()[:5]
    datas.insert(3, b"not a jpeg")
    result = await jpegs.encode_jpegs(datas)
    assert result.encoded == [0, 1, 2, 4, 5] and result.failed == [3]
    whole = await jpegs.encode_jpegs([datas[i] for i in result.encoded])
    np.testing.assert_allclose(result.vectors, whole.vectors, atol=1e-5)


async def test_the_service_on_the_jpeg_path_ranks_as_the_pil_path_does(
        fake_pixabay, tmp_path, monkeypatch):
    ids = [e.id for e in fake_pixabay.entries
           if e.scene.shape == "hexagon" and e.scene.colour == "red"
           and e.id not in fake_pixabay.unsafe_ids]
    faults = dict(zip(ids, ["rgba", "gif", "cmyk", "truncated", "garbage"], strict=False))
    for image_id, kind in faults.items():
        fake_pixabay.set_image_fault(image_id, kind)
    settings = Settings.from_mapping({
        "PIXABAY_API_URL": fake_pixabay.api_url, "PIXABAY_API_KEY": fake_pixabay.key,
        "IMAGE_HOSTS": "127.0.0.1", "CLIP_MODEL": f"local-dir:{TINY_CLIP}",
        "CLIP_DEVICE": "cpu", "DATA_DIR": str(tmp_path / "pil")})
    phrase = "a red hexagon on snow"
    async with ClipEncoder(settings.clip_model, None, "cpu", backend="torch") as encoder:
        async with SearchService.open(settings, encoder=encoder) as svc:
            by_pil = await svc.find("hexagon red", phrase, candidates=len(ids))
        assert encoder.stats.jpegs_decoded == 0
        async with SearchService.open(settings.replace(data_dir=tmp_path / "jpeg"),
                                      encoder=encoder) as svc:
            # As on CUDA: the JPEGs go to the encoder as bytes, decoded there in batches.
            svc.embedder.on_device = True
            svc.embedder.gpu_batch = 8
            decoded = encoder.stats.jpegs_decoded
            by_jpeg = await svc.find("hexagon red", phrase, candidates=len(ids))
    assert by_jpeg.skipped == by_pil.skipped
    assert sum(by_pil.skipped.values()) == 2 and by_pil.skipped["truncated"] == 1
    assert set(by_jpeg.ranking.ids) == set(by_pil.ranking.ids)
    assert {i for i, k in faults.items() if k in ("rgba", "gif", "cmyk")} <= set(
        by_jpeg.ranking.ids)
    assert encoder.stats.jpegs_decoded - decoded == len(ids) - len(faults)
    pil_scores = dict(zip(by_pil.ranking.ids, by_pil.ranking.scores, strict=True))
    for image_id, score in zip(by_jpeg.ranking.ids, by_jpeg.ranking.scores, strict=True):
        assert score == pytest.approx(pil_scores[image_id], abs=0.02)


async def test_bytes_already_downloaded_are_decoded_in_one_call_and_trickling_ones_in_batches(
        settings, fake_pixabay):
    from bench.run import MemoryFetcher

    # max_batch as on CUDA, where one call can take every candidate
    async with ClipEncoder(settings.clip_model, None, "cpu", backend="torch",
                           max_batch=256) as encoder:
        async with SearchService.open(settings, encoder=encoder) as svc:
            svc.embedder.on_device = True
            hits = (await svc.sources["pixabay"].candidates("circle", None, 100)).hits
            urls = [rank_url(h, settings.image_variant) for h in hits]
            blobs = dict(zip(urls, await asyncio.gather(*map(svc.fetcher.fetch, urls)),
                             strict=True))
            memory = MemoryFetcher(blobs, svc.fetcher.session, settings.image_hosts)
            calls = encoder.stats.stages
            before = calls["decode:batched"]
            at_once = await svc.embedder.embed(hits, memory)
            assert calls["decode:batched"] - before == 1
            fake_pixabay.latency = 0.05  # arrivals in waves of the downloads in flight
            before = calls["decode:batched"]
            trickled = await svc.embedder.embed(hits, svc.fetcher)
            assert calls["decode:batched"] - before >= len(hits) // svc.embedder.gpu_batch
    assert set(at_once.vectors) == set(trickled.vectors) == {h.id for h in hits}
    for image_id, vector in at_once.vectors.items():
        np.testing.assert_allclose(vector, trickled.vectors[image_id], atol=1e-5)
