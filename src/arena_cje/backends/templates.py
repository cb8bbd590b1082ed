"""Chat templates: how a (system, user, assistant) conversation is written as one string.

Teacher forcing through a completions endpoint sends raw text, so the client must write the
conversation exactly as the server's chat endpoint does before generation; otherwise the scored
log-probs belong to a different context than the one the response was sampled in
(``kedro check-models`` detects such a mismatch).

The template is chosen by configuration (``backend.openai_compatible.chat_template``): a name from
:data:`TEMPLATES` or a mapping with the fields of :class:`ChatTemplate` for any other model family.

The strings are copied from the models' own chat templates (``tokenizer_config.json``), for a
single user turn with an optional system prompt and the generation prompt:

* Llama 3.1 and 3.3 Instruct always write a system turn that starts with
  ``"Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"`` (their template's
  default ``date_string``), with or without a system prompt, and ``trim`` every message.
  Llama 3.2's template writes the server's current date instead where the server defines
  ``strftime_now``; give it a mapping with that date, and check it with ``kedro check-models``.
* Llama 3 (3.0) Instruct writes no system turn without a system prompt and trims every message.
* SmolLM2 Instruct writes the system prompt "You are a helpful AI assistant named SmolLM, trained by
  Hugging Face" when none is given (``smollm2``); plain ``chatml`` writes none (Qwen2.5 has its
  own default system prompt: use a mapping with ``default_system`` for it).
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
            response's log-prob (stopping is part of the policy's choice) when the reply ended,
            and absent when it was cut at ``max_tokens``.
        default_system: System prompt the model's template writes when none is given (``None``:
            no system turn then; ``""``: an empty system turn, as Llama 3.1 writes).
        trim: Strip leading/trailing whitespace from the system and user messages, as templates
            using Jinja's ``| trim`` do (the reply itself is never changed).
    """

    name: str
    bos: str
    system: str
    user: str
    assistant_header: str
    end_of_turn: str
    default_system: str | None = None
    trim: bool = False

    def _content(self, text: str) -> str:
        return text.strip() if self.trim else text

    def prefix(self, prompt: str, system_prompt: str = "", with_bos: bool = False) -> str:
        """The text the assistant's reply is appended to (everything up to the reply)."""
        parts = [self.bos if with_bos else ""]
        if system_prompt:
            parts.append(self.system.format(content=self._content(system_prompt)))
        elif self.default_system is not None:
            parts.append(self.system.format(content=self.default_system))
        parts.append(self.user.format(content=self._content(prompt)))
        parts.append(self.assistant_header)
        return "".join(parts)

    def render(
        self, prompt: str, response: str, system_prompt: str = "", with_bos: bool = False, ended: bool = True
    ) -> tuple[str, int, int]:
        """Write the whole conversation and locate the reply in it.

        Args:
            prompt: The user message.
            response: The assistant's reply.
            system_prompt: The system prompt ("" for none).
            with_bos: Write the BOS marker first.
            ended: The reply ended with the end-of-turn marker (``False``: it was cut at
                ``max_tokens`` and no end-of-turn marker is written).

        Returns:
            ``(text, start, end)``: the rendered text, and the character span ``text[start:end]``
            holding the response followed by the end-of-turn marker when ``ended``.
        """
        head = self.prefix(prompt, system_prompt, with_bos)
        text = head + response + (self.end_of_turn if ended else "")
        return text, len(head), len(text)


#: Llama 3.1/3.3's system-turn preamble (their template's default ``date_string``).
LLAMA31_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
#: SmolLM2 Instruct's default system prompt, written when the conversation has none.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: Built-in templates. ``llama3`` is Llama 3 (3.0) Instruct only; ``llama3.1`` is Llama 3.1/3.3
#: Instruct (system turn always written, with the knowledge-cutoff/date preamble); ``llama4`` is
#: Llama 4 (Scout/Maverick) Instruct; ``chatml`` is the ``<|im_start|>`` format without a default
#: system prompt; ``smollm2`` is chatml with SmolLM2-Instruct's default system prompt; ``raw`` puts
#: the reply straight after the prompt (base models, tests).
TEMPLATES: dict[str, ChatTemplate] = {
    "llama3": ChatTemplate(
        name="llama3",
        bos="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        trim=True,
    ),
    "llama3.1": ChatTemplate(
        name="llama3.1",
        bos="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA31_PREAMBLE + "{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        default_system="",
        trim=True,
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
    "smollm2": ChatTemplate(
        name="smollm2",
        bos="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_header="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        default_system=SMOLLM2_DEFAULT_SYSTEM,
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
    """Resolve ``backend.openai_compatible.chat_template``.

    Args:
        spec: A template name (``llama3``, ``llama3.1``, ``llama4``, ``chatml``/``generic``,
            ``smollm2``, ``raw``) or a mapping with the fields of :class:`ChatTemplate` (``name``
            optional, ``bos`` defaults to ``""``, ``default_system`` to ``None``, ``trim`` to
            ``False``).

    Raises:
        ValueError: Unknown name, or a mapping with missing/unknown fields.
    """
    if isinstance(spec, str):
        if spec not in TEMPLATES:
            raise ValueError(
                f"backend.openai_compatible.chat_template: unknown template {spec!r}; choose one of "
                f"{sorted(TEMPLATES)} or give a mapping with fields "
                f"{[f.name for f in fields(ChatTemplate)]}"
            )
        return TEMPLATES[spec]
    values = {"name": "custom", "bos": "", "default_system": None, "trim": False, **dict(spec)}
    allowed = {f.name for f in fields(ChatTemplate)}
    unknown, missing = set(values) - allowed, allowed - set(values)
    if unknown or missing:
        raise ValueError(
            f"backend.openai_compatible.chat_template: unknown field(s) {sorted(unknown)}, "
            f"missing field(s) {sorted(missing)}; fields are {sorted(allowed)}"
        )
    return ChatTemplate(**values)
