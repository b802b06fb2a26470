"""NLTK for CHAIR: tokenization, part-of-speech tagging and WordNet lemmatization, offline.

Loading WordNet takes seconds, yet CHAIR only needs the lemmas that land on a word of its object
vocabulary. ``build_lemma_table`` asks WordNet once for every surface form that can reach such a word (the
inverse of WordNet's own suffix rules, plus its irregular forms); any other token keeps its own spelling,
which matches nothing either way. The table is cached with the ground truth, so a cached run never loads
WordNet.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

from .errors import NLTKDataMissingError

# NLTK package -> resource paths that hold it (any one will do; WordNet ships zipped)
NLTK_PACKAGES: dict[str, tuple[str, ...]] = {
    "punkt_tab": ("tokenizers/punkt_tab/english/",),
    "averaged_perceptron_tagger_eng": ("taggers/averaged_perceptron_tagger_eng/",),
    "wordnet": ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"),
}
WORDNET_POS = ("n", "v", "a", "r")
LemmaTable = dict  # pos -> {surface form: lemma}


def _import_nltk():
    try:
        import nltk
    except ImportError as exc:
        raise NLTKDataMissingError(
            "CHAIR needs the nltk package, found it not installed: pip install 'truthprobe-eval[chair]'"
        ) from exc
    return nltk


def _sync_nltk_path() -> None:
    """Honour ``NLTK_DATA`` even when it was set after NLTK was imported."""
    nltk = _import_nltk()

    for folder in reversed(os.environ.get("NLTK_DATA", "").split(os.pathsep)):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)


def check_nltk_data(packages: Iterable[str] = tuple(NLTK_PACKAGES)) -> None:
    """Raise ``NLTKDataMissingError`` naming every missing package, with the command that installs them."""
    nltk = _import_nltk()

    _sync_nltk_path()
    missing = []
    for package in packages:
        for resource in NLTK_PACKAGES[package]:
            try:
                nltk.data.find(resource)
                break
            except LookupError:
                continue
        else:
            missing.append(package)
    if missing:
        names = " ".join(missing)
        raise NLTKDataMissingError(
            f"CHAIR needs the NLTK data packages {', '.join(missing)}, found them missing in "
            f"{os.pathsep.join(map(str, nltk.data.path))}. Install them with `python -m nltk.downloader {names}` "
            f"or point NLTK_DATA at a folder that holds them (e.g. ../shared/nltk_data)."
        )


def wordnet_pos(tag: str) -> str:
    """Penn Treebank tag -> WordNet part of speech; anything that is no adjective/verb/adverb is a noun."""
    return {"J": "a", "V": "v", "R": "r"}.get(tag[:1], "n")


def build_lemma_table(vocabulary_words: Iterable[str]) -> LemmaTable:
    """For each part of speech, the WordNet lemma of every surface form whose lemma may be a vocabulary word.

    The lemma is WordNet's shortest, as ``WordNetLemmatizer.lemmatize`` picks it, except that for nouns a
    lemma in the vocabulary wins: WordNet reads "men" as "men" (tied with "man", listed first) and "vases" as
    "vas", which would hide a person and a vase. Verbs keep WordNet's choice ("bore" stays no "bear").
    """
    check_nltk_data(["wordnet"])
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    vocab = set(vocabulary_words)
    table: LemmaTable = {}
    for pos in WORDNET_POS:
        forms = set(vocab)
        for lemma in vocab:
            for ending, base in wn.MORPHOLOGICAL_SUBSTITUTIONS[pos]:
                if lemma.endswith(base):
                    forms.add(lemma[: len(lemma) - len(base)] + ending)
        for form, bases in wn._exception_map[pos].items():
            if vocab.intersection(bases):
                forms.add(form)
        table[pos] = {}
        for form in forms:
            candidates = wn._morphy(form, pos)
            preferred = (pos == "n" and [c for c in candidates if c in vocab]) or candidates
            lemma = min(preferred, key=len) if preferred else form
            if lemma != form or form in vocab:
                table[pos][form] = lemma
    return table


class TextAnalyzer:
    """Lower-case, tokenize (Punkt + Treebank), tag (averaged perceptron) and lemmatize captions."""

    def __init__(self, lemma_table: LemmaTable):
        check_nltk_data(["punkt_tab", "averaged_perceptron_tagger_eng"])
        from nltk.tag.perceptron import PerceptronTagger

        self._tagger = PerceptronTagger(lang="eng")
        self._lemmas = lemma_table

    def tokens(self, caption: str) -> list[str]:
        import nltk

        return nltk.word_tokenize(caption.lower())

    def lemmas(self, captions: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        """Per caption: its tokens and their lemmas."""
        tokenized = [self.tokens(c) for c in captions]
        tagged = self._tagger.tag_sents(tokenized)
        out = []
        for tokens, tags in zip(tokenized, tagged):
            lemmas = [self._lemmas[wordnet_pos(tag)].get(tok, tok) for tok, (_, tag) in zip(tokens, tags)]
            out.append((tokens, lemmas))
        return out
