"""Reading a server's echo: which echoed tokens are the response's, and their log-probs.

Teacher forcing sends the conversation to ``POST {base_url}/completions`` with ``echo=True``. The
response's tokens are located by their *text*: the echo must spell the text sent (a BOS token the
server added is allowed first), and the tokens from the located start must spell exactly the
response (+ end of turn); offsets are not trusted (vLLM's count the BOS text and drift on split
UTF-8 characters, and Fireworks does not document their unit). When no token starts exactly where
the response starts (the last prompt characters and the first response characters were merged
into one token) the two-call difference log P(prefix+response) - log P(prefix) over the tokens
after the texts' common prefix is used (``usage["two_call"] = 1``); a prompt token is never
summed. Echoed log-probs are read from ``choices[0].logprobs`` (OpenAI, vLLM, Fireworks) or from
the top-level ``prompt[0].logprobs`` (Together). An echo that is empty, absent or does not spell
the text sent (a server that ignores ``echo``) is an error, never 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arena_cje.backends.openai_compatible.errors import MalformedResponseError


def spells(tokens: Sequence[str], text: str) -> bool:
    """Do the token texts, joined, spell ``text`` exactly?

    A run of n U+FFFD replacement characters stands for 1 to n non-ASCII characters: servers that
    decode each token alone (vLLM) show the pieces of a multi-byte character split across tokens
    that way. Everything else must match character for character.
    """
    joined = "".join(tokens)
    if joined == text:
        return True
    if "\ufffd" not in joined:
        return False
    pattern = "".join(
        f"[^\\x00-\\x7f]{{1,{len(part)}}}" if part.startswith("\ufffd") else re.escape(part)
        for part in re.split("(\ufffd+)", joined) if part
    )
    return re.fullmatch(pattern, text, re.S) is not None


def _literal_chars(tokens: Sequence[str]) -> int:
    """Characters of the joined tokens that must match literally (replacement characters excluded)."""
    return sum(len(t) - t.count("\ufffd") for t in tokens)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in character -> byte (its ``bytes_to_unicode`` inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_LEVEL = _byte_level_decoder()
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_text_variants(tokens: Sequence[str]) -> list[list[str]]:
    """Readings of echoed tokens that some servers return undecoded, most likely first.

    Decoded text as is; GPT-2 byte-level BPE pieces (``"Ġthe"`` for ``" the"``), each decoded alone;
    SentencePiece pieces (``"▁the"``, ``"<0x0A>"``), with the leading dummy-prefix space dropped.
    A reading is used only when it spells the text sent exactly.
    """
    variants = [list(tokens)]
    if all(all(ch in _BYTE_LEVEL for ch in t) for t in tokens):
        variants.append([bytes(_BYTE_LEVEL[ch] for ch in t).decode("utf-8", "replace") for t in tokens])
    if any("\u2581" in t or _SP_BYTE.search(t) for t in tokens):
        pieces = [_SP_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]).decode("utf-8", "replace"),
                               t.replace("\u2581", " ")) for t in tokens]
        variants.append(pieces)
        # The text's first piece (after a BOS) may carry SentencePiece's dummy-prefix space.
        for i in range(min(2, len(pieces))):
            if pieces[i].startswith(" "):
                variants.append([*pieces[:i], pieces[i][1:], *pieces[i + 1:]])
    return variants


def echo_text_start(tokens: Sequence[str], text: str) -> int | None:
    """Index of the echo's first token of ``text``: 0, or 1 when the server put a BOS token the
    client did not send first; ``None`` when the echo does not spell ``text`` (no echo)."""
    if not tokens:
        return None
    if spells(tokens, text):
        return 0
    if spells(tokens[1:], text):
        return 1
    return None


def locate_span(tokens: Sequence[str], text: str, start: int, first: int = 0) -> int | None:
    """Index ``j`` where the echo of ``text`` splits into ``text[:start]`` and ``text[start:]``.

    ``tokens[first:]`` are the echo's tokens of ``text`` (``first`` is 1 when the server put a BOS
    token first). ``tokens[j:]`` must spell exactly ``text[start:]`` and ``tokens[first:j]``
    exactly ``text[:start]``; ``j`` is at least 1 (the first token of an echo has no log-prob).
    Searched from the end. ``None`` when no token boundary falls there (the first characters of
    ``text[start:]`` were merged with the text before into one token), or when replacement
    characters let two boundaries spell it (a multi-byte character split around the boundary:
    which bytes are the prompt's cannot be told).

    Empty token texts are the leading bytes of a multi-byte character that a later token
    completes (vLLM decodes each token alone and shows such pieces as ``""``: 良 is ``"", "", "良"``).
    When the candidate boundaries differ only by such empty tokens, the earliest is the right one:
    ``text[:start]`` ends in a whole character, so bytes of an unfinished one belong to the reply.
    """
    target, head = text[start:], text[:start]
    found = []
    for j in range(len(tokens) - 1, max(first, 1) - 1, -1):
        tail = tokens[j:]
        if _literal_chars(tail) > len(target):
            break
        if spells(tail, target) and spells(tokens[first:j], head):
            found.append(j)
    if found and all(t == "" for t in tokens[min(found):max(found)]):
        return min(found)
    return None


@dataclass
class _Echo:
    """Echoed log-probs of one text, normalised across reply shapes.

    ``tokens`` are the token texts as they spell the text (decoded when the server returned raw
    byte-level or SentencePiece pieces), ``raw`` as the server returned them (the keys of
    ``tops``); ``first`` is the index of the text's first token (1 when the server put a BOS token
    first).
    """

    tokens: list[str]
    values: list[Any]
    tops: list[Any]
    first: int
    raw: list[str] = field(default_factory=list)


def _logprob_blocks(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Candidate echo blocks of a completions reply, in the order they are tried."""
    blocks: list[tuple[str, Any]] = []
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        blocks.append(("choices[0].logprobs", choices[0].get("logprobs")))
        prompt = choices[0].get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
            blocks.append(("choices[0].prompt[0].logprobs", prompt[0].get("logprobs")))
    prompt = data.get("prompt")  # Together: echoed log-probs at the top level
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        blocks.append(("prompt[0].logprobs", prompt[0].get("logprobs")))
    return blocks


