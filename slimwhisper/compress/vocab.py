"""Vocabulary pruning, part 1: which tokens a one-language transcriber keeps (issue 12).

The kept set is chosen from text, not guessed: a real corpus of the language is tokenised with
Whisper's own tokenizer and every token it uses is a candidate, weighted by how often the corpus
uses it. Always kept, whatever the budget: every id from ``<|endoftext|>`` up (special, language,
task, no-speech and all timestamp tokens), added tokens, and the 256 single-byte tokens, so any
text stays spellable. ``max_vocab`` keeps the N most useful tokens in all; ``coverage`` the smallest
set covering that fraction of the corpus's token occurrences; neither: every token the corpus uses.

Languages are a registry (``register_language``): a name -> a corpus function giving weighted
strings. English ("en") is the ``wordfreq`` package's word list (Speer et al., wordfreq 3.1: word
frequencies merged from Wikipedia, subtitles, news, books, web text, Reddit, Twitter), each word in
three casings, with and without the leading space Whisper's BPE attaches to words, plus numbers
and punctuation. The evaluation references are only *measured* (coverage), never used to select.

Part 2 (``compress/vocabprune.py``) slices the model to the kept ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from slimwhisper.errors import UserError, raise_problems

# Share of each written form of a word (wordfreq lists words in lower case). A guess about English
# text, documented as such: most words appear in lower case, sentence starts and names capitalised,
# a few shouted. Whisper's BPE tokenises a word after a space as " word" (a different token).
# Upper case is rare in transcripts; it is kept in the corpus so acronyms stay cheap to spell.
# wordfreq folds case, so names ("Rome") count as lower-case words: the capitalised share is generous.
# Tuned on the coverage of ljspeech/TRAIN transcripts (never an evaluation set): from 0.69/0.30/0.01
# and 0.95, the rarer forms' word pieces crowded out whole-word tokens (tokens kept at 30,000:
# 97.70% -> 98.08%).
CASINGS: tuple[tuple[Callable[[str], str], float], ...] = ((str.lower, 0.80), (str.capitalize, 0.195), (str.upper, 0.005))
SPACE_SHARE = 0.98  # " word" vs "word" (after a quote, a hyphen, at the very start)
# Punctuation as Whisper writes it, with rough shares of English running text (per word).
PUNCTUATION = {".": 0.05, ",": 0.05, "?": 0.006, "!": 0.003, "'": 0.004, '"': 0.006, " \"": 0.004, "-": 0.004,
               " -": 0.002, ":": 0.002, ";": 0.001, "...": 0.002, "(": 0.001, ")": 0.001, " (": 0.001, "%": 0.0005,
               "$": 0.0005, " $": 0.0005, " £": 0.0003, "£": 0.0001, " €": 0.0001, " &": 0.0002, ".\"": 0.002, ",\"": 0.002, "?\"": 0.001, "'s": 0.004}  # fmt: skip


class VocabError(UserError, ValueError):
    """Vocabulary pruning cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class Language:
    name: str
    corpus: Callable[[int], list[tuple[str, float]]]  # (top words) -> weighted strings
    describe: str


LANGUAGES: dict[str, Language] = {}


def register_language(lang: Language) -> Language:
    LANGUAGES[lang.name] = lang
    return lang


@dataclass(frozen=True)
class VocabConfig:
    """What ``--vocab LANG [--max-vocab N | --vocab-coverage F]`` asks for.

    ``words``: how many of the corpus's most frequent words are tokenised (wordfreq lists 321 k
    English words; past 50 k they add < 1 % of the token mass and mostly rare names).
    ``references``: labelled data sets whose text is tokenised only to REPORT coverage.
    ``texts``: labelled TRAINING sets whose reference text joins the corpus as running text
    (``text_share`` of its token mass); evaluation sets are refused, all-upper-case lines skipped
    (Whisper writes mixed case, so upper-case tokens would crowd out the ones it emits).
    """

    language: str = "en"
    max_vocab: int | None = None
    coverage: float | None = None
    words: int = 50_000
    references: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    text_share: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(str(r) for r in self.references))
        object.__setattr__(self, "texts", tuple(str(r) for r in self.texts))
        problems = []
        if not (isinstance(self.text_share, (int, float)) and not isinstance(self.text_share, bool) and 0 < self.text_share < 1):
            problems.append(f"text_share must be in (0, 1), got {self.text_share!r}")
        if self.texts:
            from slimwhisper.data import evaluation_problems

            problems += evaluation_problems(self.texts, use="choose the vocabulary")
        if self.language not in LANGUAGES:
            problems.append(f"unknown vocabulary language {self.language!r}; known: {', '.join(sorted(LANGUAGES))}")
        if self.max_vocab is not None and self.coverage is not None:
            problems.append("give --max-vocab or --vocab-coverage, not both")
        if self.max_vocab is not None and (isinstance(self.max_vocab, bool) or not isinstance(self.max_vocab, int)
                                           or self.max_vocab < 1):
            problems.append(f"--max-vocab must be a positive integer, got {self.max_vocab!r}")
        if self.coverage is not None and not (isinstance(self.coverage, (int, float)) and 0 < self.coverage <= 1):
            problems.append(f"--vocab-coverage must be in (0, 1], got {self.coverage!r}")
        if isinstance(self.words, bool) or not isinstance(self.words, int) or self.words < 1:
            problems.append(f"words must be a positive integer, got {self.words!r}")
        raise_problems(VocabError, "invalid vocabulary pruning settings", problems)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    kept: tuple[int, ...]  # original ids, ascending
    required: int  # how many of them are always kept (specials, timestamps, bytes, added tokens)
    source_vocab: int
    corpus_coverage: float  # fraction of the corpus's token occurrences whose token is kept
    corpus_tokens: int  # distinct tokens the corpus uses
    references: dict[str, dict] = field(default_factory=dict)  # data set -> coverage of its references

    def report(self) -> dict:
        return {"kept": len(self.kept), "required": self.required, "source_vocab": self.source_vocab,
                "corpus_tokens_used": self.corpus_tokens, "corpus_coverage": round(self.corpus_coverage, 6),
                "references": self.references}


