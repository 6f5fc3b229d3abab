"""The splitter's two promises, as properties over arbitrary text and arbitrary chunk boundaries (hypothesis):
nothing is lost, and where chunks are cut does not change the sentences. Then the cases that used to break them."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.sentences import QUOTE_HOLD, SentenceSplitter, split_sentences

# Everything the splitter decides on (terminators, quotes, brackets, digits, Hangul, Latin, spaces, newlines), and
# nothing that clean_for_speech removes on purpose (markdown marks, emoji, citation brackets).
ALPHABET = st.sampled_from(list("요다까죠니세가나한국어고데서있계 ab.?!:…。？！,;%\"'()「」“”‘’0123456789\n\t")
                           + ["요. ", "? 라고 ", "... ", "25.5", "3:30", "Dr. ", "e.g. ", " 2. ", '6.1" ', "(예: ",
                              "'.', ", ".[5] ", "맑고 ", "는데 ", "해서 ", "지만 ", "고 있", "고 계시"])


def streamed(text: str, cuts: list[int], first_clause_chars: int = 0) -> list[str]:
    splitter = SentenceSplitter(first_clause_chars=first_clause_chars)
    out: list[str] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(text)]:
        out += splitter.feed(text[last:cut])
        last = cut
    return out + splitter.flush()


def without_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=60).map("".join).flatmap(
    lambda text: st.tuples(st.just(text), st.lists(st.integers(0, len(text)), max_size=12))),
    st.sampled_from([0, 2, 12]))
def test_nothing_is_lost_and_chunking_does_not_matter(case, first_clause_chars):
    text, cuts = case
    whole = streamed(text, [], first_clause_chars)
    if not first_clause_chars:
        assert whole == split_sentences(text)
    assert without_space("".join(whole)) == without_space(re.sub(r"(?<=[^\s\[])\[\d{1,3}\]", "", text))
    assert streamed(text, cuts, first_clause_chars) == whole
    assert streamed(text, list(range(len(text))), first_clause_chars) == whole  # one character at a time


def test_the_first_clause_goes_out_at_its_comma_and_only_the_first():
    answer = "오늘 서울은 하루 종일 아주 맑고, 낮 최고 기온은 25도까지 올라가요. 저녁에는 바람이 불고, 쌀쌀해요."
    assert streamed(answer, list(range(len(answer))), 12) == [
        "오늘 서울은 하루 종일 아주 맑고,", "낮 최고 기온은 25도까지 올라가요.", "저녁에는 바람이 불고, 쌀쌀해요."]
    assert split_sentences(answer)[0] == "오늘 서울은 하루 종일 아주 맑고, 낮 최고 기온은 25도까지 올라가요."
    short = "네, 오늘은 맑아요."  # a short clause is not worth a piece of its own
    assert streamed(short, [], 12) == [short]
    for held in ("그는 “오늘 서울은 하루 종일 맑고, 따뜻해”라고 했어요.", "가격은 1,000,000원이나 하는 비싼 물건이에요."):
        assert streamed(held, [], 12) == [held]  # inside a quotation, and a number: no clause


def test_a_korean_connective_ending_ends_the_first_clause_but_not_an_auxiliary_or_a_quote():
    def first(text: str) -> str:
        return streamed(text, list(range(len(text))), 10)[0]

    assert first("오늘 서울은 하루 종일 맑고 따뜻할 거예요. 낮에는 25도예요.") == "오늘 서울은 하루 종일 맑고"
    assert first("오늘은 바람이 많이 부는데 기온은 높아요.") == "오늘은 바람이 많이 부는데"
    assert first("서울은 지금 기온이 낮아서 꽤 쌀쌀해요.") == "서울은 지금 기온이 낮아서"
    assert first("오늘은 하루 종일 흐리지만 비는 안 와요.") == "오늘은 하루 종일 흐리지만"
    for whole in ("지금 서울에는 비가 조금씩 오고 있어요.",  # -고 있다: one predicate
                  "지금 서울에서는 다들 쉬고 싶어 해요.",
                  "기상청에서는 내일 비가 온다고 했어요.",  # quotative
                  "오늘 서울의 낮 기온이 최고 25도예요.",  # a noun that ends like -고
                  "내일 아침에는 서울역 근처에서 만나요.",  # the particle 에서 is not -아서/-어서
                  "오늘 서울은 정말 맑아요 그리고 내일도 맑아요."):  # a conjunction opens the next clause
        assert first(whole) == whole, whole
    # the next word decides: "계" may still become "계세요" (an auxiliary), "계란" is not one
    s = SentenceSplitter(first_clause_chars=10)
    assert s.feed("오늘 서울은 하루 종일 맑고 계") == []
    assert s.feed("란 값이 올라요. ") == ["오늘 서울은 하루 종일 맑고", "계란 값이 올라요."]


def test_an_ellipsis_or_a_double_mark_is_kept_whole_while_streaming():
    for text in ("한번 해 보세요... 그럼 알게 돼요.", "정말 그랬다고요?! 믿을 수 없어요.", "진짜 그랬어요?? 대단하네요."):
        expected = split_sentences(text)
        assert "".join(expected).replace(" ", "") == text.replace(" ", "")
        assert streamed(text, list(range(len(text)))) == expected
    assert split_sentences("한번 해 보세요... 그럼 알게 돼요.") == ["한번 해 보세요...", "그럼 알게 돼요."]


def test_a_bracket_that_is_not_a_link_keeps_its_text():
    # "[14]" is a citation mark (removed on purpose); what is in the brackets after it is text, not a link target
    assert split_sentences("관동 대지진[14](일본어: 関東大地震)은 1923년에 일어났어요.") == [
        "관동 대지진(일본어: 関東大地震)은 1923년에 일어났어요."]
    assert split_sentences("[기상청](https://www.kma.go.kr)에 따르면 비가 와요.") == ["기상청에 따르면 비가 와요."]


def test_a_stray_quote_or_an_unclosed_bracket_does_not_stop_streaming():
    text = ('화면은 6.1" 크기예요. 배터리는 하루 종일 가요. 무게도 가벼워요. 카메라도 좋아요. 색상은 세 가지예요. '
            '가격은 조금 비싸요. 그래도 추천해요.')
    s = SentenceSplitter()
    released_before_flush = [x for i in range(len(text)) for x in s.feed(text[i])]
    assert len(released_before_flush) >= 5  # streaming goes on after the inch mark
    unclosed = "설명(괄호가 닫히지 않아요. " + "이 문장은 꽤 길게 이어지는 설명입니다. " * 3 + "끝이에요."
    s = SentenceSplitter()
    released = [x for i in range(len(unclosed)) for x in s.feed(unclosed[i])]
    assert released, f"an unclosed bracket held back more than {QUOTE_HOLD} characters"
    # a short quotation still holds its inner ends
    assert split_sentences("그는 “안녕하세요. 반가워요.”라고 말했어요.") == ["그는 “안녕하세요. 반가워요.”라고 말했어요."]


def test_a_bracketed_number_that_is_not_glued_to_a_word_is_text():
    assert split_sentences("오후 [9] 시 어때요?") == ["오후 [9] 시 어때요?"]


def test_single_quoted_items_titles_and_citations_do_not_split():
    assert split_sentences("문장 부호에는 '.', '?', '!'가 있어요. 다 중요해요.") == [
        "문장 부호에는 '.', '?', '!'가 있어요.", "다 중요해요."]
    assert split_sentences("영화 '탑건: 매버릭'을 보셨나요? 정말 재밌어요.") == [
        "영화 '탑건: 매버릭'을 보셨나요?", "정말 재밌어요."]
    assert split_sentences("지구는 둥글어요.[5] 달도 둥글어요.") == ["지구는 둥글어요.", "달도 둥글어요."]


def test_inline_list_numbers_start_their_item():
    assert split_sentences("방법은 두 가지예요. 1. 물을 끓여요 2. 면을 넣어요") == [
        "방법은 두 가지예요.", "1. 물을 끓여요", "2. 면을 넣어요"]


def test_an_emoji_ends_a_sentence():
    assert split_sentences("오늘 날씨가 정말 좋아요😊 산책을 가 볼까요?") == ["오늘 날씨가 정말 좋아요", "산책을 가 볼까요?"]


def test_a_quoted_question_inside_a_sentence_does_not_split():
    for text in ("\"왜요?\" 하고 물었어요.", "누가 \"뭐지?? 하고\" 생각했어요.", "정말 그럴까? 라는 생각이 들었어요.",
                 "다시 해 볼까? 싶었는데 늦었어요.", "이게 뭐예요?? 하고 웃었어요."):
        assert len(split_sentences(text)) == 1, text


def test_a_sentence_is_released_within_one_character_of_its_end():
    """Latency: counted in non-space characters after the end (p95 over a realistic answer)."""
    answer = ("서울은 지금 맑아요. 기온은 25.5도예요. 저녁에는 비가 올 수 있어요. 우산을 챙기세요! 내일은 어떨까요? "
              "내일도 맑대요. 미세먼지는 보통이에요. 좋은 하루 보내세요.")
    s = SentenceSplitter()
    waits = []
    for i, c in enumerate(answer):
        for sentence in s.feed(c):
            end = answer.index(sentence) + len(sentence)
            waits.append(len(answer[end:i + 1].replace(" ", "")))
    assert len(waits) >= 6
    waits.sort()
    assert waits[int(0.95 * (len(waits) - 1))] <= 1
