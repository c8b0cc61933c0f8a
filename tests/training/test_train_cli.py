"""``python train.py`` as a user runs it: a real Hydra app in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers.configs import TINY_DEMO
from tests.helpers.train_command import run_train, the_one_error_line
from tests.helpers.workplace import REPO_ROOT, U2NET_DIR, needs_shared


def test_missing_pretrained_weights_stop_with_one_line(tmp_path):
    result = run_train(
        "model.pretrained=true",
        "model.allow_download=false",
        f"paths.root_dir={tmp_path}",
        env={"TORCH_HOME": str(tmp_path / "torch_home")},
    )
    line = the_one_error_line(result)
    assert "resnet18-f37072fd.pth" in line and str(tmp_path / "torch_home" / "hub" / "checkpoints") in line


def test_resuming_from_a_missing_checkpoint_names_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", *TINY_DEMO, f"ckpt_path={tmp_path}/gone/last.ckpt", f"paths.root_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert f"error: checkpoint not found: ckpt_path={tmp_path}/gone/last.ckpt" in result.stderr
    assert "Traceback" not in result.stderr


@needs_shared(U2NET_DIR / "u2netp.onnx")
def test_train_py_with_rembg_prepares_the_cut_outs_itself(tmp_path):
    result = run_train(
        "background=rembg",
        "background.backend.model=u2netp",
        "background.progress=false",
        # 20 photos (u2netp takes about 0.5 s a photo on one core here), so each tenth is two whole photos.
        "data.demo.images_per_class=10",
        "data.max_classes=2",
        # The cut-outs and their progress lines are checked here, not the calibration report or label audit.
        "evaluate=false",
        "label_audit=none",
        f"paths.root_dir={tmp_path}",
        env={"U2NET_HOME": str(U2NET_DIR)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "demo" / "runs").iterdir()
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["background"]["method"] == "rembg u2netp"
    assert report["background"]["summary"]["done"] == 20 and report["background"]["summary"]["failed"] == 0
    assert len(list((tmp_path / "cache" / "prepared").rglob("*.png"))) == 20
    # No terminal and no bar: a line at each tenth of the 20 cut-outs, with the rate (progress_bars).
    tenths = re.findall(r"cutting out \(rembg u2netp[^)]*\): (\d+)/20 \((\d+) %\), [\d.]+/s", result.stdout)
    assert [int(percent) for _, percent in tenths] == list(range(10, 101, 10)), result.stdout[-3000:]


def test_train_py_with_a_missing_rembg_model_stops_with_one_line(tmp_path):
    result = run_train("background=rembg", f"paths.root_dir={tmp_path}", env={"U2NET_HOME": str(tmp_path / "models")})
    line = the_one_error_line(result)
    assert "u2net.onnx" in line and str(tmp_path / "models") in line
    assert not (tmp_path / "cache" / "prepared").exists()


def test_a_data_config_of_ones_own_that_leaves_out_keys_names_them_in_one_line(tmp_path):
    # The values live in conf/data/gemstones.yaml only, so a data config written from scratch must give them.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text(
        "defaults:\n  - /schema/data/typed@_here_\n  - _self_\n"
        "_target_: gem_lightning.data.datamodule.GemDataModule\n"
        "root: ${paths.cache_dir}/demo_gems\ncache_dir: ${paths.cache_dir}\nsplit: pooled\n"
    )
    typed = [sys.executable, "train.py", "--config-dir", str(tmp_path), "data=mine", "model.pretrained=false"]
    result = subprocess.run(typed, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    line = the_one_error_line(result)
    first_missing = "data.extra_roots, data.extra_roots_held_out, data.val_fraction, data.test_fraction"
    assert line.startswith(f"error: {first_missing}, data.split_seed,")
    assert "data.augment_on: no value given" in line and "data.root" not in line
