import numpy as np
from PIL import Image

from galaxyvit.preprocess import Preprocessing, center_crop, eval_array, preprocessing_for


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


def test_family_normalisation():
    assert preprocessing_for("vitbase").mean == (0.5, 0.5, 0.5)
    assert preprocessing_for("vit").std == (0.1303, 0.11, 0.0913)
    assert Preprocessing.from_dict(preprocessing_for("linformer").to_dict()) == preprocessing_for("linformer")
