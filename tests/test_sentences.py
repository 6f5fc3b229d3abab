"""SentenceSplitter on realistic Korean LLM answers, fed whole and fed in streaming chunks."""

import random

import pytest

from voicebot.sentences import SentenceSplitter, clean_for_speech, split_sentences

CASES = [
    # 1-10: plain sentence ends
    ("오늘 서울은 맑아요. 낮 기온은 25도입니다.", ["오늘 서울은 맑아요.", "낮 기온은 25도입니다."]),
    ("정말요? 그럼 우산을 챙기세요!", ["정말요? 그럼 우산을 챙기세요!"]),
    ("그 영화 보셨어요? 저는 아직 못 봤어요.", ["그 영화 보셨어요?", "저는 아직 못 봤어요."]),
    ("와, 대단하네요! 축하드려요.", ["와, 대단하네요!", "축하드려요."]),
    ("네, 알겠습니다. 알람을 7시에 맞출게요.", ["네, 알겠습니다.", "알람을 7시에 맞출게요."]),
    ("안녕하세요。반갑습니다。", ["안녕하세요。", "반갑습니다。"]),
    ("정말？ 몰랐어요！ 고마워요．", ["정말？ 몰랐어요！", "고마워요．"]),
    ("글쎄요… 잘 모르겠어요.", ["글쎄요… 잘 모르겠어요."]),
    ("음... 다시 한 번 말씀해 주시겠어요?", ["음... 다시 한 번 말씀해 주시겠어요?"]),
    ("뭐라고요?! 그럴 리가요.", ["뭐라고요?!", "그럴 리가요."]),
    # 11-20: numbers, decimals, times, dates
    ("현재 기온은 25.5도이고 습도는 60%예요. 산책하기 좋아요.", ["현재 기온은 25.5도이고 습도는 60%예요.", "산책하기 좋아요."]),
    ("회의는 3:30에 시작해요. 늦지 마세요.", ["회의는 3:30에 시작해요.", "늦지 마세요."]),
    ("원주율은 약 3.14159입니다. 무리수예요.", ["원주율은 약 3.14159입니다.", "무리수예요."]),
    ("환율은 1,350.25원이에요. 어제보다 올랐어요.", ["환율은 1,350.25원이에요.", "어제보다 올랐어요."]),
    ("2024.05.01에 출시됐어요. 벌써 1년이 지났네요.", ["2024.05.01에 출시됐어요.", "벌써 1년이 지났네요."]),
    ("버전 3.12.1을 쓰세요. 가장 안정적이에요.", ["버전 3.12.1을 쓰세요.", "가장 안정적이에요."]),
    ("오후 2시 45분이에요. 점심은 드셨어요?", ["오후 2시 45분이에요.", "점심은 드셨어요?"]),
    ("가격은 12.99달러입니다. 세금은 별도예요.", ["가격은 12.99달러입니다.", "세금은 별도예요."]),
    ("경기는 2:1로 끝났어요. 한국이 이겼어요.", ["경기는 2:1로 끝났어요.", "한국이 이겼어요."]),
    ("키는 180.5센티미터예요. 꽤 크시네요.", ["키는 180.5센티미터예요.", "꽤 크시네요."]),
    # 21-27: lists and colons
    ("방법은 다음과 같아요:\n1. 물을 끓여요.\n2. 면을 넣어요.",
     ["방법은 다음과 같아요:", "1. 물을 끓여요.", "2. 면을 넣어요."]),
    ("준비물: 우산, 물, 간식을 챙기세요.", ["준비물: 우산, 물, 간식을 챙기세요."]),
    ("중요한 점은 이거예요: 충분히 주무세요.", ["중요한 점은 이거예요:", "충분히 주무세요."]),
    ("- 사과를 씻어요\n- 껍질을 깎아요\n- 잘라서 드세요", ["사과를 씻어요", "껍질을 깎아요", "잘라서 드세요"]),
    ("1. 첫째, 일찍 일어나기\n2. 둘째, 운동하기", ["1. 첫째, 일찍 일어나기", "2. 둘째, 운동하기"]),
    ("10. 마지막 단계입니다.", ["10. 마지막 단계입니다."]),
    ("첫 번째 줄입니다\n두 번째 줄입니다", ["첫 번째 줄입니다", "두 번째 줄입니다"]),
    # 28-33: quotes and parentheses
    ("그는 “안녕하세요. 반가워요.”라고 말했어요. 친절하네요.", ["그는 “안녕하세요. 반가워요.”라고 말했어요.", "친절하네요."]),
    ('책 제목은 "어린 왕자. 그리고 여우"예요. 재미있어요.', ['책 제목은 "어린 왕자. 그리고 여우"예요.', "재미있어요."]),
    ("서울(대한민국의 수도. 인구 약 940만)은 커요. 볼거리도 많아요.",
     ["서울(대한민국의 수도. 인구 약 940만)은 커요.", "볼거리도 많아요."]),
    ("「봄날」이라는 노래예요. 들어 보세요.", ["「봄날」이라는 노래예요.", "들어 보세요."]),
    ("“좋아요!” 그녀가 웃었어요.", ["“좋아요!” 그녀가 웃었어요."]),
    ("그럼요(물론이죠). 언제든지요.", ["그럼요(물론이죠).", "언제든지요."]),
    # 34-37: abbreviations and initials
    ("Dr. Kim은 유명한 의사예요. 예약이 필요해요.", ["Dr. Kim은 유명한 의사예요.", "예약이 필요해요."]),
    ("사과 vs. 배, 어느 쪽이 좋아요? 저는 배요.", ["사과 vs. 배, 어느 쪽이 좋아요?", "저는 배요."]),
    ("J. K. 롤링이 썼어요. 해리 포터 작가예요.", ["J. K. 롤링이 썼어요.", "해리 포터 작가예요."]),
    ("자세한 건 www.example.com을 보세요. 정보가 많아요.", ["자세한 건 www.example.com을 보세요.", "정보가 많아요."]),
    # 38-44: short fragments merged, markdown and emoji stripped
    ("네. 지금 바로 켤게요.", ["네. 지금 바로 켤게요."]),
    ("아! 그렇군요. 몰랐어요.", ["아! 그렇군요.", "몰랐어요."]),
    ("**중요:** 약은 식후에 드세요.", ["중요: 약은 식후에 드세요."]),
    ("좋은 아침이에요! 😊 오늘도 화이팅하세요! 🎉", ["좋은 아침이에요!", "오늘도 화이팅하세요!"]),
    ("## 요약\n비가 와요. 우산 챙기세요.", ["요약 비가 와요.", "우산 챙기세요."]),
    ("`sudo reboot`를 입력하세요. 재부팅돼요.", ["sudo reboot를 입력하세요.", "재부팅돼요."]),
    ("[기상청](https://www.kma.go.kr)에 따르면 비가 와요. 조심하세요.", ["기상청에 따르면 비가 와요.", "조심하세요."]),
    # 45-48: tails are never lost
    ("마지막 문장에는 마침표가 없어요", ["마지막 문장에는 마침표가 없어요"]),
    ("첫 문장입니다. 끝 문장은 마침표가 없음", ["첫 문장입니다.", "끝 문장은 마침표가 없음"]),
    ("좋아요", ["좋아요"]),
    ("😊👍", []),
]