def _parse_echo(data: Mapping[str, Any], text: str) -> _Echo:
    """The echoed log-probs of ``text`` from a completions reply (OpenAI or Together shape).

    Raises:
        MalformedResponseError: no block holds tokens that spell ``text`` (absent or empty echo,
            or a server that ignored ``echo`` and scored something else).
    """
    seen = []
    for where, block in _logprob_blocks(data):
        if not isinstance(block, Mapping):
            seen.append(f"{where} absent")
            continue
        tokens, values = block.get("tokens"), block.get("token_logprobs")
        if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
            seen.append(f"{where} without tokens/token_logprobs of equal length")
            continue
        if not tokens:
            seen.append(f"{where} empty")
            continue
        if not all(isinstance(t, str) for t in tokens):
            seen.append(f"{where} has non-text tokens")
            continue
        for reading in token_text_variants(tokens):
            first = echo_text_start(reading, text)
            if first is not None:
                break
        else:
            seen.append(f"{where} has {len(tokens)} tokens that do not spell the text sent")
            continue
        tops = block.get("top_logprobs")
        if not isinstance(tops, list) or len(tops) != len(tokens):
            tops = [None] * len(tokens)
        # Top-k entries stay keyed by the server's token text, as the scored token is looked up there.
        return _Echo(reading, list(values), list(tops), first, list(tokens))
    found = "; ".join(seen) if seen else "no choices"
    raise MalformedResponseError(
        f"no echo of the text sent in the completions reply ({found}): the server ignored echo=True "
        "or returns the echo in an unknown shape"
    )


def _common_prefix(a: _Echo, b: _Echo) -> int:
    """Number of leading tokens two echoes share (same token text)."""
    n = 0
    # The last token of the shorter text may continue differently in the longer one: never share it.
    while n < min(len(a.tokens), len(b.tokens)) - 1 and a.tokens[n] == b.tokens[n]:
        n += 1
    return n
