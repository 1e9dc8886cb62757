"""Render the README's pictures: the app in Debian's Chromium, and accuracy by ROI size of the scene benchmark.

    .venv/bin/python docs/screenshots.py      # writes docs/images/app.png and docs/images/accuracy_by_size.png

The app's photo is drawn here (no third-party image is committed); the model is EfficientNet-Lite0 with its
real ImageNet weights (the lite0 extra). The plot is re-rendered from docs/context_scenes/results.md.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import timm
from PIL import Image, ImageDraw

from roi_attention.app import AppModel, build_app
from roi_attention.hub import convert_efficientnet_lite0
from roi_attention.metrics.report import plot_accuracy_by_size

DOCS = Path(__file__).resolve().parent
IMAGES = DOCS / "images"


def drawn_photo(folder: Path) -> tuple[Path, list[Path]]:
    """A 640x480 still life drawn with PIL (a table, a ball, a mug) and masks of the ball and the mug."""
    photo = Image.new("RGB", (640, 480), (170, 200, 230))
    draw = ImageDraw.Draw(photo)
    draw.rectangle((0, 300, 640, 480), fill=(120, 80, 45))
    for x in range(0, 640, 40):
        draw.line((x, 300, x + 60, 480), fill=(100, 65, 35), width=3)
    masks = []
    for shape, box, colour in (
        ("ellipse", (90, 190, 250, 350), (220, 40, 30)),
        ("rectangle", (380, 170, 500, 330), (240, 240, 235)),
    ):
        getattr(draw, shape)(box, fill=colour, outline=(40, 40, 40), width=3)
        mask = Image.new("L", photo.size, 0)
        getattr(ImageDraw.Draw(mask), shape)(box, fill=255)
        if shape == "rectangle":
            draw.arc((470, 200, 540, 290), 270, 90, fill=(240, 240, 235), width=14)
            ImageDraw.Draw(mask).arc((470, 200, 540, 290), 270, 90, fill=255, width=14)
        masks.append(folder / f"mask_{len(masks)}.png")
        mask.save(masks[-1])
    photo.save(folder / "photo.png")
    return folder / "photo.png", masks


def app_screenshot(out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = Path(tempfile.mkdtemp())
    photo, masks = drawn_photo(folder)
    weights = str(convert_efficientnet_lite0())
    names = ("roi_tf_efficientnet_lite0_add_l1", "roi_tf_efficientnet_lite0_crop")
    models = {
        n: AppModel(
            timm.create_model(n, pretrained=True, pretrained_cfg_overlay=dict(file=weights)).eval(), "ImageNet-1k"
        )
        for n in names
    }
    app = build_app(models, examples_dir=folder / "examples")
    app.launch(server_port=7899, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        browser.get("http://127.0.0.1:7899/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
        time.sleep(2)
        browser.find_element(By.CSS_SELECTOR, "#masks input[type=file]").send_keys("\n".join(str(m) for m in masks))
        time.sleep(2)
        browser.find_element(By.CSS_SELECTOR, "#models input").click()  # add the second model: side by side
        browser.find_element(By.XPATH, f"//*[@role='option' and contains(., '{names[1]}')]").click()
        browser.find_element(By.CSS_SELECTOR, "#go").click()
        wait.until(lambda b: "Region 2" in b.find_element(By.CSS_SELECTOR, "#answers").text)
        time.sleep(2)
        browser.save_screenshot(str(out))
    finally:
        browser.quit()
        app.close()


def results_from_markdown(path: Path) -> dict:
    """The per-bin rows of results.md's two accuracy tables, as ``plot_accuracy_by_size`` reads results.json."""
    text = path.read_text()
    models: dict[str, dict] = {}
    for key, title in (("mean_class_accuracy", "Mean accuracy per class"), ("pooled_accuracy", "Pooled accuracy")):
        table = text.split(f"**{title}**", 1)[1].split("\n\n", 2)[1]
        rows = [line.strip("|").split("|") for line in table.splitlines()]
        names = [cell.strip(" `") for cell in rows[0][1:]]
        for row in rows[2:]:
            bin_name = row[0].strip()
            if bin_name.startswith("**"):
                continue
            for name, cell in zip(names, row[1:], strict=True):
                value, count = re.match(r"\s*([\d.]+)% \(n=(\d+)\)", cell).groups()
                bins = models.setdefault(name, {"metrics": {"size_bins": []}})["metrics"]["size_bins"]
                entry = next((b for b in bins if b["bin"] == bin_name), None)
                if entry is None:
                    entry = dict(bin=bin_name, num_regions=int(count))
                    bins.append(entry)
                entry[key] = float(value) / 100
    return {"models": models}


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    plot_accuracy_by_size(
        results_from_markdown(DOCS / "context_scenes" / "results.md"), IMAGES / "accuracy_by_size.png"
    )
    app_screenshot(IMAGES / "app.png")
    print(f"wrote {IMAGES / 'app.png'} and {IMAGES / 'accuracy_by_size.png'}")
