from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import load_data
from edgekd.data.images import _header
from edgekd.errors import InputError, UsageError
from edgekd.models import load_teacher
from edgekd.recipe import load_recipe


def test_digits_split_is_seeded_and_disjoint():
    a, b = load_data("digits"), load_data("digits")
    assert a.fingerprint() == b.fingerprint()
    assert (len(a.train), len(a.val), len(a.test)) == (1259, 269, 269)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.input_shapes == "[1, 8, 8] float32" and a.labelled
    assert a.train.x.min() >= 0.0 and a.train.x.max() <= 1.0


def test_npz_without_labels_is_unlabelled(tmp_path):
    path = tmp_path / "inputs.npz"
    np.savez(path, x=np.random.rand(100, 1, 8, 8).astype(np.float32))
    data = load_data(str(path))
    assert not data.labelled and len(data.train) + len(data.val) + len(data.test) == 100


def test_npz_problems_are_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, y=np.zeros(4))
    with pytest.raises(InputError, match="no input arrays besides 'y'"):
        load_data(str(path))
    np.savez(path, input_ids=np.zeros((4, 2)), attention_mask=np.zeros((5, 2)))
    with pytest.raises(InputError, match=r"inputs differ in length: \[4, 5\]"):
        load_data(str(path))
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(InputError, match="3 labels for 4 inputs"):
        load_data(str(path))


def test_image_folder_gives_one_class_per_subfolder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    data = load_data(str(tmp_path))
    assert data.train.x.shape[1:] == (3, 6, 6)
    assert set(np.unique(np.concatenate([data.train.y, data.test.y]))) == {0, 1}


def test_factory_data_spec(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def splits():\n"
        "    r = np.random.default_rng(0)\n"
        "    ds = lambda n: [(r.random((1, 8, 8), dtype=np.float32), i % 10) for i in range(n)]\n"
        "    return {'train': ds(30), 'val': ds(10), 'test': ds(10)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data("mydata:splits")
    assert len(data.train) == 30 and data.labelled


def test_unknown_data_spec_says_what_is_accepted():
    with pytest.raises(InputError, match="pass 'digits', an image folder"):
        load_data("no/such/folder")


def test_factory_teacher_loads_weights_only_state_dict(tmp_path, tiny):
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": tiny.state_dict()}, weights)
    model = load_teacher("conftest:tiny_net", str(weights))
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), tiny(x))


def test_corrupt_and_mismatched_weights_are_named(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="corrupt or not a PyTorch file"):
        load_teacher("conftest:tiny_net", str(corrupt))
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(InputError, match="do not fit the teacher: missing"):
        load_teacher("conftest:tiny_net", str(wrong))


def test_pickled_checkpoint_needs_explicit_trust(tmp_path, tiny):
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(UsageError, match="--trust-checkpoint"):
        load_teacher(str(path))
    assert isinstance(load_teacher(str(path), trust=True), torch.nn.Module)


@pytest.mark.parametrize("decomposed", [False, True], ids=["as-exported", "decomposed"])
def test_torch_export_archive_is_a_teacher(tmp_path, tiny, example, decomposed):
    """Also after ``run_decompositions()``: aten.convolution, addmm on a transposed weight and
    _native_batch_norm_legit_no_training lift into layers as conv2d, linear and batch_norm do."""
    path = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(tiny, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program.run_decompositions() if decomposed else program, path)
    model = load_teacher(str(path))
    kinds = {type(m) for m in model.modules()}
    assert {
        torch.nn.Conv2d,
        torch.nn.BatchNorm2d,
        torch.nn.Linear,
    } <= kinds  # lifted into real layers
    torch.testing.assert_close(model.eval()(example), tiny(example))


def test_bad_factory_spec_is_named():
    with pytest.raises(InputError, match="cannot import 'no_such_pkg.models'"):
        load_teacher("no_such_pkg.models:net")


def test_an_npz_of_several_named_arrays_is_several_inputs_each_keeping_its_dtype(tmp_path):
    path = tmp_path / "tokens.npz"
    ids = np.random.default_rng(0).integers(0, 1000, (60, 12))
    np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids), y=np.arange(60) % 3)
    data = load_data(str(path))
    assert data.train.x.dtype.names == ("input_ids", "attention_mask")
    assert data.train.x["input_ids"].dtype == np.int64 and data.labelled
    assert data.input_shapes == "input_ids [12] int64, attention_mask [12] int64"


