"""CHAIR's input files: captions, per-image ground truth, COCO annotations and image folders.

* :func:`load_captions` / :func:`captions_from_records` -- generated captions (:class:`Caption`)
  from a JSON list, JSON lines or concatenated JSON objects (the POPE repository's layout);
* :func:`load_ground_truth` -- ``{image_id: [classes]}`` files (default: vendored COCO);
* :func:`coco_ground_truth` -- the ground truth built from COCO 2014 instance and caption
  annotations as the reference CHAIR builds it;
* :func:`find_image_files` -- each image id's file in a folder (COCO's val2014 names or the ids).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineage_lens._resources import resource_path
from lineage_lens.errors import DataError
from lineage_lens.evals.chair.vocabulary import ObjectVocabulary
from lineage_lens.fileio import read_text


# ------------------------------------------------------------------------------ data files
@dataclass(frozen=True)
class Caption:
    """A generated caption of one image."""

    image_id: str
    caption: str


def _decode_json_values(text: str, path: Path) -> list[Any]:
    """All JSON values of a file: one document, JSON lines, or concatenated objects."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON ({exc.msg}); expected a JSON list, JSON lines or concatenated "
                "JSON objects.",
                path=path,
                line=text.count("\n", 0, exc.pos) + 1,
            ) from exc
        values.append(value)
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    return values


def load_captions(path: str | Path) -> list[Caption]:
    """Read captions: a JSON list, JSON lines, or concatenated JSON objects (POPE repository).

    Each object needs ``image_id`` and ``caption`` (or ``text``, as in the POPE/LLaVA files).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("caption file not found.", path=p)
    values = _decode_json_values(read_text(p, "caption file"), p)
    if not values:
        raise DataError("caption file holds no captions (it is empty).", path=p)
    return captions_from_records(values, path=p)


def captions_from_records(
    records: Iterable[Mapping[str, Any]], path: str | Path | None = None
) -> list[Caption]:
    """:class:`Caption` objects from dicts with ``image_id`` and ``caption`` or ``text``."""
    out = []
    for k, rec in enumerate(records, start=1):
        if isinstance(rec, Caption):
            out.append(rec)
            continue
        if not isinstance(rec, Mapping):
            raise DataError(f"caption #{k} is a {type(rec).__name__}, not an object.", path=path)
        if "image_id" not in rec:
            raise DataError(f"caption #{k} has no 'image_id' field.", path=path)
        text = rec.get("caption", rec.get("text"))
        if not isinstance(text, str):
            raise DataError(
                f"caption #{k} (image {rec['image_id']}) has no string 'caption' or 'text'.",
                path=path,
            )
        out.append(Caption(str(rec["image_id"]), text))
    if not out:
        raise DataError("no captions given.", path=path)
    return out


def load_ground_truth(
    path: str | Path | None = None, vocabulary: ObjectVocabulary | None = None
) -> dict[str, set[str]]:
    """Per-image ground-truth classes ``{image_id: {class, ...}}`` (default: vendored COCO).

    With a ``vocabulary``, every class must be one of its classes.
    """
    p = Path(path) if path is not None else resource_path("chair", "coco_gt_objects.json")
    if not p.is_file():
        raise DataError("ground-truth file not found.", path=p)
    text = read_text(p, "ground-truth file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
    if not isinstance(raw, dict):
        raise DataError("expected a JSON object {image_id: [classes]}.", path=p)
    for key, value in raw.items():
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise DataError(
                f"image {key!r}: expected a list of class names (strings), got {value!r}; "
                'write e.g. {"42": ["dog", "person"]}.',
                path=p,
            )
    gt = {str(k): {c.lower() for c in v} for k, v in raw.items()}
    if vocabulary is not None:
        known = set(vocabulary.classes)
        unknown = sorted({c for v in gt.values() for c in v} - known)
        if unknown:
            raise DataError(
                f"ground-truth classes {unknown[:5]} are not in the vocabulary "
                f"{vocabulary.name!r}; use the vocabulary the ground truth was made with.",
                path=p,
            )
    return gt


def _read_coco_json(path: str | Path, kind: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"COCO {kind} file not found.", path=p)
    text = read_text(p, f"COCO {kind} file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"expected a COCO {kind} file with an 'annotations' list.", path=p)
    return data


def coco_ground_truth(
    instances: str | Path | Sequence[str | Path],
    captions: str | Path | Sequence[str | Path] = (),
    *,
    image_ids: Iterable[str | int] | None = None,
    vocabulary: ObjectVocabulary | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Per-image ground-truth classes built as the reference CHAIR builds them.

    The classes of an image are those of its COCO instance annotations (category name -> class
    through the synonym list) plus every class its human captions mention, found with the same
    word handling as the generated captions (:meth:`ObjectVocabulary.mentions`). The reference
    reads the train and the val 2014 files together; pass both.

    Args:
        instances: ``instances_{train,val}2014.json`` path(s).
        captions: ``captions_{train,val}2014.json`` path(s).
        image_ids: keep only these images (default: every annotated image).
        vocabulary: default COCO (:meth:`ObjectVocabulary.coco`).

    Returns:
        ``{image_id: sorted classes}``, the layout :func:`load_ground_truth` reads; write it with
        ``json.dump`` to use it as ``ground_truth``.
    """
    from tqdm.auto import tqdm

    vocab = vocabulary or ObjectVocabulary.coco()
    keep = None if image_ids is None else {str(i) for i in image_ids}
    gt: dict[str, set[str]] = {}
    inst_paths = [instances] if isinstance(instances, (str, Path)) else list(instances)
    cap_paths = [captions] if isinstance(captions, (str, Path)) else list(captions)
    for path in inst_paths:
        data = _read_coco_json(path, "instances")
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        for ann in data["annotations"]:
            image = str(ann["image_id"])
            if keep is not None and image not in keep:
                continue
            name = names.get(ann["category_id"])
            if name not in vocab.synonyms:
                raise DataError(
                    f"category {ann['category_id']} ({name!r}) of image {image} is not in the "
                    f"vocabulary {vocab.name!r}; use the synonym list of the annotations.",
                    path=path,
                )
            gt.setdefault(image, set()).add(vocab.synonyms[name])
    for path in cap_paths:
        data = _read_coco_json(path, "captions")
        anns = [a for a in data["annotations"] if keep is None or str(a["image_id"]) in keep]
        for ann in tqdm(anns, disable=not progress, desc="ground-truth captions", unit="cap"):
            classes = {m.cls for m in vocab.mentions(str(ann["caption"]))}
            gt.setdefault(str(ann["image_id"]), set()).update(classes)
    if not gt:
        raise DataError("no annotations for the requested images in the COCO files.")
    return {k: sorted(v) for k, v in gt.items()}


