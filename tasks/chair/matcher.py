"""Find the COCO objects a caption mentions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .nltk_text import LemmaTable, TextAnalyzer, build_lemma_table, check_nltk_data
from .vocabulary import ObjectVocabulary


@dataclass(frozen=True)
class Mention:
    words: str  # the matched lemma or phrase, e.g. "dog", "baby elephant"
    object: str  # its COCO class, e.g. "dog", "elephant"


@dataclass(frozen=True)
class CaptionObjects:
    n_words: int  # tokens with a letter or digit (punctuation is no word)
    mentions: tuple[Mention, ...]

    @property
    def objects(self) -> list[str]:
        return [m.object for m in self.mentions]


def match_objects(lemmas: Sequence[str], vocabulary: ObjectVocabulary) -> list[Mention]:
    """Object mentions in a lemmatized caption: longest phrase first, then the toilet-seat rule."""
    units: list[tuple[str, str | None]] = []
    i = 0
    while i < len(lemmas):
        for n in range(min(vocabulary.max_phrase_words, len(lemmas) - i), 1, -1):
            phrase = " ".join(lemmas[i : i + n])
            if phrase in vocabulary.phrases:
                units.append((phrase, vocabulary.phrases[phrase]))
                i += n
                break
        else:
            units.append((lemmas[i], vocabulary.class_of(lemmas[i])))
            i += 1
    says_toilet = any(name == "toilet" for _, name in units)
    return [
        Mention(words, name)
        for words, name in units
        if name is not None and not (says_toilet and words == "seat")
    ]


class ObjectMatcher:
    """Caption -> word count and COCO object mentions, with NLTK and the CHAIR vocabulary."""

    def __init__(self, vocabulary: ObjectVocabulary | None = None, lemma_table: LemmaTable | None = None):
        # all missing packages in one message; WordNet only where there is no lemma table to use yet
        check_nltk_data(["punkt_tab", "averaged_perceptron_tagger_eng"] + (["wordnet"] if lemma_table is None else []))
        self.vocabulary = vocabulary or ObjectVocabulary.load()
        self.lemma_table = lemma_table if lemma_table is not None else build_lemma_table(self.vocabulary.words)
        self._text = TextAnalyzer(self.lemma_table)

    def analyse(self, captions: Sequence[str]) -> list[CaptionObjects]:
        out = []
        for tokens, lemmas in self._text.lemmas(captions):
            n_words = sum(any(ch.isalnum() for ch in tok) for tok in tokens)
            out.append(CaptionObjects(n_words, tuple(match_objects(lemmas, self.vocabulary))))
        return out

    def __call__(self, caption: str) -> CaptionObjects:
        return self.analyse([caption])[0]
