"""Korean-aware end of turn: does what the person said so far sound finished?

The VAD alone must wait a long hangover (700 ms) because people pause mid-sentence. But a Korean sentence announces
its end: a final ending (요, 다, 까, 죠, 니다, 세요, 네요 ...) or a question mark. After such an ending a short silence
(``early_end_ms``, 250 ms) is enough; after a connective ending (그리고, 근데, -고, -는데, -서, -면 ...) or a bare
noun, the full hangover applies, so a person who pauses to think is not cut off.
"""

from __future__ import annotations

import re

from voicebot.sentences import a_eo_form

#: Word endings that finish a Korean sentence (declarative, interrogative, imperative, propositive; polite and plain).
FINAL_ENDINGS = (
    "요", "다", "까", "죠", "지", "니다", "세요", "네요", "군요", "래요", "대요", "나요", "가요", "을까", "ㄹ까",
    "니", "냐", "자", "라", "해", "줘", "어", "아", "야", "네", "게", "걸", "래",
)
#: One-syllable words that finish a request on their own ("불 꺼 줘", "노래 틀어 봐").
FINAL_WORDS = frozenset("줘해봐가와자돼래네")
#: Endings and words after which the sentence goes on, however long the pause (they win over FINAL_ENDINGS).
CONTINUING = (
    "그리고", "근데", "그런데", "그래서", "그러니까", "그러면", "그럼", "하지만", "그래도", "또", "그", "저", "음", "어",
    "고", "는데", "은데", "ㄴ데", "서", "면", "으면", "며", "으며", "지만", "니까", "으니까", "려고", "러", "도록",
    "거나", "든지", "다가", "자마자", "는", "은", "을", "를", "이", "가", "의", "에", "에서", "로", "으로", "와", "과", "랑",
    "하고", "이랑", "보다", "처럼", "만", "도",
)
#: 야 after a noun is the copula and finishes ("뭐야", "몇 시야", "할 거야"); after a verb's 아/어 form it is -아야/-어야
#: ("must") and the sentence goes on: "우산을 챙겨야 | 할까요".
COPULA_YA = ("뭐야", "거야")
#: A verb's 아/어 form after a closed syllable ("틀어", "찾아", "읽어") usually leads to an auxiliary ("틀어 | 줘",
#: "찾아 | 봐"): not finished. These end a sentence as they are (a reply, a state), and stay finished.
COMPLETE_A_EO = frozenset({"좋아", "싫어", "괜찮아", "많아", "적어", "없어", "있어", "알아", "맞아", "싶어", "같아",
                           "작아", "넓어", "높아", "낮아", "늦어", "짧아", "얇아", "깊어", "밝아"})
#: A turn that opens with these goes on ("아니 | 그게 아니라", "음 | 잠깐만"): alone, they are not a finished turn.
OPENERS = frozenset({"아니", "근데", "그러니까", "잠깐", "저기"})
_LAST_WORD = re.compile(r"([^\s.,!?…~]+)\s*([.!?…~]*)\s*$")


def looks_finished(text: str) -> bool:
    """Whether ``text`` (the recognizer's latest words) ends like a finished Korean sentence."""
    m = _LAST_WORD.search(text.strip())
    if not m:
        return False
    word, marks = m.group(1), m.group(2)
    if "?" in marks:
        return True
    if text.split()[0].strip(".,!?…~") in OPENERS and len(text.split()) == 1:
        return False  # a turn that has only just opened
    if len(word) >= 2 and word[-1] in "아어" and _closed(word[-2]) and word not in COMPLETE_A_EO:
        return False  # 아/어 form waiting for its auxiliary
    if len(word) == 1:  # a particle or a filler never stands alone at the end; a short verb does
        return word in FINAL_WORDS
    if word in CONTINUING or (word.endswith(CONTINUING) and not word.endswith(FINAL_ENDINGS)):
        return False
    if a_eo_form(word, "야") and not word.endswith(COPULA_YA):
        return False
    return word.endswith(FINAL_ENDINGS)


def _closed(syllable: str) -> bool:
    """A Hangul syllable that ends in a consonant (틀, 찾, 읽): the 아/어 after it is an ending of its own."""
    code = ord(syllable) - 0xAC00
    return 0 <= code < 11172 and code % 28 != 0
