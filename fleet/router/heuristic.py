"""The heuristic content classifier: a 1-5 score from what the request asks for.

The score starts at ``thresholds.base_score`` (3, standard) and each feature found in the *ask*
adds its weight once: design, security, proofs, ambiguity, stakes (money, law, health, people) and
decisions about consequential actions push it up, as does a bare report of an incident; mechanical,
bounded and precisely specified work (in any domain: translate, convert, format, apply a formula to
given numbers) pulls it down. The ask is the prompt without pasted material (fenced blocks, code and
log lines, and a document introduced by "Here is the log:"), so a long pasted input never makes a
job look hard by its length or by the words inside it. Score 1-2 -> mini, 3 -> standard, 4-5 -> full.
Every feature that counts adds a reason.

Keyword sets are indexed by word once per settings object (a small cache keyed by its identity),
never per call (:mod:`fleet.router.phrases`); a regex alternation per set cost tens of microseconds.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fleet.models import RoutingDecision, TaskRequest, Tier
from fleet.router.config import HeuristicSettings, RouterSettings
from fleet.router.phrases import WORD_RE as _WORD_RE
from fleet.router.phrases import PhraseIndex, index_phrases

__all__ = ["CLASSIFIER", "AskText", "classify", "score_request", "split_ask", "tier_for_score"]

#: The ``classifier`` name on decisions made here.
CLASSIFIER = "heuristic"

# Lines ending with ':' ("Here is the log:"), candidates for the line that introduces pasted input.
_COLON_LINE_RE = re.compile(r"^[^\n]{1,300}:[ \t]*$", re.M)
# Only the start of a prompt is searched for that introduction.
_INTRO_SCAN_CHARS = 4000
# Fenced blocks; an unclosed fence runs to the end of the prompt.
_FENCE_RE = re.compile(r"(```|~~~).*?(?:\1|\Z)", re.S)
# Lines that are code, logs, diffs or data rather than instructions.
_CODE_LINE_RE = re.compile(
    r"^(?:"
    r"(?:    |\t).*"  # indented block
    r"|.*[;{}]\s*"  # statement or brace line
    r"|\s*(?:def|class|import|from|return|function|const|let|var|public|private|package|func|fn)\s.*"
    r"|\s*(?:#include|@@ |\+\+\+ |--- ).*"
    r"|\s*(?:select|insert|update|delete|create table)\s.*\b(?:from|into|set|where)\b.*"
    r"|\s*\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d.*"  # timestamped log line
    r"|\s*(?:at [\w.$<>]+\(|File \"|Traceback|Caused by:|Exception in|panic:|goroutine \d).*"
    r"|\s*[<\[{\]}].*"  # markup, JSON, arrays
    r"|\s*\"[^\"\n]{1,80}\"\s*:.*"  # JSON key
    r"|(?:[^\n,]*,(?! )){4,}[^\n,]*"  # CSV row (no space after its commas, unlike prose)
    r")$",
    re.M | re.I,
)
# Paths such as src/api/routes.py or ./deploy/values.yaml (a slash, or a known source extension).
_PATH_RE = re.compile(
    r"(?<![\w/.])(?:[\w.-]+/)+[\w.-]+\.\w{1,6}\b"
    r"|(?<![\w/.])[\w-]+\.(?:py|pyi|js|jsx|ts|tsx|go|rs|java|kt|rb|php|cs|cpp|cc|c|h|hpp|swift|scala|sql"
    r"|sh|yaml|yml|toml|json|tf|proto|vue|svelte|html|css|md)\b"
)
# How a trailing ask after a pasted block usually starts ("What is wrong here?", "Please ...").
_ASK_START_RE = re.compile(
    r"(?:please|now|then|also|so|and|what|why|how|which|where|when|who|can|could|would|is|are|does|do|"
    r"should|find|fix|explain|summari[sz]e|write|give|tell|list|identify|review|rewrite|return|make|add|"
    r"create|draft|translate|extract|classify|format|convert|answer|reply|respond|based on|using|given)\b",
    re.I,
)


# Features that lower the score; a hard feature overrules them.
_EASY = frozenset({"mechanical", "light", "bounded_code", "precise"})


@dataclass(frozen=True, slots=True)
class AskText:
    """The prompt split into the ask (what is asked) and the count of pasted characters."""

    ask: str
    pasted_chars: int


# Keyed by id(settings); the settings object is kept in the value so its id cannot be reused.
# Settings are treated as immutable once used: mutate a copy, not the cached object.
_CACHE: dict[int, tuple[HeuristicSettings, PhraseIndex]] = {}
_CACHE_SIZE = 8
_CACHE_LOCK = threading.Lock()
# Category indexes of the sets that are not scored directly.
_INSTRUCTIONS, _VERBS, _DEBUGGING, _COMPONENTS = range(-4, 0)


def _compile(settings: HeuristicSettings) -> PhraseIndex:
    kw, w = settings.keywords, settings.weights
    spec = [
        ("hard", kw.hard, w.hard, "needs design or deep judgement"),
        ("ambiguous", kw.ambiguous, w.ambiguous, "open or ambiguous goal"),
        ("stakes", kw.stakes, w.stakes, "high stakes"),
        ("mechanical", kw.mechanical, w.mechanical, "mechanical task"),
        ("light", kw.light, w.light, "light generative task"),
        ("precise", kw.precise, w.precise, "precisely specified output"),
        ("bounded_code", kw.bounded_code, w.bounded_code, "small, bounded code ask"),
        ("judgement", kw.judgement, w.judgement, "asks for judgement"),
        ("decision", kw.decision, w.decision, "asks whether to act"),
        ("consequential", kw.consequential, w.consequential, "consequential action"),
        ("audience", kw.audience, w.audience, "consequential audience"),
        ("general", kw.general, 0.0, "general explanation"),
        ("instructions", kw.instructions, 0.0, "instruction"),
        ("mechanical_verbs", kw.mechanical_verbs, 0.0, "mechanical verb"),
        ("debugging", kw.debugging, 0.0, "debugging"),
        ("components", kw.components, 0.0, "components"),
        ("pasted_cues", kw.pasted_cues, 0.0, "names pasted input"),
        ("pasted_pointers", kw.pasted_pointers, 0.0, "points at pasted input"),
    ]
    # The cue and pointer sets only find where pasted input starts: matched apart, on a few lines.
    main = index_phrases(spec[:-2])
    return PhraseIndex(
        main.categories, main.exact, main.pairs, main.pair_words, main.stems, intro=index_phrases(spec[-2:])
    )


def _compiled(settings: HeuristicSettings) -> PhraseIndex:
    hit = _CACHE.get(id(settings))
    if hit is not None and hit[0] is settings:
        return hit[1]
    compiled = _compile(settings)
    with _CACHE_LOCK:  # router workers run threads
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[id(settings)] = (settings, compiled)
    return compiled


def split_ask(prompt: str, settings: HeuristicSettings) -> AskText:
    """Separate what is asked from what is pasted (code, logs, documents)."""
    c = _compiled(settings)
    th = settings.thresholds
    text = prompt
    if "```" in text or "~~~" in text:
        text = _FENCE_RE.sub("\n\n", text)
    cut = _intro_end(text, c)
    if cut is not None:
        head, body = text[:cut], text[cut:]
        rest, sep, last = body.rstrip().rpartition("\n\n")
        tail = ""
        # An instruction after the pasted block ("What is the root cause?") is part of the ask.
        if sep and rest.strip() and len(last) <= 400:
            last = last.strip()
            if last.endswith("?") or _ASK_START_RE.match(last):
                tail = last
        text = f"{head}\n\n{tail}" if tail else head
    if len(text) > th.ask_head_chars + th.ask_tail_chars:
        tail_part = text[-th.ask_tail_chars :] if th.ask_tail_chars else ""
        text = text[: th.ask_head_chars] + "\n" + tail_part
    if len(text) > 200:
        text = _CODE_LINE_RE.sub("", text)
    ask = text.strip()
    return AskText(ask=ask, pasted_chars=max(0, len(prompt) - len(ask)))


def _intro_end(text: str, c: PhraseIndex) -> int | None:
    """Where pasted material starts: after a line like "Logs:" or a first paragraph like
    "Summarize this article." followed by more text; None when nothing points at pasted input."""
    intro = c.intro
    if intro is None:  # an index built without the cue and pointer sets: nothing points at a paste
        return None
    end: int | None = None
    for line in _COLON_LINE_RE.finditer(text, 0, _INTRO_SCAN_CHARS):
        if line.end() < len(text.rstrip()) and intro.match(line.group(0).lower())[0]:
            end = line.end()
            break
    brk = text.find("\n\n", 0, end if end is not None else _INTRO_SCAN_CHARS)
    if brk > 0 and text[brk:].strip() and intro.match(text[:brk].lower())[1]:
        end = brk
    return end


def tier_for_score(score: int) -> Tier:
    """1-2 -> mini, 3 -> standard, 4-5 -> full."""
    if score <= 2:
        return Tier.MINI
    if score == 3:
        return Tier.STANDARD
    return Tier.FULL


def _quoted(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def _points(value: float) -> str:
    return f"{value:+g}"


@dataclass(slots=True)
class _Scored:
    """What one ask showed: its text, the keyword hits per set, the features that fired."""

    request: TaskRequest
    settings: HeuristicSettings
    split: AskText
    #: The ask in lowercase, after the job label of ``kind``, and its words.
    text: str
    words: list[str]
    #: How many of ``words`` are the kind's label (they come first).
    label_words: int
    matched: list[list[str]]
    found: dict[str, list[str]]
    fired: set[str]


# A structural feature: the points it adds and its reason, or None when it does not apply.
_Feature = Callable[[_Scored], tuple[float, str] | None]

# Features that mean the ask needs judgement: they keep the discounts for bounded work from applying.
_NEEDS_JUDGEMENT = frozenset(
    {
        "hard",
        "ambiguous",
        "stakes",
        "audience",
        "judgement",
        "cross_component",
        "decision",
        "consequential_decision",
    }
)
# What may stand before a mechanical verb that is what is asked: a clause break, or "please", "then"...
_LEAD_WORDS = r"\b(?:please|pls|then|and|also|just|now|you|kindly)"
_LEAD_BEFORE_RE = re.compile(rf"(?:[.!?:;\n(]|{_LEAD_WORDS})[\s\"'*>-]*$")
# What may stand before an instruction that opens a clause (a comma too: "From the CSV, pull...").
_CLAUSE_BEFORE_RE = re.compile(rf"(?:[.!?:;,\n(]|{_LEAD_WORDS})[\s\"'*>-]*$")
# A colon that introduces a specification or input ("Excel formula: ...", "Translate this:").
_SPEC_COLON_RE = re.compile(r":(?:\s|$)")
# Irregular past tenses that narrate what happened (regular ones end in -ed).
_PAST_TENSE = frozenset(
    "took got went gave sent left found came made said told saw lost broke fell paid began ran wrote "  # noqa: SIM905
    "spent gone been".split()
)
# Compiled patterns of mechanical verbs, by the words found.
_LEAD_PATTERNS: dict[str, re.Pattern[str]] = {}
# The keyword sets that put something at stake.
_AT_STAKE = ("stakes", "audience", "consequential")
# Words that open a yes/no question ("Is this legal?", "Can we sign?", "Fine?").
_AUXILIARIES = frozenset(  # a word list reads better as words
    "is are was were am do does did can could should shall will would may might must has have had ok "  # noqa: SIM905
    "okay fine".split()
)
# Words that may open a question before its first real word ("And can we...?").
_CONJUNCTIONS = frozenset(["and", "but", "so", "or", "then", "also"])
# Words that open a question for information, not about whether to act.
_QUESTION_WORDS = frozenset(["what", "which", "who", "whom", "whose", "when", "where", "why", "how"])
# Features that make numbers in the ask more than values to work on.
_NOT_ARITHMETIC = (_NEEDS_JUDGEMENT - {"judgement"}) | {"general"}
_DIGIT_RE = re.compile(r"\d")
# A run of letters (a word that is not a number).
_ALPHA_RE = re.compile(r"[^\W\d_]+")
# A number in the ask: 12, 1,482.5, 3/7, 70%, $84, 2.3e-5 (not a time such as 02:14).
_NUMBER_RE = re.compile(r"(?<![\w.:])[$€£]?\d[\d,.]*(?:e-?\d+)?%?(?:/\d+)?(?![\w:])", re.I)


def _cross_component(s: _Scored) -> tuple[float, str] | None:
    w, th = s.settings.weights, s.settings.thresholds
    debugging, components = s.matched[_DEBUGGING], s.matched[_COMPONENTS]
    if not (debugging and w.cross_component and len(components) >= th.components):
        return None
    return w.cross_component, (
        f"debugging ({_quoted(debugging[:2])}) across {len(components)} components "
        f"{_quoted(components[:4])} ({_points(w.cross_component)})"
    )


def _many_files(s: _Scored) -> tuple[float, str] | None:
    w, th = s.settings.weights, s.settings.thresholds
    files = {f.strip() for f in s.request.hints.files if f.strip()}
    files.update(_PATH_RE.findall(s.split.ask))
    if not (w.many_files and len(files) >= th.many_files):
        return None
    return w.many_files, f"touches {len(files)} files ({_points(w.many_files)})"


def _response_schema(s: _Scored) -> tuple[float, str] | None:
    w = s.settings.weights.response_schema
    if s.request.response_schema is None or not w:
        return None
    return w, f"response_schema fixes the output ({_points(w)})"


def _consequential_decision(s: _Scored) -> tuple[float, str] | None:
    """Whether to act, asked about money, people, irreversible operations, law or health."""
    w = s.settings.weights.consequential_decision
    stakes = [hit for name in _AT_STAKE if name in s.fired for hit in s.found[name]]
    if not (w and stakes):
        return None
    asked = s.found["decision"] or _yes_no_question(s.split.ask, s.found["consequential"])
    if not asked:
        return None
    return w, f"asks whether to act ({_quoted(asked[:2])}) on {_quoted(stakes[:3])} ({_points(w)})"


def _yes_no_question(ask: str, actions: list[str]) -> list[str]:
    """The opening of a yes/no question ("Do we restate?", "Is this headline defamatory?") or of one
    about a consequential action ("Kill it?", "Void and reissue the invoices?"), if the ask has one;
    a question for information ("Which emails mention a refund?") is not one."""
    end = ask.find("?")
    while end >= 0:
        # The question runs back to the previous sentence break (a regex would backtrack on long asks).
        start = max(
            ask.rfind(".", 0, end), ask.rfind("!", 0, end), ask.rfind("?", 0, end), ask.rfind("\n", 0, end)
        )
        text = ask[start + 1 : end].lower()
        end = ask.find("?", end + 1)
        opening = _WORD_RE.findall(text)[:5]
        words = [w.partition("'")[0] for w in opening]
        while words and words[0] in _CONJUNCTIONS:
            words.pop(0)
        if not words:
            continue
        word = words[0]
        if word in _AUXILIARIES or (word not in _QUESTION_WORDS and any(a in text for a in actions)):
            return [" ".join(opening[:3])]
    return []


def _narrates(words: list[str]) -> bool:
    """Whether the words narrate an event: a verb in the past tense, or "is/are ...ing"."""
    for i, word in enumerate(words):
        if (len(word) > 4 and word.endswith("ed")) or word in _PAST_TENSE:
            return True
        if word in ("is", "are", "was", "were") and i + 1 < len(words) and words[i + 1].endswith("ing"):
            return True
    return False


def _situation(s: _Scored) -> tuple[float, str] | None:
    """A report of what happened that asks nothing ("EDR flagged mimikatz on a domain controller"):
    what matters, and what to do, is left to judgement."""
    w, ask = s.settings.weights.situation, s.split.ask
    if not w or len(ask) > s.settings.thresholds.situation_chars or "?" in ask or _SPEC_COLON_RE.search(ask):
        return None
    asked = s.matched[_INSTRUCTIONS] + s.matched[_VERBS]
    words = s.words[s.label_words :]
    if words and words[0] in asked:  # the usual instruction: "Write ...", "Convert ..."
        return None
    if not _narrates(words) or any(_leads(s.text, hit, 0, _CLAUSE_BEFORE_RE) for hit in asked):
        return None
    return w, f"reports a situation and asks nothing: what matters is left to judge ({_points(w)})"


def _input_bound(s: _Scored) -> tuple[float, str] | None:
    w, th = s.settings.weights.input_bound, s.settings.thresholds
    if not w or s.split.pasted_chars < th.input_bound_chars or s.fired & _NEEDS_JUDGEMENT:
        return None
    return w, f"works only on the pasted input, no judgement asked ({_points(w)})"


def _given_values(s: _Scored) -> tuple[float, str] | None:
    """A short ask made mostly of the numbers it works on: arithmetic, conversion, ordering."""
    w, th = s.settings.weights.given_values, s.settings.thresholds
    ask = s.split.ask
    # "Evaluate f(x) at x = 2" is arithmetic; "what does this 95% interval mean" is an explanation.
    if not w or len(ask) > th.given_values_chars or s.fired & _NOT_ARITHMETIC:
        return None
    if _explanatory(s.words[s.label_words :]):
        return None
    numbers = len(_NUMBER_RE.findall(ask)) if _DIGIT_RE.search(ask) else 0
    if numbers < th.given_values_min or numbers < th.given_values_share * (
        numbers + len(_ALPHA_RE.findall(ask))
    ):
        return None
    return w, f"works on {numbers} given values ({_points(w)})"


def _explanatory(words: list[str]) -> bool:
    """A question that asks for an explanation ("why", "how does", "what does ... mean"), not a
    lookup ("how many days", "what is the capital")."""
    if "why" in words:
        return True
    if "how" not in words and "what" not in words:
        return False
    for word, after in zip(words, [*words[1:], ""], strict=True):
        if (word == "how" and after in _AUXILIARIES) or (word == "what" and after in ("does", "do")):
            return True
    return False


def _short_question(s: _Scored) -> tuple[float, str] | None:
    w, th = s.settings.weights.short_question, s.settings.thresholds
    question = s.split.ask
    if (
        not w
        or len(question) > th.short_question_chars
        or not question.endswith("?")
        or "\n" in question
        or _explanatory(s.words[s.label_words :])
        or s.fired & (_NEEDS_JUDGEMENT - {"judgement"})
        # A question about pasted input that asks for judgement ("Is this derivation right?").
        or ("judgement" in s.fired and s.split.pasted_chars)
    ):
        return None
    return w, f"quick one-line question ({_points(w)})"


#: Structural features in the order they are checked (a later one may depend on an earlier one).
_FEATURES: tuple[tuple[str, _Feature], ...] = (
    ("cross_component", _cross_component),
    ("many_files", _many_files),
    ("response_schema", _response_schema),
    ("consequential_decision", _consequential_decision),
    ("situation", _situation),
    ("input_bound", _input_bound),
    ("given_values", _given_values),
    ("short_question", _short_question),
)


def _overruled(s: _Scored) -> dict[str, str]:
    """Keyword sets that do not count for this ask, each with why."""
    overruled: dict[str, str] = {}
    if "hard" in s.fired:
        # Under-routing costs more than over-routing: a design or proof ask is not made cheap by a
        # mechanical word in it ("show that any comparison sort...", "extract a plan for the migration").
        overruled.update(dict.fromkeys(_EASY, "the ask also needs design or deep judgement"))
    if (
        "general" in s.fired
        and not s.fired & {"decision", "consequential"}
        and s.split.pasted_chars < s.settings.thresholds.input_bound_chars
    ):
        # Explaining GDPR to a sales team is ordinary work; deciding a case under it is not.
        overruled["stakes"] = "a general explanation, not a decision about a case"
    return overruled


def _keyword_features(s: _Scored, c: PhraseIndex, reasons: list[str]) -> float:
    """The weight of each keyword set found in the ask, once per set."""
    total = 0.0
    overruled = _overruled(s)
    for cat in c.categories:
        hits = s.found[cat.name]
        if not hits or not cat.weight:
            continue
        why = overruled.get(cat.name)
        if why is not None:
            s.fired.discard(cat.name)
            reasons.append(f"ignored {_quoted(hits[:3])}: {why}")
            continue
        total += cat.weight
        reasons.append(f"matched {_quoted(hits[:3])} ({_points(cat.weight)}, {cat.label})")
    return total


def _leads(text: str, phrase: str, label_end: int, before: re.Pattern[str] = _LEAD_BEFORE_RE) -> bool:
    """Whether ``phrase`` leads a clause of ``text`` (or is in the kind's label): it is what is asked."""
    pattern = _LEAD_PATTERNS.get(phrase)
    if pattern is None:
        words = phrase.split()
        pattern = re.compile(r"(?<![^\W_])" + r"[\W_]+".join(map(re.escape, words)))
        if len(_LEAD_PATTERNS) >= _CACHE_SIZE * 64:
            _LEAD_PATTERNS.clear()
        _LEAD_PATTERNS[phrase] = pattern
    for found in pattern.finditer(text):
        start = found.start()
        if start < label_end or start == 0 or before.search(text, max(0, start - 24), start):
            return True
    return False


def _mechanical_verbs(s: _Scored, label_end: int, reasons: list[str]) -> None:
    """Count the mechanical verbs that lead a clause as ``mechanical``; note the others."""
    lead = [v for v in s.matched[_VERBS] if _leads(s.text, v, label_end)]
    other = [v for v in s.matched[_VERBS] if v not in lead]
    if lead:
        s.found["mechanical"] = s.found["mechanical"] + lead
        s.fired.add("mechanical")
    if other:
        reasons.append(f"ignored {_quoted(other[:3])}: mentioned, not what is asked")


def _ask_text(request: TaskRequest, split: AskText, reasons: list[str]) -> str:
    """The lowercase ask, after the job label of ``kind`` on a line of its own (its dotted namespace
    is left out)."""
    ask = split.ask.lower()
    if not request.kind:
        return ask
    # The producer's job label ("security-review", "docstring") is part of what is asked; a
    # dotted namespace ("legal.renumber") names the area, not the difficulty of the job.
    namespace, dot, label = request.kind.lower().rpartition(".")
    if dot and namespace and label:
        reasons.append(f"kind namespace '{namespace}' not read as part of the ask")
    return f"{label or namespace}\n{ask}"


def score_request(request: TaskRequest, settings: HeuristicSettings) -> tuple[int, list[str]]:
    """The 1-5 content score and the reasons (the features that decided it)."""
    c = _compiled(settings)
    th = settings.thresholds
    split = split_ask(request.ask, settings)
    if request.history:  # a conversation: the last user turn is the ask, earlier turns its context
        split = AskText(split.ask, split.pasted_chars + sum(len(m.content) for m in request.history))
    reasons: list[str] = []
    text = _ask_text(request, split, reasons)
    words = _WORD_RE.findall(text)
    label_end = text.find("\n") if request.kind else 0
    label_words = len(_WORD_RE.findall(text[:label_end])) if label_end > 0 else 0
    matched = c.match_words(words)
    found = {cat.name: matched[i] for i, cat in enumerate(c.categories)}
    fired = {name for name, hits in found.items() if hits}
    scored = _Scored(request, settings, split, text, words, label_words, matched, found, fired)
    if matched[_VERBS]:
        _mechanical_verbs(scored, label_end, reasons)

    total = _keyword_features(scored, c, reasons)
    for name, feature in _FEATURES:
        hit = feature(scored)
        if hit is not None:
            total += hit[0]
            fired.add(name)
            reasons.append(hit[1])

    if split.pasted_chars >= th.pasted_note_chars:
        reasons.append(f"pasted input ({split.pasted_chars:,} chars) not counted as difficulty")

    raw = th.base_score + total
    score = max(1, min(5, int(raw + 0.5)))
    if not total:
        reasons.append(f"no deciding feature: base score {th.base_score:g}")
    return score, reasons


def classify(request: TaskRequest, settings: RouterSettings) -> RoutingDecision:
    """Score the request's content and map the score to a tier."""
    score, reasons = score_request(request, settings.heuristic)
    tier = tier_for_score(score)
    reasons.append(f"score {score} -> {tier.value}")
    return RoutingDecision(tier=tier, score=score, reasons=reasons, classifier=CLASSIFIER)
