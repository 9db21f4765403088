"""How a chat request becomes the engine's request (service.http.chat), in-process: the speaker blocks of a
`stream` model, the reply's implicit end, and the sampling fields carried over unchanged."""

from __future__ import annotations

from service.http.chat import ChatRequest, prepare_chat
from tests.support.fake_engine import manifest

PROSE = manifest("prose", "stream")


def prepared(**fields: object):  # type: ignore[no-untyped-def]
    body = ChatRequest.model_validate({"model": "prose", "messages": [{"role": "user", "content": "hi"}], **fields})
    return prepare_chat(body, PROSE, "chat-1", deadline=1.0).req


def test_the_reply_ends_at_its_speakers_blank_line() -> None:
    req = prepared(stop=["x"])
    assert req.prompts == ("USER:\nhi\n\nASSISTANT:\n",)
    assert req.sampling.stop == ("x", "\n\n")


def test_ignore_eos_lifts_the_implicit_turn_end_too() -> None:
    # a fixed-length chat benchmark (ignore_eos, max_tokens) must get max_tokens, not a reply cut at "\n\n"
    req = prepared(ignore_eos=True, max_tokens=64, stop=["x"])
    assert req.sampling.stop == ("x",) and req.sampling.ignore_eos
    assert req.sampling.max_new_tokens == 64


def test_sampling_fields_reach_the_engine_unchanged() -> None:
    req = prepared(temperature=0.5, top_p=0.9, seed=7, presence_penalty=0.5, n=3, logprobs=True, top_logprobs=2)
    s = req.sampling
    assert (s.temperature, s.top_p, s.seed, s.presence_penalty, s.logprobs) == (0.5, 0.9, 7, 0.5, 2)
    assert req.n == 3
