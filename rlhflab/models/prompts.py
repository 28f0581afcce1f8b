"""Prompt formats: chat template or the plain hh-rlhf template, and a tokenizer made safe for batched generation."""
from __future__ import annotations

from rlhflab.errors import UserError

PLAIN_TEMPLATE_HUMAN = "\n\nHuman: "


PLAIN_TEMPLATE_ASSISTANT = "\n\nAssistant:"


def format_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text a policy sees for a prompt (a user message or a chat history), ready for the reply.

    Uses the tokenizer's chat template when it has one, else the plain hh-rlhf
    'Human:/Assistant:' template (GPT-2-style models).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = ""
    for m in messages:
        tag = PLAIN_TEMPLATE_HUMAN if m["role"] == "user" else PLAIN_TEMPLATE_ASSISTANT + " "
        if m["role"] == "system":
            continue
        text += tag + m["content"].strip()
    return text + PLAIN_TEMPLATE_ASSISTANT


def with_system(prompt: str | list[dict], system: str | None) -> str | list[dict]:
    """The prompt as a policy is asked it: `system` as the chat's system message before it (None: unchanged, so the
    chat template's own default system message, if any, applies). A history that has a system message keeps it.

    Every policy-side use of a prompt (training, rollouts, evaluation, probe, arena) goes through here, and the
    reward model and judge score that same asked prompt, so a run's reward and its evaluation see one context.
    """
    if not system:
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def format_response(tokenizer, response: str) -> str:
    """A response as it follows format_prompt's output (the plain template puts a space after 'Assistant:')."""
    return response if getattr(tokenizer, "chat_template", None) else " " + response.strip()


def _probe_prompt_ids(tokenizer) -> set[int]:
    probe = format_prompt(tokenizer, [{"role": "user", "content": "Hi there."},
                                      {"role": "assistant", "content": "Hello! How can I help?"},
                                      {"role": "user", "content": "Tell me a fact."}])
    return set(tokenizer(probe, add_special_tokens=True)["input_ids"])


def prepare_tokenizer(tokenizer):
    """Left padding and a pad token that never occurs inside a formatted prompt.

    With right padding, or with a pad id that also appears inside prompts (SmolLM2's pad is
    <|im_end|>, which ends every chat turn), TRL masks real prompt tokens and the logged KL
    between identical policies is tens of nats instead of 0.
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    inside = _probe_prompt_ids(tokenizer)
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in inside:
        return tokenizer
    vocab = tokenizer.get_vocab()
    for candidate in ("<|endoftext|>", "<pad>", "<|pad|>", tokenizer.eos_token, tokenizer.unk_token):
        if candidate and candidate in vocab and vocab[candidate] not in inside:
            tokenizer.pad_token = candidate
            return tokenizer
    raise UserError(f"tokenizer {tokenizer.name_or_path} has no token usable for padding that never occurs in "
                    f"prompts; add a pad token to the model first.")
