import pytest
import torch

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.preprocess import NORMALISATION, STUDY_MEAN, VITBASE_MEAN, preprocessing_for
from training.checkpoint import model_from_checkpoint, save_model
from training.families import FAMILIES, family
from training.models import build_model, count_trainable_params
from training.registry import get_run, load_runs
from training.vit import patchify
from training.vitbase import build_vitbase


@pytest.mark.parametrize("run_id", ["vit-110321", "linformer-010522"])
@pytest.mark.parametrize("batch", [1, 8])
def test_forward_shape(run_id, batch):
    torch.manual_seed(0)
    model = build_model(get_run(run_id)).eval()
    with torch.no_grad():
        logits = model(torch.randn(batch, 3, 224, 224))
    assert logits.shape == (batch, 8)
    assert torch.isfinite(logits).all()


def test_patchify_matches_einops_layout():
    from einops import rearrange

    images = torch.randn(2, 3, 32, 32)
    expected = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=8, p2=8)
    assert torch.equal(patchify(images, 8), expected)


def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=32,
        num_labels=1000,
    )


@pytest.mark.parametrize("batch", [1, 8])
def test_vitbase_tiny_pretrained_roundtrip(tmp_path, batch):
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    upstream = ViTForImageClassification(tiny_vit_config())  # stands in for google/vit-base-patch16-224
    upstream.save_pretrained(tmp_path / "upstream")

    model = build_vitbase(weights=tmp_path / "upstream", fine_tune=True).eval()
    backbone = {k: v for k, v in upstream.state_dict().items() if not k.startswith("classifier.")}
    loaded = model.hf.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in backbone.items())
    assert model.hf.classifier.out_features == 8
    assert model.hf.config.id2label[7] == CLASS_NAMES[7]

    model.save_pretrained(tmp_path / "ours")
    again = build_vitbase(weights=tmp_path / "ours").eval()
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
        assert model(images).shape == (batch, 8)


def test_vitbase_frozen_trains_only_classifier(tmp_path):
    from transformers import ViTForImageClassification

    ViTForImageClassification(tiny_vit_config()).save_pretrained(tmp_path)
    model = build_vitbase(weights=tmp_path, fine_tune=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["hf.classifier.weight", "hf.classifier.bias"]
    assert count_trainable_params(model) == 32 * 8 + 8


def test_vitbase_missing_weights_offline_is_an_error(tmp_path):
    with pytest.raises(OSError):
        build_vitbase(weights=tmp_path / "nowhere")


def test_family_registry_covers_every_run_and_the_core_normalisation():
    assert set(FAMILIES) == set(NORMALISATION) == {run.family for run in load_runs().values()}
    assert family("linformer").preprocessing(get_run("linformer-010522")).mean == STUDY_MEAN
    assert preprocessing_for("vitbase").mean == VITBASE_MEAN
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        family("resnet")
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        preprocessing_for("resnet")
    columns = {r: family(get_run(r).family).architecture(get_run(r)) for r in ("linformer-010522B", "vit-110321")}
    assert columns == {"linformer-010522B": "p16 d7 dim128 k16 h4 kv:separate", "vit-110321": "p16 d8 dim128 mlp32 h8"}
    assert family("vitbase").architecture(get_run("vitbase-121121")) == "frozen backbone"


@pytest.mark.parametrize("run_id", ["vit-110321", "linformer-010522"])
def test_family_rebuild_gives_the_saved_architecture(run_id, tmp_path):
    run = get_run(run_id).with_overrides(depth=1)
    torch.manual_seed(0)
    model = family(run.family).build(run, 3, False, None).eval()
    save_model(tmp_path / "best.pt", model, run, epoch=1, valid_acc=0.5, class_names=["a", "b", "c"])
    again, data = model_from_checkpoint(tmp_path / "best.pt")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(images), again(images)) and again(images).shape == (2, 3)
    assert data["class_weights"] is None and data["preprocessing"] == preprocessing_for(run.family).to_dict()
