"""Chat templates: how a (system, user, assistant) conversation is written as one string.

Teacher forcing through a completions endpoint sends raw text, so the client must write the
conversation exactly as the server's chat endpoint does before generation; otherwise the scored
log-probs belong to a different context than the one the response was sampled in
(``kedro check-models`` detects such a mismatch).

The template is chosen by configuration (``backend.options.chat_template``): a name from
:data:`TEMPLATES` or a mapping with the fields of :class:`ChatTemplate` for any other model family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ChatTemplate:
    """A single-turn chat template written as literal strings.

    Attributes:
        name: Template name.
        bos: Beginning-of-text marker written before everything (``""`` for none). Most servers add
            the BOS token themselves when tokenising a completions prompt, so it is only written
            when ``render(..., with_bos=True)`` is asked for.
        system: Format of the system turn with a ``{content}`` field; omitted when the system prompt
            is empty.
        user: Format of the user turn with a ``{content}`` field.
        assistant_header: What precedes the assistant's reply.
        end_of_turn: The end-of-turn marker that ends the reply; its log-prob is part of the
            response's log-prob (stopping is part of the policy's choice).
    """

    name: str
    bos: str
    system: str
    user: str
    assistant_header: str
    end_of_turn: str

    def prefix(self, prompt: str, system_prompt: str = "", with_bos: bool = False) -> str:
        """The text the assistant's reply is appended to (everything up to the reply)."""
        parts = [self.bos if with_bos else ""]
        if system_prompt:
            parts.append(self.system.format(content=system_prompt))
        parts.append(self.user.format(content=prompt))
        parts.append(self.assistant_header)
        return "".join(parts)

    def render(
        self, prompt: str, response: str, system_prompt: str = "", with_bos: bool = False
    ) -> tuple[str, int, int]:
        """Write the whole conversation and locate the reply in it.

        Returns:
            ``(text, start, end)``: the rendered text, and the character span ``text[start:end]``
            holding the response followed by the end-of-turn marker.
        """
        head = self.prefix(prompt, system_prompt, with_bos)
        text = head + response + self.end_of_turn
        return text, len(head), len(text)


#: Built-in templates. ``llama3`` is Llama 3/3.1/3.2/3.3 Instruct without tool or date preamble,
#: ``llama4`` is Llama 4 (Scout/Maverick) Instruct, ``chatml`` is the ``<|im_start|>`` format
#: (Qwen, many fine-tunes), ``raw`` puts the reply straight after the prompt (base models, tests).
TEMPLATES: dict[str, ChatTemplate] = {
    "llama3": ChatTemplate(
        name="llama3",
        bos="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
    ),
    "llama4": ChatTemplate(
        name="llama4",
        bos="<|begin_of_text|>",
        system="<|header_start|>system<|header_end|>\n\n{content}<|eot|>",
        user="<|header_start|>user<|header_end|>\n\n{content}<|eot|>",
        assistant_header="<|header_start|>assistant<|header_end|>\n\n",
        end_of_turn="<|eot|>",
    ),
    "chatml": ChatTemplate(
        name="chatml",
        bos="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_header="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
    ),
    "raw": ChatTemplate(
        name="raw",
        bos="",
        system="{content}\n\n",
        user="{content}",
        assistant_header="",
        end_of_turn="<|endoftext|>",
    ),
}
TEMPLATES["generic"] = TEMPLATES["chatml"]


def get_template(spec: str | Mapping[str, Any]) -> ChatTemplate:
    """Resolve ``backend.options.chat_template``.

    Args:
        spec: A template name (``llama3``, ``llama4``, ``chatml``/``generic``, ``raw``) or a
            mapping with the fields of :class:`ChatTemplate` (``name`` optional, ``bos`` defaults
            to ``""``).

    Raises:
        ValueError: Unknown name, or a mapping with missing/unknown fields.
    """
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(
                f"backend.options.chat_template: unknown template {spec!r}; choose one of "
                f"{sorted(TEMPLATES)} or give a mapping with fields "
                f"{[f.name for f in fields(ChatTemplate)]}"
            )
        return TEMPLATES[spec]
    values = {"name": "custom", "bos": "", **dict(spec)}
    allowed = {f.name for f in fields(ChatTemplate)}
    unknown, missing = set(values) - allowed, allowed - set(values)
    if unknown or missing:
        raise ValueError(
            f"backend.options.chat_template: unknown field(s) {sorted(unknown)}, "
            f"missing field(s) {sorted(missing)}; fields are {sorted(allowed)}"
        )
    return ChatTemplate(**values)