# ---- corpus -----------------------------------------------------------------------------------------


def english_corpus(words: int) -> list[tuple[str, float]]:
    """wordfreq's English words (frequency-weighted) in common casings, +/- leading space; numbers;
    punctuation. wordfreq writes every digit as "0" ("1999" -> "0000"), so its digit entries are
    dropped and numbers are generated here with a 1/n (Zipf/Benford-like) weight."""
    try:
        import wordfreq
    except ImportError as exc:
        raise VocabError("vocabulary pruning needs the 'wordfreq' package: .venv/bin/pip install wordfreq==3.1.1 "
                         "(or `make install`)") from exc
    freq = wordfreq.get_frequency_dict("en")
    top = [w for w in sorted(freq, key=freq.get, reverse=True) if not any(c.isdigit() for c in w)][:words]
    out: list[tuple[str, float]] = []
    for w in top:
        forms: dict[str, float] = {}
        for case, share in CASINGS:
            c = case(w)
            forms[c] = forms.get(c, 0.0) + share  # "i" and "I": one form, summed shares
        for c, share in forms.items():
            out += [(" " + c, freq[w] * share * SPACE_SHARE), (c, freq[w] * share * (1 - SPACE_SHARE))]
    numbers = 1.5e-3  # share of numbers per word of text (rough), twice that for years: read speech
    # 1/n (Benford-like), with round numbers said far more often than their neighbours ("300", not "297")
    prior = [(10.0 if n % 100 == 0 else 3.0 if n % 10 == 0 else 1.0) / (n + 1) for n in range(10_000)]
    total = sum(prior)
    out += [(f" {n}", numbers * SPACE_SHARE * w / total) for n, w in enumerate(prior)]
    out += [(f"{n}", numbers * (1 - SPACE_SHARE) * w / total) for n, w in enumerate(prior)]
    out += [(f" {y}", 2 * numbers / 1100) for y in range(1000, 2100)]  # dates a lot ("in 1465")
    out += list(PUNCTUATION.items())
    return out


register_language(Language("en", english_corpus, "English: wordfreq 3.1 word list, casings, numbers, punctuation"))


# ---- selection ----------------------------------------------------------------------------------------


