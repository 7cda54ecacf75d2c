"""CHAIR's text handling: the reference algorithm's tokeniser and singulariser.

The reference CHAIR (``utils/chair.py`` of LisaAnne/Hallucination) turns a caption into words in
two steps, both reproduced here with their quirks, because CHAIR's numbers depend on them:

1. :func:`tokenize`: lowercase the caption and tokenise it as NLTK's ``word_tokenize`` does
   (sentence split, then the Treebank rules: ``"dog's"`` -> ``dog``, ``'s``; ``"hot-dog"`` and
   ``"cat/dog"`` stay one token);
2. :func:`singularize`: singularise every token with the rules of ``pattern.en.singularize``:
   ``bus`` -> ``bu``, ``glass`` -> ``glas``, ``ties`` -> ``ty``, ``tennis`` -> ``tenni``,
   ``canoes`` -> ``cano``.

Joining two-word objects and matching synonyms is the vocabulary's part
(:mod:`lineage_lens.evals.chair.vocabulary`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# ------------------------------------------------------------------------------ singularize
# The noun rules of pattern.en.singularize (CLiPS Pattern 3.6, BSD; its rules adapted from Bermi
# Ferrer's Inflector, MIT), which the reference CHAIR applies to every token. Kept as they are,
# including the rules that misfire on singular words, because CHAIR's numbers depend on them.


def _split(text: str) -> list[str]:
    return text.split()


#: Second halves of compounds that are singularised on their first half ("mothers-in-law").
_COMPOUND_LINKS = frozenset(
    _split(
        "about above across after among around at athwart before behind below beneath beside "
        "besides between betwixt beyond but by during except for from in into near of off on onto "
        "out over since till to under until unto upon with"
    )
)
#: A word that is the end of one of these is returned unchanged ("sheep" is not among them).
_UNINFLECTED = _split(
    "bison bream breeches britches carp chassis christmas clippers cod contretemps corps debris "
    "diabetes djinn eland elk flounder gallows georgia graffiti headquarters herpes high-jinks "
    "homework innings jackanapes mackerel measles mews mumps news pincers pliers proceedings "
    "rabies salmon scissors series shears species swine swiss trout tuna whiting wildebeest "
    # uncountable nouns
    "advice bread butter cheese electricity equipment fruit furniture garbage gravel happiness "
    "information ketchup knowledge love luggage mathematics mayonnaise meat mustard news "
    "progress research rice sand software understanding water"
)
#: A word ending in one of these plus "s" is returned unchanged (Pattern 3.6: "cookies" stays;
#: "^pie" and "^tie" are literal, so they never match and "ties" becomes "ty").
_IE_WORDS = _split(
    "alergie auntie beanie birdie bogie bombie collie cookie cutie doggie eyrie freebie goonie "
    "groupie hankie hippie hoagie hottie indie junkie laddie laramie lingerie meanie newbie "
    "nightie oldie ^pie pixie quickie reverie rookie softie sortie stoolie sweetie techie ^tie "
    "toughie valkyrie veggie weenie yuppie zombie"
)
#: Irregular plural endings -> singular endings, tried in this order ("women" -> "woman").
_IRREGULAR: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split(":"))  # type: ignore[misc]
    for pair in _split(
        "atlantes:atlas atlases:atlas axes:axe beeves:beef brethren:brother children:child "
        "corpora:corpus corpuses:corpus ephemerides:ephemeris feet:foot ganglia:ganglion "
        "geese:goose genera:genus genii:genie graffiti:graffito helves:helve kine:cow "
        "leaves:leaf loaves:loaf men:man mongooses:mongoose monies:money moves:move "
        "mythoi:mythos numena:numen occipita:occiput octopodes:octopus opera:opus opuses:opus "
        "our:my oxen:ox penes:penis penises:penis people:person sexes:sex "
        "soliloquies:soliloquy teeth:tooth testes:testis trilbys:trilby turves:turf zoa:zoon"
    )
)
#: Suffix rules, the first that matches wins; the flag marks a case-insensitive rule (the -ves rules
#: of the original are case-sensitive). ``[octop|vir]`` and ``[m|l]`` are character classes in
#: the original too ("spaghetti" -> "spaghettus", "slice" -> "slouse").
_RULES_SPEC: tuple[tuple[str, str, bool], ...] = (
    (r"(.)ae$", r"\1a", True),
    (r"(.)itis$", r"\1itis", True),
    (r"(.)eaux$", r"\1eau", True),
    (r"(quiz)zes$", r"\1", True),
    (r"(matr)ices$", r"\1ix", True),
    (r"(ap|vert|ind)ices$", r"\1ex", True),
    (r"^(ox)en", r"\1", True),
    (r"(alias|status)es$", r"\1", True),
    (r"([octop|vir])i$", r"\1us", True),
    (r"(cris|ax|test)es$", r"\1is", True),
    (r"(shoe)s$", r"\1", True),
    (r"(o)es$", r"\1", True),
    (r"(bus)es$", r"\1", True),
    (r"([m|l])ice$", r"\1ouse", True),
    (r"(x|ch|ss|sh)es$", r"\1", True),
    (r"(m)ovies$", r"\1ovie", True),
    (r"(.)ombies$", r"\1ombie", True),
    (r"(s)eries$", r"\1eries", True),
    (r"([^aeiouy]|qu)ies$", r"\1y", True),
    (r"([aeo]l)ves$", r"\1f", False),
    (r"([^d]ea)ves$", r"\1f", False),
    (r"arves$", r"arf", False),
    (r"erves$", r"erve", False),
    (r"([nlw]i)ves$", r"\1fe", False),
    (r"([lr])ves$", r"\1f", True),
    (r"([aeo])ves$", r"\1ve", False),
    (r"(sive)s$", r"\1", True),
    (r"(tive)s$", r"\1", True),
    (r"(hive)s$", r"\1", True),
    (r"([^f])ves$", r"\1fe", True),
    (r"(^analy)ses$", r"\1sis", True),
    (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis", True),
    (r"(.)opses$", r"\1opsis", True),
    (r"(.)yses$", r"\1ysis", True),
    (r"(h|d|r|o|n|b|cl|p)oses$", r"\1ose", True),
    (r"(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose", True),
    (r"(.)oses$", r"\1osis", True),
    (r"([ti])a$", r"\1um", True),
    (r"(n)ews$", r"\1ews", True),
    (r"s$", "", True),
)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE if ci else 0), r) for p, r, ci in _RULES_SPEC
)


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The singular of a word as ``pattern.en.singularize`` (Pattern 3.6) gives it.

    This is the reference CHAIR's singulariser, applied to every token (not only nouns), with its
    misfires: ``"bus"`` -> ``"bu"``, ``"glass"`` -> ``"glas"``, ``"tennis"`` -> ``"tenni"``,
    ``"ties"`` -> ``"ty"``, ``"canoes"`` -> ``"cano"``, ``"cookies"`` unchanged. Plurals that
    matter for COCO come out right: ``people`` -> ``person``, ``women`` -> ``woman``, ``mice`` ->
    ``mouse``, ``knives`` -> ``knife``, ``buses`` -> ``bus``, ``glasses`` -> ``glass``,
    ``benches`` -> ``bench``, ``skis`` -> ``ski``, ``cherries`` -> ``cherry``.
    """
    if "-" in word:
        parts = word.split("-")
        if parts[1] in _COMPOUND_LINKS:  # mothers-in-law -> mother-in-law
            return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):  # dogs' -> dog's
        return singularize(word[:-1]) + "'s"
    low = word.lower()
    if any(u.endswith(low) for u in _UNINFLECTED):
        return word
    if any(low.endswith(ie + "s") for ie in _IE_WORDS):
        return low
    for plural, singular in _IRREGULAR:
        if low.endswith(plural):
            return re.sub(f"(?i){plural}$", singular, word)
    for pattern, replacement in _RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word, count=1)
    return word


# ------------------------------------------------------------------------------ tokenize
@lru_cache(maxsize=1)
def _nltk_tokenizers() -> tuple[Any, Any]:
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def tokenize(caption: str) -> list[str]:
    """The lowercased tokens of a caption as the reference CHAIR gets them.

    ``nltk.word_tokenize(caption.lower())``: Punkt sentence split, then NLTK's Treebank word
    rules on each sentence (punctuation tokens included). The sentence splitter is Punkt without
    NLTK's trained English parameters (which need a data download), so abbreviations such as
    ``"e.g."`` end a sentence here; that changes only the abbreviation's own token.
    """
    sentences, words = _nltk_tokenizers()
    text = caption.lower()
    return [tok for sent in sentences.tokenize(text) for tok in words.tokenize(sent)]
