import numpy as np
import pytest
from PIL import Image

from galaxyvit.preprocess import Preprocessing, center_crop, eval_array, eval_crop, normalize, preprocessing_for


def test_center_crop_offsets_like_torchvision():
    rgb = np.arange(424 * 424 * 3, dtype=np.uint32).reshape(424, 424, 3) % 251
    image = Image.fromarray(rgb.astype(np.uint8))
    crop = np.asarray(center_crop(image, 224))
    assert crop.shape == (224, 224, 3)
    assert np.array_equal(crop, rgb[100:324, 100:324].astype(np.uint8))


def test_small_images_are_zero_padded_around_the_centre():
    image = Image.new("RGB", (100, 60), (255, 255, 255))
    crop = np.asarray(center_crop(image, 224))
    assert crop.shape == (224, 224, 3)
    assert crop[112, 112].tolist() == [255, 255, 255]
    assert crop[0, 0].tolist() == [0, 0, 0]
    assert crop[:, 62:162].min() == 0 and crop[82:142, 62:162].min() == 255


def test_eval_array_normalises():
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = eval_array(Image.new("L", (424, 424), 255), prep)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x, 1.0)


def test_normalize_is_the_formula_bit_for_bit_for_images_and_batches():
    prep = preprocessing_for("vit")
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    formula = (rgb.astype(np.float32) / 255.0 - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    expected = formula.transpose(0, 3, 1, 2)
    assert np.array_equal(normalize(rgb[1], prep), expected[1])
    batch = np.full((2, 3, 5, 7), np.nan, np.float32)
    assert normalize(rgb, prep, out=batch) is batch
    assert np.array_equal(batch, expected)
    with pytest.raises(ValueError, match="uint8"):
        normalize(rgb.astype(np.float32), prep)


def test_eval_array_is_the_normalised_eval_crop():
    prep = preprocessing_for("linformer")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (424, 424, 3), dtype=np.uint8))
    crop = eval_crop(image, prep)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.array_equal(eval_array(image, prep), normalize(crop, prep))


def test_family_normalisation():
    assert preprocessing_for("vitbase").mean == (0.5, 0.5, 0.5)
    assert preprocessing_for("vit").std == (0.1303, 0.11, 0.0913)
    assert Preprocessing.from_dict(preprocessing_for("linformer").to_dict()) == preprocessing_for("linformer")