def required_ids(tokenizer) -> set[int]:
    """Ids kept whatever the budget: >= <|endoftext|> (specials, languages, tasks, no-speech,
    timestamps), added special tokens, the 256 single-byte tokens (GPT-2's byte alphabet), and
    every digit token (" 275", "000": 1,691 in Whisper's vocabulary). Whisper writes numbers with
    digits in every language, and a number whose usual token is gone comes out as words or loops:
    at 30,000 tokens chosen by frequency, tiny.en wrote "15,000" as "15,00" and " 275" as
    "$rt, $rt, ..." up to the token cap on ljspeech/dev."""
    vocab = tokenizer.get_vocab()
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    size = max(vocab.values()) + 1
    keep = set(range(int(eot), size))
    keep |= {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    single = {i for piece, i in vocab.items() if len(piece) == 1 and not piece.startswith("<|")}
    if len(single) < 256:
        raise VocabError(f"the tokenizer has {len(single)} single-byte tokens, expected 256: not a Whisper tokenizer")
    digits = {i for piece, i in vocab.items() if piece.lstrip("Ġ").isdigit() and piece.lstrip("Ġ").isascii()}
    return keep | single | digits


def encoder_for(tokenizer, log=print) -> Callable[[list[str]], list[list[int]]]:
    """The tokenizer's own BPE, unless it fails to reproduce its whole-word tokens (the bundled
    multilingual tokenizer encodes " the" as " ", "the" instead of its token " the", so its merges
    are not the ones the model was trained with); then a longest-match over the vocabulary
    pieces, which gives every common word its single token, as Whisper's tiktoken BPE does."""
    backend, vocab = tokenizer.backend_tokenizer, tokenizer.get_vocab()
    words = sorted((p for p in vocab if p.startswith("Ġ") and p[1:].isalpha() and len(p) > 3), key=vocab.get)[:2000]
    probe = backend.encode_batch([tokenizer.convert_tokens_to_string([p]) for p in words], add_special_tokens=False)
    broken = sum(e.ids != [vocab[p]] for p, e in zip(words, probe))
    if broken <= len(words) // 20:
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    log(f"  the tokenizer splits {broken} of {len(words)} of its own word tokens: choosing by longest match instead")
    longest = max(len(p) for p in vocab)

    def match(texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            ids = []
            for chunk, _ in backend.pre_tokenizer.pre_tokenize_str(text):
                i = 0
                while i < len(chunk):
                    j = min(len(chunk), i + longest)
                    while j > i + 1 and chunk[i:j] not in vocab:
                        j -= 1
                    ids.append(vocab[chunk[i:j]])
                    i = j
            out.append(ids)
        return out

    return match


def token_weights(encode: Callable[[list[str]], list[list[int]]], texts: Iterable[tuple[str, float]]) -> Counter:
    """Occurrence weight of every token id over weighted strings."""
    texts = list(texts)
    weights: Counter = Counter()
    for (_, w), ids in zip(texts, encode([t for t, _ in texts])):
        for i in ids:
            weights[i] += w
    return weights


def select_tokens(tokenizer, config: VocabConfig, log=print) -> Selection:
    """The kept ids (ascending) for ``config``, with the corpus's and references' coverage."""
    required = required_ids(tokenizer)
    size = max(tokenizer.get_vocab().values()) + 1
    encode = encoder_for(tokenizer, log)
    corpus = LANGUAGES[config.language].corpus(config.words)
    if config.texts:
        corpus += training_text(config.texts, config.text_share * sum(w for _, w in corpus) / (1 - config.text_share), log)
    weights = token_weights(encode, corpus)
    total = sum(weights.values())
    if total <= 0:
        raise VocabError(f"the {config.language!r} corpus covers no token of this tokenizer; "
                         "it is not a Whisper tokenizer for that language")
    if config.max_vocab is not None and config.max_vocab < len(required):
        raise VocabError(f"--max-vocab {config.max_vocab} is below the {len(required)} tokens that must be kept "
                         f"(special, language, task, timestamp, digit and 256 byte tokens); use --max-vocab {len(required)} or more")
    ranked = sorted((i for i in weights if i not in required), key=lambda i: (-weights[i], i))
    covered = sum(w for i, w in weights.items() if i in required)
    if config.max_vocab is not None:
        extra = ranked[: config.max_vocab - len(required)]
    elif config.coverage is not None:
        extra = []
        for i in ranked:
            if covered / total >= config.coverage:
                break
            extra.append(i)
            covered += weights[i]
    else:
        extra = ranked
    kept = tuple(sorted(required | set(extra)))
    kept_set = set(kept)
    cov = sum(w for i, w in weights.items() if i in kept_set) / total
    sel = Selection(kept, len(required), size, cov, len(weights))
    sel.references = {ref: reference_coverage(encode, ref, kept_set) for ref in config.references}
    log(f"vocabulary {config.language}: keeping {len(kept)} of {size} tokens ({len(required)} required), "
        f"corpus coverage {100 * cov:.2f}%")
    for ref, r in sel.references.items():
        log(f"  references {ref}: {100 * r['coverage']:.2f}% of {r['tokens']} tokens kept, "
            f"{r['utterances_fully_kept']}/{r['utterances']} utterances spelled with kept tokens only")
    return sel


def training_text(datasets: tuple[str, ...], mass: float, log=print) -> list[tuple[str, float]]:
    """Reference lines of labelled training sets as corpus strings sharing ``mass`` equally."""
    from slimwhisper.data import DataError, load_dataset

    lines, upper = [], 0
    for data in datasets:
        try:
            texts = [it.text.strip() for it in load_dataset(data).items if it.text and it.text.strip()]
        except DataError as exc:
            raise VocabError(f"--vocab-text {data}: {exc}") from exc
        mixed = [t for t in texts if t != t.upper()]
        upper += len(texts) - len(mixed)
        lines += mixed
    if not lines:
        raise VocabError(f"--vocab-text {', '.join(datasets)}: no mixed-case reference text to add (upper-case "
                         "transcripts would select tokens Whisper does not write)")
    log(f"  corpus + {len(lines)} training transcripts ({upper} all-upper-case lines skipped)")
    return [(" " + t, mass / len(lines)) for t in lines]


def reference_coverage(encode, data: str, kept: set[int]) -> dict:
    """How much of a labelled set's reference text the kept tokens cover (measured, never selected from)."""
    from slimwhisper.data import load_dataset

    texts = [it.text for it in load_dataset(data).items if it.text]
    enc = encode([" " + t.strip() for t in texts])
    n = sum(len(e) for e in enc)
    hit = sum(1 for e in enc for i in e if i in kept)
    full = sum(1 for e in enc if all(i in kept for i in e))
    return {"utterances": len(texts), "tokens": n, "coverage": round(hit / n, 6) if n else 1.0,
            "utterances_fully_kept": full}
