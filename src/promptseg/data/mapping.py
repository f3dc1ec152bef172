"""Map a dataset's label names to taxonomy classes, saying why, and never guessing silently.

Order of evidence for each label name (value 0 is always background):
1. user overrides (`--map NAME=CLASS`)                                -> source "user"
2. taxonomy synonyms ("IVC", "kidney_right", "gallbladder"); a paired-organ group name
   ("kidney", "kidneys") maps to the group and is split left/right later -> "synonym"
3. dataset context, for generic names like "cancer", "tumour", "vessel", "cyst": try
   "<context> <name>" through the synonyms, where the contexts are, first, the words of the
   dataset's name ("Task03_Liver" -> "liver"; "Task08_HepaticVessel" -> "hepatic", "vessel",
   "hepatic vessel") and, second, the classes (and paired groups) the dataset's other labels
   resolved to; within a tier longer phrases come first ("hepatic vessel tumour" before "hepatic
   tumour"). The first level with a hit decides: one class -> "synonym (context: liver cancer)";
   several classes ("liver tumor" and "pancreas tumor") make the label pending.
4. abbreviations ("lkid", "eso", "gall", "rad" in BTCV): always a proposal, never applied;
5. text-embedding similarity of the name against every class name and synonym (MiniLM):
   accepted when best >= `accept` AND best - runner-up >= `margin` -> "embedding 0.91";
   below `floor` the label is reported as "unmapped" (ignored); anything between is *pending*
   until the user confirms it, as is a name below `floor` whose spelling is close to a class
   ("arota" -> aorta). Synonym lookup also reads side markers: "Head_of_femur_L" -> left head of
   femur.
Context is only ever used through exact synonyms, never through embeddings, so "spinal cord" in
a liver dataset cannot drift to "liver".
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..errors import PromptsegError, TaxonomyError
from ..taxonomy import default_taxonomy, normalize
from .records import LabelMapping, PendingMapping


@dataclass
class MappingConfig:
    """Thresholds of the automatic mapping (cosine similarity of L2-normalised embeddings)."""

    accept: float = 0.85
    margin: float = 0.10
    floor: float = 0.55
    encoder: str = "minilm"
    n_candidates: int = 5


IGNORE_NAMES = {"ignore", "ignore label", "unlabeled", "unlabelled", "unknown"}
_STOP_WORDS = {"task", "dataset", "data", "set", "train", "training", "ct", "mr", "mri", "pet", "the", "of", "and"}


# --- names -------------------------------------------------------------------------------------
def _group_name(name: str, taxonomy) -> str | None:
    key = normalize(name)
    for cand in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
        if cand and taxonomy.is_group(cand):
            members = taxonomy.group_members(cand)
            return next(iter(members.values())).group
    return None


def resolve_name(name: str, taxonomy) -> str | None:
    """Canonical class or paired-group name for `name` through the taxonomy's synonyms, else None."""
    info = taxonomy.get(name)
    if info is not None:
        return info.name
    group = _group_name(name, taxonomy)
    if group:
        return group
    key = normalize(name)
    if key.endswith("s"):  # simple plurals: "hepatic vessels" is listed, "spleens" is not
        info = taxonomy.get(key[:-1])
        if info is not None:
            return info.name
    return _resolve_sided(key, taxonomy)


_SIDE_WORDS = {"l": "left", "lt": "left", "left": "left", "r": "right", "rt": "right", "right": "right"}


def _resolve_sided(key: str, taxonomy) -> str | None:
    """'Head_of_femur_L', 'R adrenal' -> that side's class of the paired group the rest names."""
    words = key.split()
    if len(words) < 2:
        return None
    for side_word, rest in ((words[-1], words[:-1]), (words[0], words[1:])):
        side = _SIDE_WORDS.get(side_word)
        if side is None:
            continue
        rest_key = " ".join(rest)
        info = taxonomy.get(rest_key)
        group = info.group if info is not None else _group_name(rest_key, taxonomy)
        member = taxonomy.group_members(group).get(side) if group else None
        if member is not None:
            return member.name
    return None