def feed_whole(text: str) -> list[str]:
    return split_sentences(text)


def feed_streaming(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    s = SentenceSplitter()
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 4)
        out += s.feed(text[i : i + n])
        i += n
    return out + s.flush()


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[f"case{i + 1}" for i in range(len(CASES))])
def test_split(text, expected):
    assert feed_whole(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[f"case{i + 1}" for i in range(len(CASES))])
def test_streaming_chunks_give_the_same_sentences(text, expected):
    for seed in range(3):
        assert feed_streaming(text, seed) == expected


def test_an_ambiguous_end_waits_for_the_next_word():
    s = SentenceSplitter()
    assert s.feed("기온은 25도, 습도는 60%.") == []  # "60%." could still go on
    assert s.feed(" ") == []
    assert s.feed("내") == ["기온은 25도, 습도는 60%."]
    assert s.flush() == ["내"]


def test_a_korean_end_is_released_by_the_space_after_it():
    s = SentenceSplitter()
    assert s.feed("오늘은 맑아요.") == []  # "요." may still become "요..." or "요.)"
    assert s.feed(" ") == ["오늘은 맑아요."]  # the space confirms it: nothing after it can change this end
    assert s.feed("정말 그래요?") == []
    assert s.feed(" 그") == ["정말 그래요?"]  # after "?" the next word decides ("그래요? 라고" goes on)
    assert s.feed("럼요! ") == []
    assert s.feed("좋") == []  # too short alone ("그럼요!" has 3 letters): merged with what follows
    assert s.feed("습니다. ") == ["그럼요! 좋습니다."]
    assert s.feed("버전 3.") == []
    assert s.flush() == ["버전 3."]


def test_decimal_is_not_split_while_streaming():
    s = SentenceSplitter()
    assert s.feed("기온은 25.") == []
    assert s.feed("5도예요.") == []
    assert s.feed(" ") == ["기온은 25.5도예요."]
    assert s.feed("좋네요.") == []
    assert s.flush() == ["좋네요."]


def test_flush_resets_and_reset_clears():
    s = SentenceSplitter()
    s.feed("안녕하세요. 반")
    s.reset()
    assert s.flush() == []
    s.feed("다시 시작해요")
    assert s.flush() == ["다시 시작해요"]
    assert s.flush() == []


def test_clean_for_speech_keeps_korean_numbers_and_punctuation():
    assert clean_for_speech("**25.5도**, 맑음 ☀️!") == "25.5도, 맑음!"
