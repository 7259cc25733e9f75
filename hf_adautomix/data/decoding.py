"""Decoding stored images to RGB PIL images, with errors that name the file or row of a bad image.

`decode_image` decodes one image (ours rather than `datasets.Image`'s, whose errors name neither file nor row);
`decode_all` decodes a whole split in one pass and raises one error naming every undecodable image.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import PIL.Image
from datasets.utils import tqdm as hf_tqdm

# Each row's index in the split it was loaded from, so that an undecodable image can be named by row.
ROW_COLUMN = "__row__"
MAX_LISTED = 10  # error messages list at most this many offending values, files or rows


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Converts any PIL mode to RGB: transparency is composited on white, 16-bit and float grey is rescaled."""
    # Ours, not `datasets.Image(mode="RGB")` (PIL's convert): that drops alpha (transparent pixels keep their hidden
    # colour, often black) and clips 16-bit grey at 255, so most 16-bit images come out white (checked, datasets 5.2).
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # PIL's own convert("RGB") clips 16-bit values at 255, which turns most images white.
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0
        elif image.mode == "F" and arr.max() <= 1.0:
            arr = arr * 255.0
        return PIL.Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def decode_image(value: Any, row: int | None = None) -> PIL.Image.Image:
    """Decodes one stored image (an `Image(decode=False)` dict, a path or a PIL image) to RGB.

    Ours rather than `datasets.Image` decoding, whose errors name neither the file nor the row (see `to_rgb`).

    Args:
        value: `{"bytes": ..., "path": ...}`, a file path, or a PIL image.
        row: the row's index, used to name the image in errors when it has no file path.

    Raises:
        ValueError: naming the file or row when the image cannot be decoded.
    """
    if isinstance(value, PIL.Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    value = value if value is not None else {"bytes": None, "path": None}
    data, path = value.get("bytes"), value.get("path")
    if data is None and not path:
        missing = ValueError("the row has no image (null)")
        raise ValueError(
            f"Could not decode image {_image_where(value, row)}: {_reason(missing)}. Remove this row or give it "
            "an image."
        ) from missing
    try:
        image = PIL.Image.open(io.BytesIO(data) if data is not None else path)
        image.load()  # decode now, so truncated files fail here rather than inside the transform
        return to_rgb(image)
    except PIL.Image.DecompressionBombError as err:  # not an OSError: Pillow refuses, the file may be fine
        raise ValueError(
            f"Could not decode image {_image_where(value, row)}: {_reason(err)} {_BOMB_HINT}"
        ) from err
    except (OSError, ValueError, SyntaxError, TypeError) as err:
        raise ValueError(
            f"Could not decode image {_image_where(value, row)}: {_reason(err)}. Remove or replace this image."
        ) from err


_BOMB_HINT = (
    "If you trust this image, raise Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS, in pixels; None for no limit) "
    "before training, or shrink the image."
)


def _reason(err: BaseException) -> str:
    """`Type: message` of a decoding error, without the `<_io.BytesIO object at 0x...>` Pillow puts in it."""
    return f"{type(err).__name__}: {re.sub(r' <_io.BytesIO object at 0x[0-9a-f]+>', '', str(err))}"


def _image_where(value: dict, row: int | None) -> str:
    """How errors name an image: by its file when it is read from one, else by row (and stored file name)."""
    data, path = value.get("bytes"), value.get("path")
    if data is None and path:
        return f"file {path!r}"
    where = f"at row {row}" if row is not None else "in an unnamed row"
    return where + (f" ({path!r})" if path else "")


def decode_all(
    dataset: datasets.Dataset,
    column: str,
    split: str,
    keep: Callable[[int, PIL.Image.Image], None] | None = None,
    batch_size: int = 1000,
) -> list[int]:
    """Decodes every image of `dataset` (`decode_image`), hands each to `keep(position, image)` if given, and
    raises one error naming all the undecodable ones (`check_images`). Returns each row's `ROW_COLUMN` value (its
    position when there is no such column)."""
    raw = dataset.with_format(None).select_columns(
        [c for c in (column, ROW_COLUMN) if c in dataset.column_names]
    )
    if isinstance(raw.features[column], datasets.Image):
        raw = raw.cast_column(column, datasets.Image(decode=False))
    failures, bombs, all_rows = [], False, []
    desc = f"{'Decoding' if keep else 'Checking'} the {split} images"
    with hf_tqdm(total=len(raw), desc=desc, unit=" images") as progress:
        for start, batch in zip(range(0, len(raw), batch_size), raw.iter(batch_size=batch_size)):
            rows = batch.get(ROW_COLUMN) or range(start, start + len(batch[column]))
            for position, (value, row) in enumerate(zip(batch[column], rows), start):
                all_rows.append(row)
                try:
                    image = decode_image(value, row)
                except ValueError as err:
                    cause = err.__cause__
                    if isinstance(value, (str, os.PathLike)):
                        value = {"path": os.fspath(value), "bytes": None}
                    value = value if value is not None else {"bytes": None, "path": None}
                    failures.append(f"{_image_where(value, row).removeprefix('at ')} ({_reason(cause)})")
                    bombs |= isinstance(cause, PIL.Image.DecompressionBombError)
                    continue
                if keep is not None:
                    keep(position, image)
            progress.update(len(batch[column]))
    if failures:
        more = f"; and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
        raise ValueError(
            f"{len(failures)} of the {len(raw)} images of the '{split}' split (column {column!r}) could not be "
            f"decoded: {'; '.join(failures[:MAX_LISTED])}{more}. Remove or replace these images."
            + (f" {_BOMB_HINT}" if bombs else "")
        )
    return all_rows
