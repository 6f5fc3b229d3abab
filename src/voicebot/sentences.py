"""Streaming sentence segmentation for Korean (and mixed) LLM output.

The chat handler feeds model tokens in as they stream and publishes each sentence the moment it is complete, so the
device can start speaking the first sentence while the model is still writing the rest.

Two promises, checked by a property test over arbitrary text and arbitrary chunking:

* **Nothing is lost.** Joined, the sentences are the input, except whitespace and what ``clean_for_speech`` removes
  on purpose (markdown marks, emoji, citation marks). A fragment with nothing to say (``...`` after a sentence that
  already went out) is carried into the next sentence, never dropped.
* **Chunking does not matter.** Every decision depends only on the text, never on where a chunk ended: a sentence
  end is confirmed by what follows it, and the splitter waits for that. A Korean end (``요.``, ``다.``) is confirmed by
  the space after it; an ambiguous one by the next word (``25.`` could still become ``25.5도``, ``3:`` ``3:30``,
  ``그래요? 라고`` is a quoted question inside a sentence).

A quote or bracket holds back sentence ends inside it, but only for ``QUOTE_HOLD`` characters: one stray ``"``
(an inch mark) or unclosed ``(`` must not turn streaming off for the rest of the answer.

With ``first_clause_chars``, the answer's first piece may be a clause of at least that many letters, when no sentence
ends before it, so the device starts speaking before the first sentence is finished: at a comma ("오늘 서울은 하루 종일
아주 맑고, | 낮에는 25도까지 올라가요.") or, since Korean joins clauses with endings more often than with commas, after a
connective ending (-고, -는데, -지만, -면서, -아서/-어서: "오늘 서울은 하루 종일 맑고 | 따뜻할 거예요.").
"""

from __future__ import annotations

import re

#: Characters that can end a sentence (ASCII, full-width and CJK forms, ellipsis).
TERMINATORS = frozenset(".?!:。？！：．…")
#: Terminators that never split when glued to the next character (decimals 25.5, times 3:30, e.g., v1.2, URLs).
SOFT_TERMINATORS = frozenset(".:．：")
#: Closing marks that belong to the sentence they follow: `"그렇군요."` or `(예시).`
TRAILING_CLOSERS = frozenset("\"'”’」』)）]】〉》")
OPENERS = {"(": ")", "（": "）", "[": "]", "「": "」", "『": "』", "“": "”", "‘": "’", "【": "】", "〈": "〉", "《": "》"}
CLOSERS = {v: k for k, v in OPENERS.items()}
#: Abbreviations whose period does not end a sentence (compared lower-case, without the final period).
ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "st", "vs", "e.g", "i.e", "approx", "no", "inc", "ltd", "co", "jr", "sr",
     "a.m", "p.m", "u.s", "u.k", "fig", "vol", "etc"}
)

#: How far (in characters) an open quote or bracket may hold back a Hangul sentence end inside it.
QUOTE_HOLD = 50
#: Marks after which a first clause may be released (not ";" or ":": what follows them explains what came before).
CLAUSE_MARKS = frozenset(",，、")

