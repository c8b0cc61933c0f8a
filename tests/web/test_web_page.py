"""The identification page end to end: the real command serves it, headless Chromium uploads a gem photo.

Chromium and ChromeDriver are Debian's (``apt-get install chromium chromium-driver``); the test skips with
that reason where they are missing, except under CI, where .ci/run installs them and a skip would hide a
broken page.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gem_lightning.config.composition import compose_config
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.answers import answering_for
from gem_lightning.web.page import where_it_looked
from tests.helpers.workplace import GEMSTONES_DIR, REPO_ROOT, U2NET_DIR

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No sandbox as root in a container; no background networking, which this offline machine refuses.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_for_server(process: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the web command exited with {process.returncode}:\n{log.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"the page did not come up on port {port} within {timeout} s:\n{log.read_text()}")


def test_upload_a_gem_photo_and_see_the_cut_out_and_top_5(request, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # With ../shared: a model trained on rembg cut-outs and a real Kaggle photo, whose cut-out the page must
    # show on black. Without it (a user's clone): the plain demo model and a demo image.
    kaggle = GEMSTONES_DIR / "test" / "Amethyst" / "amethyst_18.jpg"
    with_shared = (U2NET_DIR / "u2netp.onnx").is_file() and kaggle.is_file()
    run = request.getfixturevalue("trained_rembg_run" if with_shared or os.environ.get("CI") else "trained_demo_run")
    photo = kaggle if with_shared or os.environ.get("CI") else run.datamodule.prepared.items[0].image_file
    port = _free_port()
    log = tmp_path / "web.log"
    command = [sys.executable, "-m", "gem_lightning.cli.web", f"ckpt={run.checkpoint}", f"port={port}"]
    my_source = tmp_path / "my_source"  # where the page keeps the photos the user labels
    command += [f"cache_dir={tmp_path / 'cache'}", f"save_to={my_source}"]
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
    browser = None
    try:
        _wait_for_server(server, port, log)
        browser = _browser()
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        assert "Identify a gemstone" in browser.page_source
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo))

        def bars(b):
            return b.find_elements(By.CSS_SELECTOR, "#top-classes .confidence-set")

        wait.until(lambda b: len(bars(b)) == 5)
        rows = [bar.text.split("\n") for bar in bars(browser)]
        names = [row[0] for row in rows]
        percents = [int(re.fullmatch(r"(\d+)%", row[-1]).group(1)) for row in rows]
        assert set(names) <= set(run.class_names) and len(set(names)) == 5
        assert percents == sorted(percents, reverse=True)
        headline = browser.find_element(By.CSS_SELECTOR, "#top-classes .output-class").text
        assert headline == names[0]
        # The answer in words, as predict words it for the same photo: the prediction set (the top class first)
        # and its coverage, or "not one of the classes I know" when the photo is far from all of them (a Kaggle
        # photo for a model of synthetic stones may well be).
        cfg = compose_config("web", [f"ckpt={run.checkpoint}", f"cache_dir={tmp_path / 'cache'}"])
        predictor = Predictor.from_command_config(cfg, progress=False)
        (prediction,), _ = predictor.predict_files([photo])
        answering = answering_for(predictor, cfg)
        (expected,) = answering.answers(prediction.probabilities[None], 5, prediction.features[None])
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#answer").text)
        answer = browser.find_element(By.CSS_SELECTOR, "#answer").text
        assert answer == expected.sentence() and names[0] in answer, answer
        assert answer.endswith("90% sure") if expected.known else answer.startswith("not one of the 10 classes")
        # The nearest training photos of the top 3 classes, two each, captioned with their class.
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#nearest img")) == 6)
        captions = browser.find_element(By.CSS_SELECTOR, "#nearest").text
        assert all(name in captions for name in names[:3]), captions
        # The stone as the model sees it, served by the page.
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#cut-out img"))
        source = browser.find_element(By.CSS_SELECTOR, "#cut-out img").get_attribute("src")
        assert source.startswith(f"http://127.0.0.1:{port}/")
        with urllib.request.urlopen(source, timeout=30) as response:
            shown = Image.open(io.BytesIO(response.read())).convert("RGB")
        size = int(run.datamodule.image_size)
        assert shown.size == (size, size)  # the model's own input, not the photo
        if run.datamodule.background is not None:
            # Background removed: the photo's corners are black in what the page shows.
            corners = [shown.getpixel(xy) for xy in ((0, 0), (shown.width - 1, 0), (0, shown.height - 1))]
            assert all(max(pixel) <= 8 for pixel in corners), corners
            original = Image.open(photo).convert("RGB")
            assert min(max(original.getpixel(xy)) for xy in ((0, 0), (original.width - 1, 0))) > 100  # grey there
        # Where it looked: the same view under the Grad-CAM map of the top class, as the page's function draws it.
        heat_source = browser.find_element(By.CSS_SELECTOR, "#heat-map img").get_attribute("src")
        with urllib.request.urlopen(heat_source, timeout=30) as response:
            heat = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16)
        view = predictor.model_view(prediction.model_input)
        expected_heat = where_it_looked(predictor, view, run.class_names.index(names[0]))
        assert heat.shape == view.shape and np.abs(heat - expected_heat).mean() < 1.0
        assert np.abs(heat - view).mean() > 5  # painted over, not the bare view
        # The user knows better: the photo kept under the class they choose, as a labelled photo for adapt.
        right_class = run.class_names[-1]
        browser.find_element(By.CSS_SELECTOR, "#right-class input").click()

        def option(b):
            shown = b.find_elements(By.CSS_SELECTOR, "#right-class li, ul.options li")
            return next((item for item in shown if item.text.strip() == right_class), False)

        wait.until(option).click()
        chosen = (By.CSS_SELECTOR, "#right-class input")
        wait.until(lambda b: b.find_element(*chosen).get_attribute("value") == right_class)
        browser.find_element(By.CSS_SELECTOR, "#save").click()
        wait.until(lambda b: "saved as" in b.find_element(By.CSS_SELECTOR, "#saved").text)
        (kept,) = (my_source / right_class).iterdir()
        assert kept.read_bytes() == Path(photo).read_bytes() and kept.name.startswith(Path(photo).stem)
        browser.find_element(By.CSS_SELECTOR, "#save").click()  # again: the same file, nothing new
        wait.until(lambda b: "already saved as" in b.find_element(By.CSS_SELECTOR, "#saved").text)
        assert [path.name for path in my_source.rglob("*") if path.is_file()] == [kept.name]
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def test_bad_uploads_say_why_and_a_busy_port_is_one_line(trained_demo_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    log = tmp_path / "web.log"
    command = [sys.executable, "-m", "gem_lightning.cli.web", f"ckpt={trained_demo_run.checkpoint}", f"port={port}"]
    command += [f"cache_dir={tmp_path / 'cache'}", "max_upload_mb=1"]
    # Gradio keeps uploads in its own temp folder, not the project's cache: put it where the test can look.
    uploads = tmp_path / "gradio"
    with log.open("w") as output:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_TEMP_DIR": str(uploads)},
        )
    browser = None
    try:
        _wait_for_server(server, port, log)
        # A second page on the same port: one line naming port=, before the model is loaded.
        busy = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert f"error: cannot serve on 127.0.0.1:{port}" in busy.stderr and "port=" in busy.stderr

        (tmp_path / "notes.jpg").write_text("these are my notes, not a photo\n")
        (tmp_path / "empty.png").write_bytes(b"")
        Image.new("RGB", (1200, 1200)).save(tmp_path / "big.bmp")  # 4.3 MB: over max_upload_mb=1
        Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 Mpx in a few kB: a decompression bomb
        browser = _browser()
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        cases = {
            "notes.jpg": "cannot use this file: cannot decode",
            "empty.png": "cannot use this file: empty file",
            "bomb.png": "cannot use this file: 9000x9000 px is over the limit",
            "big.bmp": "exceed the maximum allowed size of 1.0 Mb",
        }
        for name, message in cases.items():
            browser.refresh()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))
            browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(tmp_path / name))
            wait.until(lambda b, m=message: m.lower() in b.page_source.lower())
            assert "upstream Gradio app has raised an exception" not in browser.page_source
        # The upload refused for its size was not kept; one Gradio accepted (and the page refused) was, there.
        kept = [path.name for path in uploads.rglob("*") if path.is_file()]
        assert "notes.jpg" in kept and not [name for name in kept if name.startswith("big")], kept
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