def _photos(folder, sizes, color=(255, 0, 128), suffix=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), color).save(folder / f"{i}{suffix}")


def test_a_folder_with_one_subfolder_of_photos_is_unlabelled_and_says_so(tmp_path):
    """Not one class: an ImageNet teacher would score 0% on it and the student be trained to
    say class 0, reported as 100% accuracy."""
    _photos(tmp_path / "photos", [(40, 30)] * 30)
    data = load_data(str(tmp_path))
    assert not data.labelled
    assert any("one subfolder ('photos')" in note and "unlabelled" in note for note in data.notes)
    flat = tmp_path / "flat"
    _photos(flat, [(40, 30)] * 30, suffix=".png")
    assert not load_data(str(flat)).labelled


def test_photos_of_mixed_sizes_get_imagenets_resize_crop_mean_and_std_by_default(tmp_path):
    _photos(tmp_path / "photos", [(300, 260), (640, 480), (260, 400)] * 10)
    data = load_data(str(tmp_path))
    assert data.train.x.shape[1:] == (3, 224, 224)
    red = (1.0 - 0.485) / 0.229  # a red pixel after ImageNet's mean and std
    np.testing.assert_allclose(data.train.x[0, 0, 100, 100], red, rtol=0, atol=0.02)
    assert any(
        "resize 256, center crop 224" in n and "ImageNet's defaults" in n for n in data.notes
    )


def test_the_recipes_transform_wins_over_the_teachers_declared_one_which_wins_over_defaults(
    tmp_path,
):
    _photos(tmp_path / "photos", [(50, 40), (64, 64)] * 12)
    teacher = torch.nn.Identity()
    teacher.pretrained_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": (3, 32, 32),
                              "crop_pct": 1.0}  # fmt: skip
    data = load_data(str(tmp_path), None, teacher)
    assert data.train.x.shape[1:] == (3, 32, 32)
    np.testing.assert_allclose(data.train.x[0, :, 5, 5], [1.0, -1.0, 0.004], atol=0.01)
    recipe = load_recipe("auto", ["data.transform.crop=16", "data.transform.resize=20",
                                  "data.transform.mean=[0, 0, 0]", "data.transform.std=[1, 1, 1]"])  # fmt: skip
    data = load_data(str(tmp_path), recipe.data.transform, teacher)
    assert data.train.x.shape[1:] == (3, 16, 16)
    np.testing.assert_allclose(data.train.x[0, :, 5, 5], [1.0, 0.0, 0.502], atol=0.01)
    assert any(
        "from the recipe" in n and "from the teacher's pretrained_cfg" not in n for n in data.notes
    )


def test_real_folders_hidden_entries_nesting_rotation_16_bit_and_empty_classes(tmp_path):
    root = tmp_path / "labelled"
    _photos(root / "cats" / "indoor", [(40, 30)] * 12)  # nested below the class folder
    _photos(root / "dogs", [(40, 30)] * 12, color=(0, 255, 0))
    (root / ".ipynb_checkpoints").mkdir()  # hidden: no class
    (root / "dogs" / "._0.jpg").write_bytes(b"AppleDouble")  # hidden: no image
    data = load_data(str(root))
    labels = np.concatenate([data.train.y, data.val.y, data.test.y])
    assert sorted(np.bincount(labels)) == [12, 12]
    (root / "birds").mkdir()
    with pytest.raises(InputError, match="class folder .*birds' holds no images"):
        load_data(str(root))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(25):
        img = Image.new("RGB", (40, 20), (255, 0, 0))
        exif = img.getexif()
        exif[0x0112] = 6  # shot rotated a quarter turn
        img.save(flat / f"{i}.jpg", exif=exif)
    Image.fromarray(np.full((20, 40), 30000, np.uint16)).save(flat / "deep.png")
    assert _header(flat / "0.jpg") == ((20, 40), "RGB")  # as it is shown: upright
    recipe = load_recipe("auto", ["data.transform.mean=[0, 0, 0]", "data.transform.std=[1, 1, 1]",
                                  "data.transform.resize=16"]).data.transform  # fmt: skip
    data = load_data(str(flat), recipe)
    assert data.train.x.shape[1:] == (3, 16, 16)  # sizes differ: the resize crops square
    x = np.concatenate([data.train.x, data.val.x, data.test.x])
    grey = x[(x[:, 0] == x[:, 1]).all((1, 2))]
    np.testing.assert_allclose(grey.mean(), 30000 / 65535, atol=0.01)  # scaled, not clipped white


