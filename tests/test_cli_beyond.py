"""python -m search beyond a phrase: --image, --source openverse, and the shared --grid."""

import json

from PIL import Image

from bench.fakes.scenes import Scene, jpeg_bytes, render
from tests.test_cli import cli


async def test_image_query_returns_blue_squares_first(fake_pixabay, tmp_path):
    query = tmp_path / "mine.jpg"
    query.write_bytes(jpeg_bytes(render(Scene("square", "blue", "grass"), 4242, 400, 300)))
    code, out, err = await cli(fake_pixabay, tmp_path, "square", "--image", str(query),
                               "--candidates", "200", "--top", "5", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["image"] is True and data["phrase"] == ""
    scenes = [fake_pixabay.truth[h["id"]] for h in data["hits"]]
    assert all((s.shape, s.colour) == ("square", "blue") for s in scenes), scenes


async def test_unreadable_query_image_is_one_line(fake_pixabay, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a picture")
    code, out, err = await cli(fake_pixabay, tmp_path, "square", "--image", str(bad))
    assert code == 2 and out == ""
    assert err == (f"error: --image {bad} is not a picture I can read; give a JPEG, PNG, GIF "
                   "or WebP file.\n")  # the CLI's words: no "attach", and before the model
    assert err.count("\n") == 1
    code, _, err = await cli(fake_pixabay, tmp_path, "square", "--image", str(tmp_path / "no"))
    assert code == 2 and err.startswith("error: Cannot read the image ")


async def test_openverse_needs_no_pixabay_key_and_credits_the_licence(
        fake_pixabay, fake_openverse, tmp_path):
    code, out, err = await cli(fake_pixabay, tmp_path, "circle", "a red circle on snow",
                               "--source", "openverse", "--candidates", "40", "--top", "3",
                               PIXABAY_API_KEY="", OPENVERSE_API_URL=fake_openverse.api_url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "id", "credit"]
    ids = [line.split()[2] for line in lines[1:4]]
    assert all(fake_openverse.truth[i].caption == "a red circle on snow" for i in ids), ids
    assert lines[1].split()[3] in ("CC", "CC0", "Public")  # the licence, then the creator
    assert lines[-1].startswith("Images from Openverse (https://openverse.org)")
    assert {q["page_size"] for q in fake_openverse.queries} == {"20"}
    assert fake_pixabay.api_requests == 0
    code, out, _ = await cli(fake_pixabay, tmp_path, "circle", "a red circle", "--json",
                             "--candidates", "40", SEARCH_SOURCE="openverse",
                             PIXABAY_API_KEY="", OPENVERSE_API_URL=fake_openverse.api_url)
    hit = json.loads(out)["hits"][0]
    assert {"license", "license_url", "provider"} <= set(hit)


async def test_openverse_grid_has_one_tile_per_hit(fake_pixabay, fake_openverse, tmp_path):
    grid = tmp_path / "sheet.png"
    code, out, err = await cli(fake_pixabay, tmp_path, "star", "a yellow star", "--source",
                               "openverse", "--candidates", "20", "--top", "4", "--grid",
                               str(grid), OPENVERSE_API_URL=fake_openverse.api_url)
    assert code == 0, err
    with Image.open(grid) as sheet:
        assert sheet.size == (4 * 256, 256)
        # every tile shows its picture: none is the empty grey of a failed download
        assert all(sheet.getpixel((x * 256 + 128, 128)) != (32, 32, 32) for x in range(4))