# ------------------------------------------------------------------------------ image folders
#: File names of COCO val2014 images by image id.
COCO_FILE_PATTERN = "COCO_val2014_{image_id:0>12}.jpg"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def find_image_files(
    folder: str | Path, image_ids: Sequence[str | int], file_pattern: str | None = None
) -> dict[str, Path]:
    """Each image id's file in ``folder``.

    With ``file_pattern`` the name is ``file_pattern.format(image_id=id)``. Without it, COCO's
    val2014 names (:data:`COCO_FILE_PATTERN`) when the folder has them; otherwise the image whose
    name (without suffix) is the id, or whose name's last number equals a numeric id
    (``zoo_00042.png`` for id ``42``). A missing or ambiguous image is a
    :class:`~lineage_lens.errors.DataError` naming the folder and a few of the ids.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder not found.", path=folder)
    ids = [str(i) for i in image_ids]

    def by_pattern(pattern: str) -> dict[str, Path]:
        return {i: folder / pattern.format(image_id=i) for i in ids}

    if file_pattern is not None:
        files = by_pattern(file_pattern)
        how = f"file_pattern {file_pattern!r}"
    else:
        files = by_pattern(COCO_FILE_PATTERN)
        how = "COCO's file names or the ids' numbers"
        if not all(f.is_file() for f in files.values()):
            images = [f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
            by_name = {f.stem: f for f in images}
            by_number: dict[int, list[Path]] = {}
            for f in images:
                digits = re.findall(r"\d+", f.stem)
                if digits:
                    by_number.setdefault(int(digits[-1]), []).append(f)
            ambiguous = [i for i in ids if i not in by_name and len(by_number.get(_num(i), [])) > 1]
            if ambiguous:
                names = ", ".join(p.name for p in by_number[_num(ambiguous[0])][:3])
                raise DataError(
                    f"image id {ambiguous[0]!r} matches several files in {folder} ({names}); "
                    "pass file_pattern to say which."
                )
            files = {
                i: by_name.get(i) or next(iter(by_number.get(_num(i), [])), folder / i) for i in ids
            }
    missing = [i for i, f in files.items() if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(files)} images are missing from {folder} by {how} "
            f"(e.g. ids {', '.join(missing[:3])}); pass the right folder or file_pattern."
        )
    return files


def _num(image_id: str) -> int:
    """A numeric id's number (-1 for other ids, which match by name only)."""
    return int(image_id) if image_id.isascii() and image_id.isdigit() else -1
