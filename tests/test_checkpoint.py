import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_model
from training.models import build_model
from training.registry import get_run


def test_best_checkpoint_roundtrip(tmp_path):
    run = get_run("linformer-010522")
    torch.manual_seed(0)
    model = build_model(run).eval()
    save_model(tmp_path / "best.pt", model, run, epoch=3, valid_acc=0.5)
    again, data = model_from_checkpoint(tmp_path / "best.pt")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
    assert data["epoch"] == 3 and data["run"]["id"] == run.id
    assert list(tmp_path.iterdir()) == [tmp_path / "best.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    run = get_run("linformer-010522")
    save_model(tmp_path / "best.pt", build_model(run), run, epoch=0, valid_acc=0.0)
    blob = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
