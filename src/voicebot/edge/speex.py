"""Speex's linear echo canceller (libspeexdsp's MDF filter), for the barge-in detector's second look.

AEC3 (edge/aec.py) gives the recognizer a clean signal, but its suppressor takes a person's voice down 15-30 dB along
with the echo it fears wherever the echo at the microphone is as loud as the person (a speaker next to the
microphone), and there the person's first 400 ms are too faint to tell from the device. A linear filter has no
suppressor: what it leaves is the person at full level plus the residual echo, which is 20-30 dB under the echo once
the filter has learnt the room. So the detector also asks this filter (edge/aec.py decides when it may).

libspeexdsp (Xiph, in Debian and Raspberry Pi OS as ``libspeexdsp1``) is loaded with ctypes: the PyPI binding is an
unmaintained source package that needs SWIG and the headers on every device. Four functions of its stable C API.

A linear filter needs the far end aligned to the sample: a 3-sample (0.2 ms) shift undoes 20-30 dB of cancellation.
The player's stamps are not that exact (each sentence's first sample is heard a little off its stamp, differently
each time), so edge/aec.py realigns the filter's far end at each sentence from the echo path it has learnt
(``impulse_response``).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

# (speex/speex_echo.h)
SPEEX_ECHO_SET_SAMPLING_RATE = 24
SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE = 27
SPEEX_ECHO_GET_IMPULSE_RESPONSE = 29


class SpeexUnavailable(RuntimeError):
    """libspeexdsp is not installed: the barge-in detector uses AEC3's output alone."""


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("speexdsp")
    if name is None:
        raise SpeexUnavailable("libspeexdsp not found (apt-get install libspeexdsp1)")
    lib = ctypes.CDLL(name)
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    return lib


class SpeexEchoCanceller:
    """``process(mic, far)``: the microphone with the filter's estimate of the far end's echo subtracted (int16 in,
    int16 out, any multiple of ``block`` samples). The far end must be aligned to the microphone to within the
    filter's length (``filter_ms``: the room's delay plus the reverberation that matters)."""

    def __init__(self, rate: int = 16_000, *, block: int = 160, filter_ms: int = 256) -> None:
        self._lib = _library()
        self.block = block
        self._state = self._lib.speex_echo_state_init(block, rate * filter_ms // 1000)
        if not self._state:
            raise SpeexUnavailable("speex_echo_state_init failed")
        value = ctypes.c_int(rate)
        self._lib.speex_echo_ctl(self._state, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(value))

    def process(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        mic = np.ascontiguousarray(mic, dtype=np.int16)
        far = np.ascontiguousarray(far, dtype=np.int16)
        out = np.empty(len(mic) // self.block * self.block, dtype=np.int16)
        step = self.block * 2  # (bytes)
        for i in range(0, len(out) // self.block):
            self._lib.speex_echo_cancellation(self._state, mic.ctypes.data + i * step, far.ctypes.data + i * step,
                                              out.ctypes.data + i * step)
        return out

    def impulse_response(self) -> np.ndarray:
        """The echo path the filter has learnt, in samples from the far end to the microphone (arbitrary scale)."""
        size = ctypes.c_int(0)
        self._lib.speex_echo_ctl(self._state, SPEEX_ECHO_GET_IMPULSE_RESPONSE_SIZE, ctypes.byref(size))
        taps = (ctypes.c_int32 * size.value)()
        self._lib.speex_echo_ctl(self._state, SPEEX_ECHO_GET_IMPULSE_RESPONSE, taps)
        return np.frombuffer(taps, dtype=np.int32).astype(np.float64)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.speex_echo_state_destroy(state)
