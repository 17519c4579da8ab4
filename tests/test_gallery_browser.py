"""The naming gallery in a real browser: headless Chromium opens the page, two clusters are
named through its form, and the saved names.json is read back by protoseg dictionary."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.browser import chromium, missing_browser
from protoseg.callbacks.prototype_gallery import PrototypeGalleryWriter
from protoseg.dictionary import main as dictionary_main
from protoseg.io.class_maps import TissueClasses
from protoseg.io.prototype_files import EmbedderSettings, load_clusters, load_dictionary, load_names


def wait_for(path: Path, seconds: float = 30.0) -> Path:
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was not saved within {seconds} s")
        time.sleep(0.2)
    time.sleep(0.3)  # Chromium renames its .crdownload into place; let it finish
    return path


def test_name_two_clusters_in_chromium(tmp_path: Path) -> None:
    reason = missing_browser()
    if reason is not None:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    image = tmp_path / "patch.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(image)
    rng = np.random.default_rng(1)
    embeddings = np.concatenate([np.eye(3)[k] + rng.normal(0, 0.05, (8, 3)) for k in range(3)])
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype("f4")
    sources = [{"path": str(image), "x": 32, "y": 32, "size": 24, "slide": False}] * 24
    classes = TissueClasses(("tumor", "stroma", "normal"), background_code=3)
    settings = EmbedderSettings("protoseg.modules.prototypes.DenseEmbedder", {"window": 24})
    gallery_dir = tmp_path / "gallery"
    PrototypeGalleryWriter(gallery_dir, classes, settings, clusters=3, exemplars=4).write(
        embeddings, sources
    )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium(downloads)
    try:
        driver.get((gallery_dir / "gallery.html").resolve().as_uri())
        assert len(driver.find_elements(By.CSS_SELECTOR, "select.name")) == 3
        assert len(driver.find_elements(By.CSS_SELECTOR, ".cluster img")) == 12
        Select(driver.find_element(By.ID, "name-0")).select_by_value("stroma")
        Select(driver.find_element(By.ID, "name-2")).select_by_value("ignore")
        assert "2 of 3 clusters named" in driver.find_element(By.ID, "status").text
        driver.find_element(By.ID, "save").click()
        saved = wait_for(downloads / "names.json")
    finally:
        driver.quit()
    clusters = load_clusters(gallery_dir / "clusters.npz")
    assert load_names(saved, clusters) == {0: "stroma", 1: "ignore", 2: "ignore"}
    output = tmp_path / "dictionary.npz"
    assert (
        dictionary_main(
            [
                "--clusters",
                str(gallery_dir / "clusters.npz"),
                "--names",
                str(saved),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert load_dictionary(output).names == ["stroma"]
