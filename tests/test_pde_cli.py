"""`pdenets pde demo` and `pdenets pde kernels` end to end (tiny images, few frames)."""

import numpy as np
import pytest
from PIL import Image

from pdenets.cli import main


@pytest.mark.parametrize("equation", ["heat", "wave", "rotation", "dilation"])
def test_demo_writes_gif_and_png(tmp_path, equation, capsys):
    rc = main(["pde", "demo", "--equation", equation, "--image", "sample", "--size", "16", "--frames", "3",
               "--out", str(tmp_path)])
    assert rc == 0
    gif = Image.open(tmp_path / f"{equation}.gif")
    assert gif.n_frames == 3
    png = Image.open(tmp_path / f"{equation}_strip.png")
    assert png.width > png.height
    assert "wrote" in capsys.readouterr().out


def test_demo_image_path_and_bad_input(tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((20, 12)) * 255).astype(np.uint8)).save(img)
    assert main(["pde", "demo", "--equation", "heat", "--image", str(img), "--size", "12", "--frames", "2",
                 "--out", str(tmp_path / "o")]) == 0
    frames = Image.open(tmp_path / "o" / "heat.gif")
    assert frames.n_frames == 2
    assert main(["pde", "demo", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_kernels_command(tmp_path, capsys):
    rc = main(["pde", "kernels", "--model", "qlnet18_eq3_small", "--out", str(tmp_path), "--max-rows", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "16 kernels" in out and "mean share" in out
    lines = (tmp_path / "kernels.csv").read_text().splitlines()
    assert len(lines) == 17 and lines[0].startswith("module,kernel,1,dx,dy")
    assert (tmp_path / "kernels.png").stat().st_size > 1000
    assert main(["pde", "kernels", "--model", "no_such_model"]) == 2
    assert main(["pde", "kernels", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_models_reports_var_coef_cost(capsys):
    assert main(["models", "qlnet18_eq3*small", "--no-macs"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith("qlnet18_eq3")}
    # 100 classes: base 339,924; affine adds 3 per derivative channel (m·Σn = 4·256 = 1024), quadratic 6
    assert rows["qlnet18_eq3_small"] == "339,924"
    assert rows["qlnet18_eq3_varcoef_small"] == "342,996"
    assert rows["qlnet18_eq3_varcoef_quad_small"] == "346,068"