# Markdown and symbols a TTS engine would read aloud. A link keeps its text; a "(...)" that is not a URL is text.
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:https?://|www\.|mailto:|/|#)[^)\s]*\)")
_CITATION = re.compile(r"\[\d{1,3}\]")
_CITATION_MARK = re.compile(r"(?<=[^\s\[])\[\d{1,3}\]")  # glued to what it cites: "둥글어요.[5]", "지진[14]"
_MD_HEADER = re.compile(r"^\s{0,3}#{1,6}\s*")
_MD_BULLET = re.compile(r"^\s*(?:[-*+•·▪◦]|>)\s+")
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|`+|~~)")
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, symbols & pictographs extended
    "\U00002600-\U000027bf"  # misc symbols, dingbats
    "\U0001f1e6-\U0001f1ff"  # flags
    "\U00002b00-\U00002bff"  # arrows, stars
    "\ufe0f\u200d\u20e3"  # variation selector, zero-width joiner, keycap
    "]+"
)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?…。？！、，])")


def clean_for_speech(text: str) -> str:
    """Remove what a TTS engine would read aloud but a person would not say: markdown marks, emoji, extra spaces."""
    lines = []
    for line in text.splitlines():
        line = _MD_HEADER.sub("", line)
        line = _MD_BULLET.sub("", line)
        lines.append(line)
    text = " ".join(lines)
    text = _MD_LINK.sub(r"\1", text)
    text = _CITATION_MARK.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def spoken_length(text: str) -> int:
    """How many letters and digits a sentence has (punctuation and spaces are not spoken)."""
    return sum(1 for c in text if c.isalnum())


class SentenceSplitter:
    """Turns a stream of text chunks into speakable sentences.

    ``feed`` returns the sentences completed so far; ``flush`` returns the rest, so no tail is ever lost.
    Sentences with fewer than ``min_chars`` letters/digits (such as "네.") are merged into the next one.
    """

    def __init__(self, *, min_chars: int = 4, first_clause_chars: int = 0) -> None:
        self.min_chars = min_chars
        self.first_clause_chars = first_clause_chars
        """0: sentences only. Else the first piece may end at a comma or a connective ending after this many letters
        (see the module)."""
        self._buffer = ""
        self._pending = ""  # a fragment too short to speak alone, waiting for the next sentence
        self._released = 0

    def reset(self) -> None:
        self._buffer = ""
        self._pending = ""
        self._released = 0

    def feed(self, chunk: str) -> list[str]:
        self._buffer += chunk
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The rest. A last piece with nothing to say (a trailing "..." or ")") is still returned: the caller decides
        whether to speak it; the splitter loses nothing."""
        out = self._drain(final=True)
        tail = clean_for_speech(self._buffer)
        self._buffer = ""
        rest = " ".join(p for p in (self._pending, tail) if p)
        self._pending = ""
        if rest:
            out.append(rest)
        return out

    # -- internals ---------------------------------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = None
            if self.first_clause_chars and not self._released:
                end = _first_clause(self._buffer, self.first_clause_chars)
            if end is None:
                end = _find_boundary(self._buffer, final=final)
            if end is None:
                return out
            raw, self._buffer = self._buffer[:end], self._buffer[end:]
            sentence = clean_for_speech(raw)
            if not sentence:
                continue  # only markup or emoji, removed on purpose
            sentence = f"{self._pending} {sentence}" if self._pending else sentence
            if spoken_length(sentence) < self.min_chars:  # too short alone, or nothing to say: goes with the next
                self._pending = sentence
                continue
            self._pending = ""
            self._released += 1
            out.append(sentence)


def split_sentences(text: str, *, min_chars: int = 4) -> list[str]:
    """A whole text at once (what the streaming splitter would have released, in order)."""
    splitter = SentenceSplitter(min_chars=min_chars)
    return splitter.feed(text) + splitter.flush()


def _is_hangul(c: str) -> bool:
    return "\uac00" <= c <= "\ud7a3"


def _next_non_space(text: str, start: int) -> int:
    i = start
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _is_list_number(text: str, dot: int) -> bool:
    """``1.`` / ``12.`` at the start of a line, or ``1.`` to ``20.`` after a space, is a list number, not a sentence
    end."""
    i = dot
    while i > 0 and text[i - 1].isdigit():
        i -= 1
    if i == dot or dot - i > 3:
        return False
    j = i
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    if j == 0 or text[j - 1] == "\n":
        return True
    return j < i and int(text[i:dot]) <= 20


def _is_abbreviation(text: str, dot: int) -> bool:
    i = dot
    while i > 0 and (text[i - 1].isascii() and (text[i - 1].isalpha() or text[i - 1] == ".")):
        i -= 1
    word = text[i:dot].lower()
    if not word:
        return False
    if len(word) == 1 and text[i].isupper():
        return True  # an initial, as in "J. R. R. Tolkien"
    return word in ABBREVIATIONS


def _is_emoji(c: str) -> bool:
    """One character of ``_EMOJI`` (by code point ranges: this runs for every character of every answer)."""
    o = ord(c)
    return 0x1F000 <= o <= 0x1FAFF or 0x2600 <= o <= 0x27BF or 0x2B00 <= o <= 0x2BFF or c in "\ufe0f\u200d\u20e3"


#: After "?" or "!", words that continue the sentence around a quoted question: "그래요? 라고 물었다".
_QUOTED_QUESTION_GOES_ON = re.compile(r"^(?:이?라(?:고|는|며|면서|던|니)|하(?:고|는|며|면서|던|니|셨|시)|했|할|싶"
                                      r"|냐고|느냐고|는지|란|고$|며$)")
_QUOTED_QUESTION_STARTS = frozenset("이라하했할싶냐느는란고며")
#: An inline list number after some text: " 2. " (2 to 20; "1." opens a list and "2024." is a year).
_INLINE_LIST_NUMBER = re.compile(r"\s(?:[2-9]|1\d|20)\. ")


def _opens_quote(text: str, i: int) -> bool:
    """An ASCII quote opens only at the start of a word: 6.1" is an inch mark, don't an apostrophe."""
    return i == 0 or not text[i - 1].isalnum()


def _mark_end(text: str, end: int, *, final: bool) -> int | None:
    """Past the closers and citation marks (".[5]") that belong to a sentence end; None if one may still be arriving."""
    n = len(text)
    while end < n:
        if text[end] in TRAILING_CLOSERS:
            end += 1
        elif text[end] == "[":
            m = _CITATION.match(text, end)
            if m:
                end = m.end()
            elif re.fullmatch(r"\[\d{0,3}", text[end:]) and not final:
                return None  # "[5" may still become "[5]"
            else:
                break
        else:
            break
    return end


def _quoted_question_goes_on(text: str, k: int, *, final: bool) -> bool | None:
    """Whether the word at ``k`` continues the sentence ("? 라고"); None while the word is still arriving."""
    word = re.match(r"[^\s.?!,…。？！:;\"')\]]*", text[k:]).group(0)
    if word[:1] not in _QUOTED_QUESTION_STARTS:
        return False  # decided by the first character: no waiting on most sentences
    if k + len(word) == len(text) and len(word) < 3 and not final:
        return None
    return bool(_QUOTED_QUESTION_GOES_ON.match(word))


def _find_boundary(text: str, *, final: bool) -> int | None:
    """Index just past the first confirmed sentence end in ``text``, or None if there is none yet.

    Only the text decides, never where it was cut: where what follows an end is not there yet, wait (None).
    """
    stack: list[tuple[str, int]] = []  # (expected closer, where it opened) of open brackets and quotes
    n = len(text)
    i = 0
    spoken = 0  # letters and digits before i
    while i < n:
        c = text[i]
        if c.isalnum():
            spoken += 1
        elif c == "\n":
            if text[:i].strip():
                k = _next_non_space(text, i)
                if k < n or final:
                    return i + 1
                return None
        elif c in "\"'" and stack and stack[-1][0] == c:
            stack.pop()
        elif c in "\"'":
            if _opens_quote(text, i):
                stack.append((c, i))
        elif c in OPENERS:
            stack.append((OPENERS[c], i))
        elif c in CLOSERS:
            if stack and stack[-1][0] == c:
                stack.pop()
        elif c.isspace():
            if spoken and (i + 1 == n or text[i + 1].isdigit()):
                if _INLINE_LIST_NUMBER.match(text, i):
                    return i + 1  # "1. 물을 끓여요 2. 면을 넣어요": item 2 starts a sentence
                if i + 4 > n and not final and re.fullmatch(r"\s(?:[2-9]|1\d?|20?)\.?", text[i:]):
                    return None  # an inline list number may be arriving
        elif c in TERMINATORS or (_is_emoji(c) and i > 0 and text[i - 1].isalnum()):
            hangul_end = i > 0 and _is_hangul(text[i - 1])
            if stack and not (hangul_end and i - stack[0][1] > QUOTE_HOLD):
                i += 1
                continue  # inside a quote or bracket
            run = TERMINATORS if c in TERMINATORS else None
            j = i
            while j + 1 < n and (text[j + 1] in TERMINATORS if run else _is_emoji(text[j + 1])):
                j += 1
            end = _mark_end(text, j + 1, final=final)
            if end is None:
                return None
            if end == n:
                return end if final else None
            nxt = text[end]
            single = j == i
            if run is None:  # emoji: a sentence end only before a space ("좋아요😊 다음")
                if nxt.isspace():
                    return end
                i = end
                continue
            if single and c in SOFT_TERMINATORS and not nxt.isspace():
                i = end  # 25.5, 3:30, e.g, v1.2 — glued to what follows
                continue
            if single and c in ".．" and (_is_list_number(text, i) or _is_abbreviation(text, i)):
                i = end
                continue
            question = any(t in "?!？！" for t in text[i:j + 1])
            if nxt.isspace() and hangul_end and not question:
                return end  # "요. ": nothing that follows can change this end
            k = _next_non_space(text, end)
            if k == n:
                return end if final else None  # wait: the end is confirmed by the next non-space character
            if question and nxt.isspace():
                goes_on = _quoted_question_goes_on(text, k, final=final)
                if goes_on is None:
                    return None
                if goes_on:
                    i = k
                    continue
            return end
        i += 1
    return None


def _first_clause(text: str, min_spoken: int) -> int | None:
    """Index just past the first clause of at least ``min_spoken`` letters, if no sentence ends before it and it is
    not inside quotes or brackets; None otherwise (or not yet decidable). A clause ends at a comma confirmed by the
    space after it ("1,000" never splits), or at a word with a Korean connective ending (see ``_connective``)
    confirmed by the start of the next word, which must not be an auxiliary verb ("오고 | 있어요" stays whole)."""
    spoken = 0
    for i, c in enumerate(text):
        if c.isalnum():
            spoken += 1
        elif c in OPENERS or c in "\"'":
            return None  # a quotation or an aside: leave it to the sentence rules
        elif spoken < min_spoken:
            continue
        elif c in CLAUSE_MARKS and i + 1 < len(text) and text[i + 1].isspace():
            # Is there a sentence end before the comma? What confirms such an end lies before the comma too.
            return i + 1 if _find_boundary(text[: i + 1], final=True) is None else None
        elif c.isspace() and i and _is_hangul(text[i - 1]) and _connective(text[text.rfind(" ", 0, i) + 1: i]):
            k = _next_non_space(text, i)
            following = text[k: k + 2]
            if any(following.startswith(a) for a in _AUXILIARIES):
                continue  # "-고 있다", "-고 싶다": one predicate, not two clauses
            if k + 1 >= len(text) and any(a.startswith(following) for a in _AUXILIARIES):
                return None  # the next word may still become an auxiliary: wait for it
            return i if _find_boundary(text[:i], final=True) is None else None
    return None


#: Hangul vowels (medial index) of the 아/어 stem that "-서" follows in "-아서/-어서": 가서, 해서, 와서, 추워서, 져서.
_A_EO_VOWELS = frozenset({0, 1, 4, 6, 9, 10, 14})  # ㅏ ㅐ ㅓ ㅕ ㅘ ㅙ ㅝ
#: Words that end like a connective but do not close a clause: nouns often met in a first sentence ("최고 기온",
#: "참고 자료"), and conjunctions, which open the next clause ("그리고 | 내일은" would break the wrong side).
_NOT_CONNECTIVES = frozenset({"최고", "광고", "창고", "사고", "참고", "경고", "재고", "신고", "원고", "금고", "공고",
                              "보고", "하고", "그리고", "그런데", "근데", "그래서", "하지만", "그렇지만", "그러면서",
                              "그러고"})
#: Words after "-고" that make one predicate with it, not a second clause.
_AUXILIARIES = ("있", "싶", "계시", "계세", "계셨", "계신", "계실", "말았", "말아", "나서", "나면", "나니", "보니")


def _connective(word: str) -> bool:
    """Whether a whole Hangul word ends with a connective ending that closes a clause, where a speaker would pause:
    -고, -는데/-ㄴ데, -지만, -면서, -아서/-어서. Korean joins clauses with these far more often than with commas
    ("오늘은 하루 종일 맑고 따뜻해요"). Quotative -다고/-라고 and purposive -려고 are left out (what follows completes
    them), and so are nouns that merely end like one and conjunctions."""
    if len(word) < 2 or not all(_is_hangul(c) for c in word) or word in _NOT_CONNECTIVES:
        return False
    before = ord(word[-2]) - 0xAC00
    if word.endswith("고"):
        return word[-2] not in "다라냐자려"
    if word.endswith("데"):
        return word.endswith("는데") or before % 28 == 4  # -는데, or a stem closed by ㄴ: 인데, 한데, 추운데
    if word.endswith(("지만", "면서")):
        return True
    return a_eo_form(word, "서")


def a_eo_form(word: str, ending: str) -> bool:
    """Whether ``word`` is a verb's 아/어 form followed by ``ending``: 가서, 추워서, 먹어서; 챙겨야, 해야. The syllable
    before the ending is open and has a vowel the 아/어 ending leaves."""
    if len(word) <= len(ending) or not word.endswith(ending) or not _is_hangul(word[-len(ending) - 1]):
        return False
    before = ord(word[-len(ending) - 1]) - 0xAC00
    return before % 28 == 0 and before // 28 % 21 in _A_EO_VOWELS
