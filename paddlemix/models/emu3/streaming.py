"""Token streamers for ``generate(..., streamer=...)``: text pieces as soon as they are decoded (transformers'
``TextStreamer`` / ``TextIteratorStreamer`` protocol).

``generate`` calls ``streamer.put(prompt_ids)`` once (``[B, L]``), then ``streamer.put(new_ids)`` after every step
(``[B]``: the token each row chose; rows that already produced eos get the pad token), then ``streamer.end()``.

The text streamers hold back the bytes of an incomplete UTF-8 character (the tokenizer is byte-level BPE, so one
character may span several tokens) and emit only whole characters; the pieces joined equal the batch decode of the
streamed ids (``tokenizer.decode(ids, skip_special_tokens=...)``, broken UTF-8 as U+FFFD).
"""

import codecs
import queue

import numpy as np


class TextStreamer:
    """Decodes the new tokens of ONE sequence (batch size 1) and prints each piece to stdout as it comes.

    Args:
        tokenizer: an ``Emu3Tokenizer`` (anything with ``decode(ids, skip_special_tokens=..., errors=...)``).
        skip_prompt: drop the first ``put`` (the prompt ids), as transformers' ``skip_prompt=True``.
        skip_special_tokens: drop special and visual tokens (what an answer's text needs).
        callback: ``callback(text)`` for every piece instead of printing (``on_text`` calls it).
    """

    def __init__(self, tokenizer, skip_prompt=True, skip_special_tokens=True, callback=None):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.skip_special_tokens = skip_special_tokens
        self.callback = callback
        self.token_ids = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._next_is_prompt = True

    def put(self, token_ids):
        """Take the next ids (a prompt ``[1, L]`` / ``[L]``, or a step's ``[1]``) and emit the whole characters they
        complete. ``token_ids`` collects the streamed ids (the prompt too unless skipped) until the next stream."""
        ids = np.asarray(token_ids.numpy() if hasattr(token_ids, "numpy") else token_ids)
        if ids.ndim > 1:
            if ids.shape[0] != 1:
                raise ValueError(f"{type(self).__name__} streams one sequence; got a batch of {ids.shape[0]} rows")
            ids = ids[0]
        ids = ids.reshape(-1).astype(np.int64)
        if self._next_is_prompt:  # a new stream begins
            self._next_is_prompt = False
            self.token_ids = []
            if self.skip_prompt:
                return
        self.token_ids.extend(ids.tolist())
        text = self._decoder.decode(self._token_bytes(ids))
        if text:
            self.on_text(text)

    def end(self):
        """Flush the held-back bytes (an incomplete character becomes U+FFFD, as in a batch decode) and finish."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._next_is_prompt = True
        self.on_text(text, stream_end=True)

    def on_text(self, text, stream_end=False):
        """One decoded piece; prints it (newline at the end of the stream) unless a callback was given."""
        if self.callback is not None:
            if text:
                self.callback(text)
            return
        print(text, flush=True, end="" if not stream_end else "\n")

    def _token_bytes(self, ids):
        """The exact bytes of ``ids``: invalid UTF-8 survives decoding as surrogates and is encoded back."""
        text = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens, errors="surrogateescape")
        return text.encode("utf-8", errors="surrogateescape")


class TextIteratorStreamer(TextStreamer):
    """A ``TextStreamer`` whose pieces are read by iterating over it, e.g. from another thread than the one running
    ``generate`` (a server or a UI); the iteration ends after ``end()``.

    Args:
        timeout: seconds one ``next()`` waits for a piece before raising ``queue.Empty`` (None: wait forever).
    """

    _END = object()

    def __init__(self, tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens)
        self.timeout = timeout
        self.text_queue = queue.Queue()

    def on_text(self, text, stream_end=False):
        if text:
            self.text_queue.put(text)
        if stream_end:
            self.text_queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self):
        piece = self.text_queue.get(timeout=self.timeout)
        if piece is self._END:
            raise StopIteration
        return piece

