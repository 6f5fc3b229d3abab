"""Streaming sentence segmentation for Korean (and mixed) LLM output.

The chat handler feeds model tokens in as they stream and publishes each sentence the moment it is complete, so the
device can start speaking the first sentence while the model is still writing the rest.

An ambiguous sentence end is *confirmed* only when the next non-space character arrives (or at ``flush``): until then
``25.`` could still become ``25.5도`` and ``3:`` could become ``3:30``. An end that cannot be anything else (``요.``,
``다.``, ``?``, ``!``) is released at once.
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

# Markdown and symbols a TTS engine would read aloud.
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
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

    def __init__(self, *, min_chars: int = 4) -> None:
        self.min_chars = min_chars
        self._buffer = ""
        self._pending = ""  # a fragment too short to speak alone, waiting for the next sentence

    def reset(self) -> None:
        self._buffer = ""
        self._pending = ""

    def feed(self, chunk: str) -> list[str]:
        self._buffer += chunk
        return self._drain(final=False)

    def flush(self) -> list[str]:
        out = self._drain(final=True)
        tail = clean_for_speech(self._buffer)
        self._buffer = ""
        rest = " ".join(p for p in (self._pending, tail) if p)
        self._pending = ""
        if spoken_length(rest) > 0:
            out.append(rest)
        return out

    # -- internals ---------------------------------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = _find_boundary(self._buffer, final=final)
            if end is None:
                return out
            raw, self._buffer = self._buffer[:end], self._buffer[end:]
            sentence = clean_for_speech(raw)
            if spoken_length(sentence) == 0:
                if self._pending:  # "음." released early, then ".." arrives: keep the ellipsis with it
                    self._pending += sentence.replace(" ", "")
                continue  # only markup, punctuation or emoji: nothing to say
            sentence = f"{self._pending} {sentence}" if self._pending else sentence
            if spoken_length(sentence) < self.min_chars:
                self._pending = sentence
                continue
            self._pending = ""
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
    """``1.`` / ``12.`` at the start of a line is a list number, not a sentence end."""
    i = dot
    while i > 0 and text[i - 1].isdigit():
        i -= 1
    if i == dot or dot - i > 3:
        return False
    j = i
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    return j == 0 or text[j - 1] == "\n"


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


def _find_boundary(text: str, *, final: bool) -> int | None:
    """Index just past the first confirmed sentence end in ``text``, or None if there is none yet."""
    stack: list[str] = []  # expected closers of open brackets/quotes
    in_ascii_quote = False
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if c == "\n":
            if text[:i].strip():
                k = _next_non_space(text, i)
                if k < n or final:
                    return i + 1
                return None
        elif c in OPENERS:
            stack.append(OPENERS[c])
        elif c in CLOSERS:
            if stack and stack[-1] == c:
                stack.pop()
        elif c == '"':
            in_ascii_quote = not in_ascii_quote
        elif c in TERMINATORS and not stack and not in_ascii_quote:
            j = i
            while j + 1 < n and text[j + 1] in TERMINATORS:
                j += 1
            end = j + 1
            while end < n and text[end] in TRAILING_CLOSERS:
                end += 1
            if end == n:
                # At the end of what has arrived, wait for the next character, unless the end cannot be anything
                # else: "?", "!", "。" or a period right after a Hangul syllable ("요.", "다.") are never decimals,
                # times, list numbers or abbreviations. This saves one token's wait on most Korean sentences.
                unambiguous = text[i] in "?!？！。…" or (text[i] in ".．" and i > 0 and _is_hangul(text[i - 1]))
                return end if final or (unambiguous and j + 1 == n) else None
            nxt = text[end]
            single = j == i
            if single and c in SOFT_TERMINATORS and not nxt.isspace():
                i = end  # 25.5, 3:30, e.g, v1.2 — glued to what follows
                continue
            if single and c in ".．" and (_is_list_number(text, i) or _is_abbreviation(text, i)):
                i = end
                continue
            k = _next_non_space(text, end)
            if k == n and not final:
                return None  # wait: the end is confirmed by the next non-space character
            return end
        i += 1
    return None
