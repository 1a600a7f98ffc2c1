"""A user's own data (pptp.own_data): image folders, arrays, tables, loaders, cut into a pool like
the built-in datasets, and every bad input one ConfigError naming the file or column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pptp.config import DataConfig
from pptp.data import build_pool, check_data, dataset_spec
from pptp.errors import ConfigError
from search.space import load_space


def _images(folder: Path, classes: dict[str, int], *, size: int = 10, mode: str = "L") -> None:
    rng = np.random.default_rng(len(classes))
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(
                folder / name / f"{i}.png"
            )


def test_image_folder_with_test_split(tmp_path: Path) -> None:
    _images(tmp_path / "train", {"cat": 12, "dog": 10})
    _images(tmp_path / "test", {"cat": 3, "dog": 2})
    data = DataConfig(name="image_folder", data_dir=str(tmp_path), image_size=6, val_size=2)
    spec = dataset_spec(data)
    assert (spec.num_classes, spec.channels, spec.image_size, spec.n_test) == (2, 1, 6, 5)
    pool = build_pool(data)
    assert pool.x_test.shape == (5, 1, 6, 6)  # the test/ folder, whatever data.test_size says
    assert len(pool.y) == 22 - 2
    assert abs(float(pool.x.mean())) < 1e-5  # standardised with the pool's own statistics


def test_image_folder_problems_name_the_file(tmp_path: Path) -> None:
    _images(tmp_path, {"a": 3, "b": 3}, size=8)
    (tmp_path / "b" / "notes.png").write_text("not an image")
    data = DataConfig(name="image_folder", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"b/notes.png: not an image Pillow can read"):
        dataset_spec(data)
    (tmp_path / "b" / "notes.png").unlink()
    assert dataset_spec(data).image_size == 8  # one square size: no data.image_size needed
    one = tmp_path / "one"
    _images(one, {"only": 4})
    with pytest.raises(ConfigError, match="1 class folder"):
        dataset_spec(DataConfig(name="image_folder", data_dir=str(one)))


def test_rgb_images_and_npz_arrays(tmp_path: Path) -> None:
    _images(tmp_path / "rgb", {"x": 4, "y": 4}, mode="RGB")
    assert (
        dataset_spec(DataConfig(name="image_folder", data_dir=str(tmp_path / "rgb"))).channels == 3
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 12, 12, 3), dtype=np.uint8)  # channels last
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(40) % 4)
    spec = dataset_spec(DataConfig(name="arrays", data_dir=str(path)))
    assert (spec.num_classes, spec.channels, spec.image_size, spec.table) == (4, 3, 12, False)
    np.savez(path, x=x.astype(np.float32) * np.nan, y=np.arange(40) % 4)
    with pytest.raises(ConfigError, match="NaN or infinite feature"):
        dataset_spec(DataConfig(name="arrays", data_dir=str(path)))
    np.savez(path, x=x, y=np.arange(40) % 4 + 3)
    with pytest.raises(ConfigError, match=r"labels out of range: \[3, 4, 5, 6\]; give labels 0..3"):
        dataset_spec(DataConfig(name="arrays", data_dir=str(path)))


def test_npy_folder_with_its_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.normal(size=(30, 5)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(30) % 3)
    np.save(tmp_path / "x_test.npy", rng.normal(size=(6, 5)).astype(np.float32))
    np.save(tmp_path / "y_test.npy", np.array([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ConfigError, match=r"test labels out of range \(0..3\)"):
        dataset_spec(DataConfig(name="arrays", data_dir=str(tmp_path)))
    np.save(tmp_path / "y_test.npy", np.array([0, 1, 2, 2, 0, 1]))
    spec = dataset_spec(DataConfig(name="arrays", data_dir=str(tmp_path)))
    assert (spec.table, spec.channels, spec.n_test, spec.facts().features) == (True, 5, 6, 5)


def test_table_with_text_columns_and_labels(tmp_path: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "age": rng.integers(20, 70, 60),
            "income": rng.normal(5e4, 1e4, 60),
            "city": rng.choice(["paris", "lyon", "nice"], 60),
            "outcome": rng.choice(["no", "yes"], 60),
        }
    )
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    data = DataConfig(name="table", data_dir=str(csv), label="outcome", test_size=10, val_size=0)
    spec = dataset_spec(data)
    assert (spec.table, spec.channels, spec.num_classes) == (True, 2 + 3, 2)  # city one-hot
    pool = build_pool(data)
    assert pool.x.shape == (50, 5, 1, 1) and pool.table
    assert torch.allclose(pool.x.mean(dim=0).flatten(), torch.zeros(5), atol=1e-5)
    assert torch.allclose(pool.x.std(dim=0).flatten(), torch.ones(5), atol=1e-4)
    parquet = tmp_path / "t.parquet"
    frame.to_parquet(parquet)
    assert (
        dataset_spec(DataConfig(name="table", data_dir=str(parquet), label="outcome")).channels == 5
    )
    with pytest.raises(ConfigError, match="no label column 'label'"):
        dataset_spec(DataConfig(name="table", data_dir=str(csv)))
    frame.loc[3, "income"] = np.nan
    frame.to_csv(csv, index=False)
    with pytest.raises(ConfigError, match=r"t.csv: NaN \(empty\) values in column\(s\) income"):
        dataset_spec(data)


def test_loader_by_import_path(tmp_path: Path) -> None:
    loader = tmp_path / "load.py"
    loader.write_text(
        "import torch\n"
        "def load():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return torch.rand(50, 1, 6, 6, generator=g), torch.arange(50) % 5\n"
        "def one_class():\n"
        "    return torch.rand(10, 4), torch.zeros(10, dtype=torch.long)\n"
    )
    spec = dataset_spec(DataConfig(name=f"{loader}:load"))
    assert (spec.num_classes, spec.channels, spec.image_size) == (5, 1, 6)
    with pytest.raises(ConfigError, match="one class only"):
        dataset_spec(DataConfig(name=f"{loader}:one_class"))


def test_a_space_on_data_not_here_still_loads(tmp_path: Path) -> None:
    """report and compare read a run's space.yaml where the data may not be; run.py reads it."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "study: {name: own, n_trials: 1}\n"
        f"fixed: {{data.name: image_folder, data.data_dir: {tmp_path / 'elsewhere'}}}\n"
        "params: {protect.strength: {type: float, low: 0.0, high: 1.0}}\n"
    )
    assert load_space(space).base_config().data.name == "image_folder"
    with pytest.raises(ConfigError, match="no folder of class subfolders there"):
        check_data(load_space(space).base_config().data)
