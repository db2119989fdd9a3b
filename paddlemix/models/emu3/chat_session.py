"""A multi-turn chat with an Emu3 chat model that keeps the KV cache of the turns so far: a follow-up question
prefills only its own tokens (the images of earlier turns are neither encoded nor read again)."""

import numpy as np
from PIL import Image

from .chat_template import DEFAULT_SYSTEM_PROMPT, render_chat
from .modeling_emu3 import Emu3KVCache


class ChatSession:
    """One conversation in the Emu3-Chat format (``chat_template.py``), one row, greedy or sampled.

    The model sees exactly ``token_ids``: bos, the first turn (system prompt, user text, images), then each answer
    as generated (up to, not including, its eos) followed by the next turn ``" USER: ... ASSISTANT:"``. So a
    follow-up gives the tokens of a from-scratch ``generate`` on ``token_ids`` + the new turn.

    Args:
        model: an ``Emu3ForCausalLM``.
        processor: an ``Emu3Processor`` (tokenizer and vision tokenizer).
        system_prompt: the first turn's system prompt (None or "": none).
        padding_image: encode a turn's images as one zero-padded batch (see ``Emu3Processor.tokenize_image``).
    """

    def __init__(self, model, processor, system_prompt=DEFAULT_SYSTEM_PROMPT, padding_image=False):
        self.model = model
        self.processor = processor
        self.system_prompt = system_prompt
        self.padding_image = padding_image
        self.reset()

    def reset(self):
        """Forget the conversation (history, tokens and cache)."""
        self.messages = []  # transformers-style history: user turns (image items without pixels) and answers
        self.token_ids = []
        self.cache = None

    def ask(self, text, images=None, streamer=None, **generate_kwargs):
        """Answer ``text`` about ``images`` (a PIL image or a list; default none) given the turns so far.

        The images go before the text, or into the text's ``<image>`` placeholders (one each) when it has some.
        ``streamer`` and ``generate_kwargs`` (``max_new_tokens``, ``do_sample``, ``top_k``, ``top_p``,
        ``temperature``, ``seed``, ``progress``) go to ``generate``. Returns the answer text (special tokens
        skipped) and appends the turn to ``messages``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        images = [] if images is None else [images] if isinstance(images, Image.Image) else list(images)
        if not all(isinstance(im, Image.Image) for im in images):
            raise ValueError("images must be a PIL.Image.Image or a list of them")
        if not text and not images:
            raise ValueError("a chat turn needs a text or an image")
        tok, first = self.processor.tokenizer, not self.token_ids
        inline = tok.image_token in text
        content = ([] if inline else [{"type": "image"}] * len(images)) + [{"type": "text", "text": text}]
        message = {"role": "user", "content": content}
        prompt = render_chat([message], self.system_prompt, add_generation_prompt=True, with_system=first,
                             image_token=tok.image_token)
        grids = self.processor.tokenize_image(images, padding_image=self.padding_image)
        prompt = self.processor.expand_image_placeholders(prompt, grids)
        turn_ids = tok.encode(tok.bos_token + prompt if first else " " + prompt)

        if self.cache is None:
            self.cache = Emu3KVCache.for_model(self.model.config, 1, len(turn_ids), self.model.dtype)
        # the cache holds a prefix of token_ids (generate does not feed a turn's last token); later slots are stale
        self.cache.length = min(self.cache.length, len(self.token_ids))
        new_input = self.token_ids[self.cache.length:] + turn_ids
        out = self.model.generate(
            np.asarray([new_input], np.int64), past_key_values=self.cache, streamer=streamer, **generate_kwargs
        )
        answer_ids = out.numpy()[0, len(new_input):].tolist()
        if answer_ids and answer_ids[-1] == tok.eos_token_id:
            answer_ids = answer_ids[:-1]
        self.token_ids += turn_ids + answer_ids
        answer = tok.decode(answer_ids, skip_special_tokens=True)
        self.messages += [message, {"role": "assistant", "content": answer.strip()}]
        return answer