def _is_abbreviation(a: str, words: list[str]) -> bool:
    """`a` = a non-empty prefix of words[0] + an abbreviation of the next words (trailing words may
    be left out): 'lkid' ~ 'left kidney', 'gall' ~ 'gall bladder', 'rad' ~ 'right adrenal gland'."""
    if not a:
        return True
    if not words:
        return False
    w = words[0]
    for k in range(min(len(a), len(w)), 0, -1):
        if a[:k] == w[:k] and _is_abbreviation(a[k:], words[1:]):
            return True
    return False


def abbreviation_matches(name: str, taxonomy) -> list[tuple[str, float]]:
    """Classes/groups `name` abbreviates (one word, 3-8 letters), best covered first, score =
    letters given / letters of the spelling. Always a proposal, never applied silently."""
    key = normalize(name)
    if " " in key or not key.isalpha() or not 3 <= len(key) <= 8:
        return []
    best: dict[str, float] = {}
    for text, owner in zip(*_target_spellings(taxonomy)):
        if _is_abbreviation(key, text.split()):
            score = len(key) / len(text.replace(" ", ""))
            best[owner] = max(best.get(owner, 0.0), score)
    # a name that fits both sides of a paired organ ("adrenal") means the pair
    for group in {taxonomy.get(o).group for o in best if taxonomy.get(o) is not None} - {None}:
        sides = [m.name for m in taxonomy.group_members(group).values()]
        if all(n in best for n in sides):
            best[group] = max(best.pop(n) for n in sides)
    return sorted(best.items(), key=lambda kv: -kv[1])


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein + adjacent transpositions)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def typo_matches(name: str, taxonomy) -> list[tuple[str, float]]:
    """Classes whose spelling is within one edit per 6 letters of `name` ("arota" -> aorta)."""
    key = normalize(name)
    if len(key) < 4:
        return []
    limit = max(1, len(key) // 6)
    best: dict[str, float] = {}
    for text, owner in zip(*_target_spellings(taxonomy)):
        if abs(len(text) - len(key)) > limit:
            continue
        dist = _edit_distance(key, text)
        if dist <= limit:
            best[owner] = max(best.get(owner, 0.0), 1.0 - dist / max(len(key), len(text)))
    return sorted(best.items(), key=lambda kv: -kv[1])


def is_group_target(target: str, taxonomy) -> bool:
    return taxonomy.get(target) is None and taxonomy.is_group(target)


def canonical_target(name: str, taxonomy, where: str = "") -> str:
    """A manifest target written by a user ("IVC", "kidney") -> canonical class / group name."""
    got = resolve_name(name, taxonomy)
    if got is None:
        close = taxonomy.closest(name, 3)
        prefix = f"{where}: " if where else ""
        raise TaxonomyError(f"{prefix}unknown class {name!r}; closest known: {', '.join(map(repr, close))}")
    return got


def _split_words(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", str(text))
    words = [w.lower() for w in re.split(r"[^A-Za-z]+", text) if w]
    return [w for w in words if w not in _STOP_WORDS and len(w) > 1]


def dataset_context(names: Iterable[str], taxonomy=None) -> list[str]:
    """Context terms from a dataset's names: its words and its multi-word phrases, longest first."""
    out: list[str] = []
    for n in names:
        words = _split_words(n or "")
        for length in range(len(words), 0, -1):
            for i in range(len(words) - length + 1):
                phrase = " ".join(words[i:i + length])
                if phrase not in out:
                    out.append(phrase)
    return out


def _context_levels(contexts: list[str]) -> list[list[str]]:
    """Contexts grouped by word count, longest first: "hepatic vessel" outranks "hepatic"."""
    by_len: dict[int, list[str]] = {}
    for c in contexts:
        by_len.setdefault(len(normalize(c).split()), []).append(c)
    return [by_len[n] for n in sorted(by_len, reverse=True)]


def _context_hits(name: str, contexts: Sequence[str], taxonomy) -> dict[str, str]:
    """class -> the '<context> <name>' phrase that resolved to it (synonyms only)."""
    hits: dict[str, str] = {}
    key = normalize(name)
    for ctx in contexts:
        ctx = normalize(ctx)
        if not ctx or ctx == key:
            continue
        phrase = f"{ctx} {key}"
        got = resolve_name(phrase, taxonomy)
        if got is not None and got not in hits:
            hits[got] = phrase
    return hits


# --- similarity scorers ------------------------------------------------------------------------
class EmbeddingScorer:
    """Cosine similarity of names against every taxonomy class / group spelling (best spelling wins)."""

    kind = "embedding"
    auto = True

    def __init__(self, taxonomy, encoder: str = "minilm"):
        self.taxonomy = taxonomy
        self.encoder = encoder

    def __call__(self, queries: list[str]) -> list[list[tuple[str, float]]]:
        from ..text import get_text_encoder

        texts, owners = _target_spellings(self.taxonomy)
        enc = get_text_encoder(self.encoder)
        ref = _reference_embeddings(self.encoder, enc.identity, tuple(texts), enc)
        q = enc.encode([normalize(x) for x in queries])
        sims = (q @ ref.T).numpy()
        return [_rank(row, owners) for row in sims]


_REF_CACHE: dict[tuple, object] = {}


def _reference_embeddings(name: str, identity: str, texts: tuple[str, ...], enc):
    """Taxonomy spellings' embeddings: in memory, and on disk through the text package's cache."""
    key = (name, identity, texts)
    if key not in _REF_CACHE:
        from ..text import embed_classes

        _REF_CACHE[key] = embed_classes(list(texts), encoder=enc, template="{}")
    return _REF_CACHE[key]


class SpellingScorer:
    """Fallback when no text encoder is available: spelling ratio; never accepted without the user."""

    kind = "spelling"
    auto = False

    def __init__(self, taxonomy):
        self.taxonomy = taxonomy

    def __call__(self, queries: list[str]) -> list[list[tuple[str, float]]]:
        texts, owners = _target_spellings(self.taxonomy)
        out = []
        for q in queries:
            qn = normalize(q)
            row = [difflib.SequenceMatcher(None, qn, t).ratio() for t in texts]
            out.append(_rank(row, owners))
        return out


def _target_spellings(taxonomy) -> tuple[list[str], list[str]]:
    texts, owners = [], []
    for c in taxonomy.classes:
        for s in (c.name, *c.synonyms):
            key = normalize(s)
            if key not in texts:
                texts.append(key)
                owners.append(c.name)
    for g in sorted({c.group for c in taxonomy.classes if c.group}):
        texts.append(normalize(g))
        owners.append(g)
    return texts, owners


def _rank(row, owners: list[str]) -> list[tuple[str, float]]:
    best: dict[str, float] = {}
    for s, o in zip(row, owners):
        s = float(s)
        if s > best.get(o, -2.0):
            best[o] = s
    return sorted(best.items(), key=lambda kv: -kv[1])


def default_scorer(taxonomy, config: MappingConfig):
    """The embedding scorer when the text encoder loads, else the spelling fallback."""
    try:
        scorer = EmbeddingScorer(taxonomy, config.encoder)
        scorer(["liver"])  # load now, so a missing model falls back here and not half-way
        return scorer
    except (ImportError, OSError, PromptsegError) as exc:  # no text package / model files
        import warnings

        warnings.warn(f"text encoder {config.encoder!r} unavailable ({exc}); label names are matched by "
                      f"spelling and every match needs confirmation", stacklevel=2)
        return SpellingScorer(taxonomy)


# --- the mapping -------------------------------------------------------------------------------
RawLabel = tuple  # (value, name, values)


def map_labels(raw_labels: Sequence[RawLabel] | dict, taxonomy=None, context: Sequence[str] = (),
               config: MappingConfig | None = None, overrides: dict | None = None,
               scorer: Callable | None = None) -> tuple[list[LabelMapping], list[PendingMapping]]:
    """Label (value, name[, region values]) entries -> (accepted mappings, pending proposals)."""
    if taxonomy is None:
        taxonomy = default_taxonomy()
    config = config or MappingConfig()
    if isinstance(raw_labels, dict):
        raw_labels = [(int(k), str(v), []) for k, v in raw_labels.items()]
    entries = [(int(r[0]), str(r[1]), list(r[2]) if len(r) > 2 and r[2] else []) for r in raw_labels]
    seen: dict[int, str] = {}
    for value, name, values in entries:
        if not values:
            if value in seen:
                raise PromptsegError(f"label value {value} is named twice ({seen[value]!r} and {name!r})")
            seen[value] = name
    if 0 not in seen and not any(0 in v for _, _, v in entries):
        entries.insert(0, (0, "background", []))
    over = {normalize(str(k)): v for k, v in (overrides or {}).items()}

    labels: list[LabelMapping] = []
    pending: list[PendingMapping] = []
    unresolved: list[tuple[int, str, list[int]]] = []
    for value, name, values in entries:
        key = normalize(name)
        if key in over or str(value) in over:
            tgt = over.get(key, over.get(str(value)))
            if tgt is not None and normalize(str(tgt)) not in ("none", "null", "ignore", ""):
                tgt = canonical_target(str(tgt), taxonomy, where=f"--map {name}")
            else:
                tgt = None
            labels.append(LabelMapping(value, name, tgt, "user", values))
        elif value == 0 and not values:
            labels.append(LabelMapping(0, name, None, "background"))
        elif key in IGNORE_NAMES:
            labels.append(LabelMapping(value, name, None, "ignore", values))
        else:
            tgt = resolve_name(name, taxonomy)
            if tgt is not None:
                labels.append(LabelMapping(value, name, tgt, "synonym", values))
            else:
                unresolved.append((value, name, values))

    # dataset context for generic names: dataset-name words first, then the other labels' classes
    label_ctx: list[str] = []
    for m in labels:
        if m.target is None:
            continue
        label_ctx.append(m.target)
        info = taxonomy.get(m.target)
        if info is not None and info.group:
            label_ctx.append(info.group)
    still: list[tuple[int, str, list[int]]] = []
    for value, name, values in unresolved:
        decided = False
        for tier in _context_levels(list(context)) + _context_levels(label_ctx):
            hits = _context_hits(name, tier, taxonomy)
            if not hits:
                continue
            if len(hits) == 1:
                (tgt, phrase), = hits.items()
                labels.append(LabelMapping(value, name, tgt, f"synonym (context: {phrase})", values))
                decided = True
                break
            if len(hits) > 1:
                pending.append(PendingMapping(value, name, None, [(t, 1.0) for t in hits],
                                              "ambiguous context: " + " / ".join(hits.values()), values))
                decided = True
                break
        if not decided:
            still.append((value, name, values))

    rest = []
    for value, name, values in still:
        abbrev = abbreviation_matches(name, taxonomy)
        if abbrev:
            pending.append(PendingMapping(value, name, abbrev[0][0], abbrev[: config.n_candidates],
                                          f"abbreviation of {abbrev[0][0]!r}", values))
        else:
            rest.append((value, name, values))
    still = rest
    if still:
        scorer = scorer or default_scorer(taxonomy, config)
        ranked = scorer([n for _, n, _ in still])
        kind = getattr(scorer, "kind", "embedding")
        auto = getattr(scorer, "auto", True)
        for (value, name, values), row in zip(still, ranked):
            row = list(row)
            best_t, best = row[0] if row else (None, 0.0)
            second = row[1][1] if len(row) > 1 else -1.0
            src = f"{kind} {best:.2f}"
            if auto and best >= config.accept and best - second >= config.margin:
                labels.append(LabelMapping(value, name, best_t, src, values))
            elif auto and best < config.floor:
                typo = typo_matches(name, taxonomy)
                if typo:  # "arota" (AMOS) for "aorta"
                    cands = typo + [(c, v) for c, v in row if c not in dict(typo)]
                    pending.append(PendingMapping(value, name, typo[0][0], cands[: config.n_candidates],
                                                  f"spelling close to {typo[0][0]!r}", values))
                else:
                    labels.append(LabelMapping(value, name, None, "unmapped", values))
            else:
                why = src if best - second >= config.margin else f"{src}; runner-up {row[1][0]} {second:.2f}"
                pending.append(PendingMapping(value, name, best_t, row[: config.n_candidates], why, values))
    labels.sort(key=lambda m: m.value)
    pending.sort(key=lambda p: p.value)
    return labels, pending
