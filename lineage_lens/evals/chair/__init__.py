"""CHAIR: object hallucination in image captions (Rohrbach et al., 2018), as published.

For each caption, the objects it mentions are mapped to object classes (the 80 COCO classes by
default) and compared with the image's ground-truth objects:

* ``CHAIR_s``: fraction of captions that mention at least one object not in the image;
* ``CHAIR_i``: hallucinated object mentions / all object mentions (over all captions);
* ``recall``: ground-truth classes mentioned / all ground-truth classes (over all captions), as
  in the Python 3 ports of the reference that report it;
* ``mean_length``: mean number of tokens per caption after two-word objects are joined (the
  ports' ``Len``; punctuation tokens count).

The default is the reference algorithm, ``utils/chair.py`` of LisaAnne/Hallucination, which the
POPE repository and most MLLM papers reuse (our own implementation of the same steps):

1. lowercase the caption and tokenise it as NLTK's ``word_tokenize`` does (sentence split, then
   the Treebank rules: ``"dog's"`` -> ``dog``, ``'s``; ``"hot-dog"`` and ``"cat/dog"`` stay one
   token);
2. singularise every token with the rules of ``pattern.en.singularize`` (:func:`singularize`),
   quirks included: ``bus`` -> ``bu``, ``glass`` -> ``glas``, ``ties`` -> ``ty``, ``tennis`` ->
   ``tenni``, ``canoes`` -> ``cano``;
3. join pairs of consecutive words, left to right, that are in the two-word table
   (:func:`coco_double_words`): ``"hot dog"``, ``"teddy bear"``, ``"cell phone"``, ...;
   ``"baby bird"`` / ``"adult cow"`` -> the animal, ``"passenger jet"`` -> ``jet``, ``"bow tie"`` ->
   ``tie``, ``"toilet seat"`` -> ``toilet``; ``"home plate"`` and ``"train track"`` are consumed
   and are no object;
4. drop ``seat`` when the caption also says ``toilet``;
5. every remaining word that is in the synonym list (parsed as the reference does: lines split
   on ``", "``, so ``" motor bike"`` with its leading space and ``"iPhone"`` never match) is a
   mention of its class; **every mention counts**.

``counting="once_per_caption"`` counts each class once per caption instead (CHAIR_i then is
hallucinated classes / mentioned classes; CHAIR_s and recall do not change). Every known
difference from the reference is listed in ``docs/chair.md``. Captions whose image has no ground
truth are skipped and reported (``n_skipped``), or raise with ``on_missing="error"``.

The vocabulary (:class:`ObjectVocabulary`) and the ground truth are parameters, so another object
vocabulary (for example the zoo's rendered objects) plugs in.

Modules (everything is re-exported here, so ``from lineage_lens.evals.chair import ...`` works):

* :mod:`~lineage_lens.evals.chair.text` -- steps 1-2: :func:`tokenize`, :func:`singularize`;
* :mod:`~lineage_lens.evals.chair.vocabulary` -- steps 3-5: :class:`ObjectVocabulary`,
  :func:`coco_double_words`, :class:`Mention`;
* :mod:`~lineage_lens.evals.chair.io` -- caption, ground-truth and COCO annotation files, image
  folders: :func:`load_captions`, :func:`load_ground_truth`, :func:`coco_ground_truth`,
  :func:`find_image_files`;
* :mod:`~lineage_lens.evals.chair.metric` -- :func:`compute_chair`, :class:`ChairResult` (no
  model code);
* :mod:`~lineage_lens.evals.chair.captions` -- :func:`generate_captions`, :class:`ChairCaptions`
  and :func:`evaluate_chair` (caption images with a model, then score them).
"""

from lineage_lens.evals.chair.captions import (
    CAPTION_MAX_NEW_TOKENS,
    CAPTION_PROMPT,
    ChairCaptions,
    evaluate_chair,
    generate_captions,
)
from lineage_lens.evals.chair.io import (
    COCO_FILE_PATTERN,
    Caption,
    captions_from_records,
    coco_ground_truth,
    find_image_files,
    load_captions,
    load_ground_truth,
)
from lineage_lens.evals.chair.metric import COUNTINGS, ChairResult, Counting, compute_chair
from lineage_lens.evals.chair.text import singularize, tokenize
from lineage_lens.evals.chair.vocabulary import (
    COCO_ANIMAL_WORDS,
    COCO_DOUBLE_WORDS,
    COCO_VEHICLE_WORDS,
    Mention,
    ObjectVocabulary,
    coco_double_words,
)
from lineage_lens.stats import chair_i_of_counts

__all__ = [
    "CAPTION_MAX_NEW_TOKENS",
    "CAPTION_PROMPT",
    "COCO_ANIMAL_WORDS",
    "COCO_DOUBLE_WORDS",
    "COCO_FILE_PATTERN",
    "COCO_VEHICLE_WORDS",
    "COUNTINGS",
    "Caption",
    "ChairCaptions",
    "ChairResult",
    "Counting",
    "Mention",
    "ObjectVocabulary",
    "captions_from_records",
    "chair_i_of_counts",
    "coco_double_words",
    "coco_ground_truth",
    "compute_chair",
    "evaluate_chair",
    "find_image_files",
    "generate_captions",
    "load_captions",
    "load_ground_truth",
    "singularize",
    "tokenize",
]
