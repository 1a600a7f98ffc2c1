"""Write the example's data: a folder of PNG images and a CSV table, both from data that
scikit-learn ships (no download).

    python examples/own-model-and-data/make_data.py [--out data/own]

- ``<out>/digits/train/<class>/*.png`` and ``<out>/digits/test/<class>/*.png``: scikit-learn's
  8x8 digits as 16x16 grayscale PNGs, one folder per class (the last 200 images are the test
  split);
- ``<out>/cancer.csv``: the Wisconsin breast-cancer table (569 rows, 30 numeric columns), a text
  column ``size`` (small / medium / large, from the mean radius; one-hot encoded by pptp-search)
  and the label column ``diagnosis`` (malignant / benign).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits


def write_images(folder: Path, n_test: int = 200) -> int:
    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        split = "test" if i >= len(pixels) - n_test else "train"
        target = folder / split / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((16, 16), Image.Resampling.NEAREST).save(
            target / f"{i:04d}.png"
        )
    return len(pixels)


def write_table(path: Path) -> int:
    cancer = load_breast_cancer(as_frame=True)
    frame = cancer.data.copy()
    frame["size"] = pd.qcut(frame["mean radius"], 3, labels=["small", "medium", "large"])
    frame["size"] = frame["size"].astype(str)
    frame["diagnosis"] = [cancer.target_names[t] for t in cancer.target]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/own", help="where to write (default data/own)")
    out = Path(parser.parse_args().out)
    n_images = write_images(out / "digits")
    n_rows = write_table(out / "cancer.csv")
    print(f"wrote {n_images} images to {out / 'digits'} and {n_rows} rows to {out / 'cancer.csv'}")


if __name__ == "__main__":
    main()
