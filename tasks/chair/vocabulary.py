"""The CHAIR object vocabulary: the 80 COCO classes, their synonyms, and the multi-word rules.

Rules (after Rohrbach et al. 2018; see docs/chair.md for where this differs from their script):
- every synonym maps to its COCO class; synonyms of several words ("motor bike", "teddy bear", "hot dog")
  are matched as one phrase, so "hot dog" is food and "teddy bear" is no bear;
- "baby"/"adult" before an animal word is the animal, not a person ("baby elephant" -> elephant);
  "passenger" before "jet"/"train" is the vehicle, not a person;
- "bow tie" -> tie, "toilet seat" -> toilet; "home plate" and "train track" are no objects;
- in a caption that says "toilet", "seat" is no chair.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import COCOAnnotationError

SYNONYMS_RESOURCE = "chair_synonyms.txt"

# Animal classes whose words, after "baby" or "adult", name the animal (the reference rule lists the class
# names plus "animal" and "cub"; we also accept every synonym of these classes, e.g. "baby goat").
ANIMAL_CLASSES = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
EXTRA_ANIMAL_WORDS = ("animal", "cub")
AGE_QUALIFIERS = ("baby", "adult")
PASSENGER_VEHICLES = {"jet": "airplane", "train": "train"}
# Phrases that contain an object word but name no object.
NON_OBJECT_PHRASES = ("home plate", "train track")
# Phrases that name a different class than their words would.
SPECIAL_PHRASES = {"bow tie": "tie", "toilet seat": "toilet"}


def read_synonyms(path: str | Path | None = None) -> tuple[str, list[list[str]]]:
    """The synonym file's text and its rows (class name first), stripped and lower-cased."""
    if path is None:
        text = resources.files("truthprobe_eval").joinpath("data", SYNONYMS_RESOURCE).read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    rows = []
    for line in text.splitlines():
        words = [" ".join(w.split()).lower() for w in line.split(",")]
        words = [w for w in words if w]
        if not words:
            continue
        rows.append(words)
    if not rows:
        raise COCOAnnotationError(f"expected one COCO class per line in the synonym file {path}, found none")
    return text, rows


@dataclass(frozen=True)
class ObjectVocabulary:
    """Word (or phrase) -> COCO class, phrase rules, and every single word that the rules look at."""

    classes: tuple[str, ...]
    synonym_to_class: dict[str, str]
    # phrase (space-separated lemmas) -> class, or None for phrases that name no object
    phrases: dict[str, str | None]
    max_phrase_words: int
    words: frozenset[str] = field(repr=False)
    fingerprint: str = ""

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ObjectVocabulary":
        """From a synonym file (default: the packaged CHAIR list)."""
        text, rows = read_synonyms(path)
        synonym_to_class: dict[str, str] = {}
        for row in rows:
            for word in row:
                synonym_to_class.setdefault(word, row[0])
        classes = tuple(row[0] for row in rows)

        phrases: dict[str, str | None] = {w: c for w, c in synonym_to_class.items() if " " in w}
        for phrase in NON_OBJECT_PHRASES:
            phrases[phrase] = None
        phrases.update(SPECIAL_PHRASES)
        animal_words = set(EXTRA_ANIMAL_WORDS)
        for word, name in synonym_to_class.items():
            if name in ANIMAL_CLASSES and " " not in word:
                animal_words.add(word)
        for qualifier in AGE_QUALIFIERS:
            for animal in animal_words:
                phrases[f"{qualifier} {animal}"] = synonym_to_class.get(animal)
        for vehicle, name in PASSENGER_VEHICLES.items():
            phrases[f"passenger {vehicle}"] = name

        words = {part for key in list(synonym_to_class) + list(phrases) for part in key.split()}
        words.update({"toilet", "seat"})
        fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(
            classes=classes,
            synonym_to_class=synonym_to_class,
            phrases=phrases,
            max_phrase_words=max(len(p.split()) for p in phrases),
            words=frozenset(words),
            fingerprint=fingerprint,
        )

    def class_of(self, word: str) -> str | None:
        return self.synonym_to_class.get(word)
