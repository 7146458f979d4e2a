"""Table 1 of Liu-Shao-Bai: parameter counts at num_classes=100, to the digits the paper prints."""

import pytest
import timm
import torch

import pdenets  # noqa: F401

TABLE1 = [
    ("qlnet50_eq3", "8.61M", 8_608_868),
    ("qlnet50_eq3_nows", "8.73M", 8_728_100),
    ("qlnet50_eq3_nows_x6", "13.0M", 12_971_044),
    ("qlnet50_eq4", "5.70M", 5_696_612),
    ("qlnet50_eq5", "4.26M", 4_259_556),
    ("qlnet50_eq6", "5.61M", 5_610_596),
    ("qlnet50_eq7_nows_x6", "13.0M", 12_971_044),
    ("resnet50", "23.7M", 23_712_932),
    ("mobilenetv3_large_100", "4.33M", 4_330_132),
]


def _paper_round(count: int, printed: str) -> str:
    digits = len(printed.rstrip("M").split(".")[1])
    return f"{count / 1e6:.{digits}f}M"


@pytest.mark.parametrize("name,printed,exact", TABLE1)
def test_table1_counts(name, printed, exact):
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=100)
    n = sum(p.numel() for p in m.parameters())
    assert _paper_round(n, printed) == printed
    assert n == exact


def test_eq3p_count():
    with torch.device("meta"):
        m = timm.create_model("qlnet50_eq3p", num_classes=100)
    assert sum(p.numel() for p in m.parameters()) == 8_608_868 + 999_424
