"""CHAIR: object hallucination in image captions, against COCO ground truth (Rohrbach et al. 2018).

The metric is this package (imports no VLMEvalKit); ``vlmeval_dataset`` is the offline VLMEvalKit data set (its
image sample, prompt and caption length) scored by it.

    from truthprobe_eval.tasks.chair import CHAIREvaluator
    evaluator = CHAIREvaluator.from_coco("annotations/")            # cached after the first build
    result = evaluator.score([{"image_id": 42, "caption": "A dog on a couch."}])
    result["CHAIRs"], result["CHAIRi"], result["recall"], result["len"]

Needs ``pycocotools`` and ``nltk`` (the ``[chair]`` extra) and the NLTK data packages ``punkt_tab``,
``averaged_perceptron_tagger_eng`` and ``wordnet`` (``NLTK_DATA``). See docs/chair.md.
"""
from __future__ import annotations

from .captions import read_captions
from .errors import CHAIRInputError, COCOAnnotationError, NLTKDataMissingError
from .evaluator import CHAIREvaluator
from .ground_truth import default_cache_dir, find_annotation_files
from .matcher import CaptionObjects, Mention, ObjectMatcher
from .nltk_text import NLTK_PACKAGES, check_nltk_data
from .vocabulary import ObjectVocabulary

__all__ = [
    "CHAIREvaluator",
    "CHAIRInputError",
    "COCOAnnotationError",
    "CaptionObjects",
    "Mention",
    "NLTKDataMissingError",
    "NLTK_PACKAGES",
    "ObjectMatcher",
    "ObjectVocabulary",
    "check_nltk_data",
    "default_cache_dir",
    "find_annotation_files",
    "read_captions",
]
