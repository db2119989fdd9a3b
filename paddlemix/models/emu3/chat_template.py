"""The Emu3-Chat conversation format: transformers-style messages rendered to one prompt string with ``<image>``
placeholders (the processor replaces each by one image's tokens and prepends bos).

The format follows the chat template shipped with the ``-hf`` checkpoints (``chat_template.jinja``) and keeps the
original's single-turn prompt token for token:

    {system} USER: {<image> per image}{text}. ASSISTANT: {answer} USER: {text}. ASSISTANT:

* the system prompt (a ``system`` message, else ``system_prompt``; none when empty) is followed by one space;
* a user turn is ``"USER: "``, one ``<image>`` per image item (images first, as the -hf template), its text items
  joined by spaces, then ``". "``: the original appends "." to the question (``DEFAULT_CHAT_TEMPLATE``
  ``"... USER: {image_prompt}{text_prompt}. ASSISTANT:"``), where the -hf template writes only the space;
* an assistant turn is ``"ASSISTANT: " + text + " "`` as in the -hf template, with no eos: the model's answer
  follows the generation prompt ``"ASSISTANT:"`` and its eos is not part of the history (``ChatSession`` keeps the
  generated tokens up to, not including, eos).
"""

from PIL import Image

from .tokenization_emu3 import IMAGE_PLACEHOLDER

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
ROLES = ("system", "user", "assistant")


def message_parts(message, index):
    """``(role, images, texts)`` of one message: ``images`` one entry per image item (its PIL image, or None when
    the item carries none), ``texts`` the text items. ValueError for anything else."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ValueError(f"message {index} must be a dict with 'role' and 'content', got {message!r:.80}")
    role, content = message["role"], message["content"]
    if role not in ROLES:
        raise ValueError(f"message {index}: role must be one of {ROLES}, got {role!r}")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"message {index}: content must be a str or a list of items, got {type(content).__name__}")
    images, texts = [], []
    for j, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise ValueError(f"message {index}, item {j}: a text item needs a str 'text'")
            texts.append(item["text"])
        elif kind == "image":
            image = item.get("image")
            if image is not None and not isinstance(image, Image.Image):
                raise ValueError(f"message {index}, item {j}: 'image' must be a PIL.Image.Image")
            images.append(image)
        else:
            raise ValueError(
                f"message {index}, item {j}: items must be {{'type': 'text'|'image', ...}}, got {item!r:.80}"
            )
    if images and role != "user":
        raise ValueError(f"message {index}: only user messages may hold images ({role} has {len(images)})")
    return role, images, texts


def render_chat(
    messages, system_prompt=DEFAULT_SYSTEM_PROMPT, add_generation_prompt=True, with_system=True,
    image_token=IMAGE_PLACEHOLDER,
):
    """The prompt string of a conversation (no bos), ``image_token`` marking each image; see the module docstring.

    ``with_system=False`` renders the turns only (a chat continuing earlier turns). ValueError for a malformed
    message, a system message that is not the first one, or an empty conversation.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    parts = [message_parts(m, i) for i, m in enumerate(messages)]
    if any(role == "system" for role, _, _ in parts[1:]):
        raise ValueError("a system message may only come first")
    if parts[0][0] == "system":
        system_prompt = " ".join(parts[0][2])
        parts = parts[1:]
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise ValueError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
    out = [system_prompt + " "] if with_system and system_prompt else []
    for role, images, texts in parts:
        if role == "user":
            out.append("USER: " + image_token * len(images) + " ".join(texts) + ". ")
        else:
            out.append("ASSISTANT: " + " ".join(texts) + " ")
    if add_generation_prompt:
        out.append("ASSISTANT:")
    return "".join(out)


def chat_images(messages):
    """The images of a conversation's image items in order (None for an item without one)."""
    return [image for i, m in enumerate(messages) for image in message_parts(m, i)[1]]
