"""MIR with nothing hidden is refused when the config is loaded (it would train nothing)."""
import pytest

from pipeline.train.pretraining import load_pretrain_config
from preprocessing.format import SonostreamError

DEBUG = "launch/configs/debug/pretrain.yaml"


@pytest.mark.parametrize("ratio", ["0", "0.005"])   # 0.005 of 8x8 rounds to no patch
def test_mask_ratio_0_with_mir_is_refused_naming_both_keys(ratio):
    with pytest.raises(SonostreamError) as e:
        load_pretrain_config(DEBUG, [f"loader.mask_ratio={ratio}"])
    assert "loader.mask_ratio" in str(e.value) and "tasks.mir" in str(e.value)


def test_mask_ratio_0_without_mir_is_fine():
    cfg = load_pretrain_config(DEBUG, ["loader.mask_ratio=0", "tasks.mir=0"])
    assert cfg.tasks.active == ("pm", "io")
    assert "loader.mask_mode" in cfg.RESUME_KEYS
