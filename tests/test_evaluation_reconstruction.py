"""Tests for perchead/evaluation/reconstruction.py: the protocol, the billboard baseline and a 2-subject smoke evaluation."""

import json

import pytest
import torch

from perchead.geometry.cameras import orbit_cameras
from perchead.evaluation.reconstruction import (
    METHODS,
    PROTOCOLS,
    EvalConfig,
    billboard,
    extreme_pairs,
    main,
    markdown_table,
    novel_views,
)


def test_protocol_views():
    inp, targets = novel_views(3, 8, seed=0)
    assert -30 <= inp[0] <= 30 and -10 <= inp[1] <= 15
    assert len(targets) == 8 and all(-180 <= a < 180 and -15 <= e <= 30 for a, e in targets)
    assert (inp, targets) == novel_views(3, 8, seed=0)  # deterministic
    pairs = extreme_pairs(60.0)
    assert ((90.0, 0.0), (-90.0, 0.0)) in pairs and ((0.0, 60.0), (0.0, -60.0)) in pairs
    for (a_in, e_in), (a_t, e_t) in pairs:  # every pair is a flip
        assert (a_in, e_in) == (-a_t, -e_t) or (a_in == -a_t and e_in == e_t)
    with pytest.raises(ValueError, match="subjects"):
        EvalConfig(subjects=0)


def test_fixed_card_reproduces_input_at_input_camera_and_is_white_edge_on():
    image = torch.rand(1, 3, 32, 32)
    cams = orbit_cameras([30.0], [10.0], size=32)
    out = billboard(image, cams, cams, facing="input")  # [1, 1, 3, 32, 32]
    torch.testing.assert_close(out[0, 0], image[0], atol=1e-4, rtol=0)
    side = billboard(image, cams, orbit_cameras([120.0], [0.0], size=32), facing="input")  # nearly edge-on
    assert side.mean() > 0.9
    left, right = orbit_cameras([90.0], [0.0], size=32), orbit_cameras([-90.0], [0.0], size=32)
    unseen = billboard(image, left, right, facing="input")  # one-sided: invisible from behind
    torch.testing.assert_close(unseen, torch.ones(1, 1, 3, 32, 32))
    back = billboard(image, left, right, facing="input", two_sided=True)
    torch.testing.assert_close(back[0, 0], image[0].flip(-1), atol=1e-4, rtol=0)  # two-sided: mirrored


def test_billboard_faces_every_viewer():
    image = torch.rand(2, 3, 32, 32)
    inputs = orbit_cameras([90.0, 0.0], [0.0, 60.0], size=32)
    targets = orbit_cameras([-90.0, 170.0, 0.0, 45.0], [0.0, 20.0, -60.0, 5.0], size=32)  # 2 per input
    out = billboard(image, inputs, targets)  # [2, 2, 3, 32, 32]: the input picture, unmirrored, everywhere
    for b in range(2):
        for v in range(2):
            torch.testing.assert_close(out[b, v], image[b], atol=1e-4, rtol=0)
    far = orbit_cameras([-90.0], [0.0], size=32, radius=1.4)  # twice as far: the picture at half size
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(32, 32), mode="bilinear")
    small = billboard(smooth, inputs[:1], far)[0, 0]  # [3, 32, 32]
    half = torch.nn.functional.interpolate(smooth, size=(16, 16), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(small[:, 8:24, 8:24], half, atol=0.03, rtol=0)
    assert (small[:, :4] == 1).all() and (small[:, :, -4:] == 1).all()  # white around it
    with pytest.raises(ValueError, match="facing"):
        billboard(image, inputs, targets, facing="sideways")


def test_smoke_evaluation_writes_json(tmp_path, capsys):
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    torch.manual_seed(0)
    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(tmp_path / "model")
    out = tmp_path / "results.json"
    sheet = tmp_path / "sheet.png"
    main(["--model", str(tmp_path / "model"), "--subjects", "2", "--novel-targets", "3", "--output", str(out),
          "--contact-sheet", str(sheet), "--no-progress"])
    results = json.loads(out.read_text())
    for protocol in PROTOCOLS:
        assert set(results[protocol]) == set(METHODS)
        for method in METHODS:
            r = results[protocol][method]
            assert 0 < r["psnr"] < 100 and 0 < r["ssim"] <= 1
            assert r["lpips"] is None or r["lpips"] >= 0
            assert r["dreamsim"] is None and r["arcface"] is None
    assert results["meta"]["n_views"] == {"novel": 6, "extreme": 8}
    by_pair = results["extreme_by_pair"]
    assert set(by_pair) == {"left_right", "top_bottom"} and set(by_pair["left_right"]) == set(METHODS)
    for method in METHODS:  # 2 profile + 2 vertical views per subject: the halves average to the whole
        halves = (by_pair["left_right"][method]["psnr"] + by_pair["top_bottom"][method]["psnr"]) / 2
        assert halves == pytest.approx(results["extreme"][method]["psnr"], rel=1e-6)
    assert "dreamsim" in results["meta"]["unavailable"]
    assert results["meta"]["billboard"].startswith("faces each target camera")
    printed = capsys.readouterr().out
    assert "| Extreme views | PSNR ↑" in printed and "| Ours |" in printed
    table = markdown_table(results)
    assert table.count("| Billboard (faces the viewer) |") == 3 and table.count("| Fixed card (two-sided") == 3
    assert "| Extreme views by pair | left↔right PSNR ↑" in table
    from PIL import Image

    w, h = Image.open(sheet).size
    assert w == 9 * 64 and h == 2 * 64 + 14


def test_photo_like_inputs_change_the_inputs_not_the_targets(tmp_path):
    """The robustness protocol feeds augmented inputs: the billboard (the input picture itself) scores
    differently, while the template model (which ignores the picture's colours) is unaffected in its targets."""
    from perchead.evaluation.reconstruction import EvalConfig, evaluate
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    torch.manual_seed(0)
    model = PercHead(PercHeadConfig.preset("tiny"))
    clean = evaluate(model, EvalConfig(subjects=1, novel_targets=2), progress=False)
    photo = evaluate(model, EvalConfig(subjects=1, novel_targets=2, photo_like_inputs=True), progress=False)
    assert photo["novel"]["billboard"]["psnr"] != pytest.approx(clean["novel"]["billboard"]["psnr"], abs=1e-4)
    again = evaluate(model, EvalConfig(subjects=1, novel_targets=2, photo_like_inputs=True), progress=False)
    assert again["novel"]["billboard"]["psnr"] == photo["novel"]["billboard"]["psnr"]  # seeded per head
    assert photo["meta"]["config"]["photo_like_inputs"] is True