def test_a_grayscale_teacher_gets_grayscale_inputs_and_a_resize_alone_crops_square(tmp_path):
    _photos(tmp_path / "photos", [(50, 40), (64, 64)] * 12)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
    recipe = load_recipe("auto", ["data.transform.resize=20"]).data.transform
    data = load_data(str(tmp_path), recipe, teacher)
    assert data.train.x.shape[1:] == (1, 20, 20)
    assert any("1-channel, resize 20, center crop 20, [0, 1], no mean/std" in n for n in data.notes)
    with pytest.raises(UsageError, match="mean and data.transform.std together"):
        load_recipe("auto", ["data.transform.mean=[0.5]"])


def test_an_npz_with_x_and_other_arrays_says_how_to_name_them(tmp_path):
    path = tmp_path / "mixed.npz"
    np.savez(path, x=np.zeros((30, 4), np.float32), mask=np.ones((30, 4)))
    with pytest.raises(InputError, match="holds 'x' and mask"):
        load_data(str(path))


def _noise_photos(folder, count, seed=0):
    """Mixed sizes, each image different, so an order mix-up shows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = rng.integers(20, 40, 2)
        pixels = rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def test_a_folder_is_decoded_once_by_workers_into_a_cache_its_splits_map(tmp_path, monkeypatch):
    from edgekd.data import images, split_arrays

    _noise_photos(tmp_path / "photos", images.PARALLEL + 16)  # enough for worker processes
    spec = ["data.transform.resize=16", "data.transform.crop=16"]
    transform = load_recipe("auto", spec).data.transform
    data = load_data(str(tmp_path / "photos"), transform)
    for split in (data.train, data.val, data.test):
        assert isinstance(split.x.base, np.memmap)  # a view of the cache, not a copy
    # the same splits the in-memory path gives: every image decoded alone, then split
    found = images._images(tmp_path / "photos")
    t, _ = images._resolve(transform, {}, [images._header(f) for f in found])
    alone = np.stack([x for f in found for x in images._load([f], t)])
    assert data.fingerprint() == split_arrays("photos", alone, None).fingerprint()

    def no_decoding(*_args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "_decode_all", no_decoding)
    again = load_data(str(tmp_path / "photos"), transform)
    assert again.fingerprint() == data.fingerprint()
    Image.new("RGB", (30, 30), (0, 0, 0)).save(tmp_path / "photos" / "000.png")  # a file changed
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(str(tmp_path / "photos"), transform)


def test_an_image_that_fails_to_decode_in_a_worker_is_named_and_leaves_no_cache(tmp_path):
    import os
    from pathlib import Path

    from edgekd.data import images

    _noise_photos(tmp_path / "photos", images.PARALLEL + 16)
    broken = tmp_path / "photos" / "050.png"
    broken.write_bytes(broken.read_bytes()[:200])  # its header reads; its pixels do not
    cache = Path(os.environ["EDGEKD_CACHE"]) / "images"  # the suite's, not the user's
    before = sorted(cache.iterdir()) if cache.exists() else []
    with pytest.raises(InputError, match="050.png' is unreadable"):
        load_data(str(tmp_path / "photos"))
    assert (sorted(cache.iterdir()) if cache.exists() else []) == before


def test_outputs_predicted_into_a_file_equal_those_held_in_memory(tmp_path, tiny):
    from edgekd.evaluate import predict, torch_fn

    x = load_data("digits").train.x
    mapped = predict(torch_fn(tiny), x, batch=100, into=tmp_path / "out.npy")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, predict(torch_fn(tiny), x))
