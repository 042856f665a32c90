"""Text in and out: the ``tokenizers`` tokenizer of the checkpoint, and incremental detokenization that
streams text as tokens arrive while holding back what could still become a stop string or an
unfinished UTF-8 character."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["Detokenizer", "load_tokenizer"]


def load_tokenizer(checkpoint_dir: Path) -> Tokenizer:
    path = checkpoint_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (the checkpoint needs a tokenizers tokenizer.json)")
    return Tokenizer.from_file(str(path))


class Detokenizer:
    """Generated tokens → new text since the last call; finds stop strings across token boundaries."""

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self._sent = 0
        """Characters of the decoded text already handed out."""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one token; return the text that may be sent now (possibly empty)."""
        self.ids.append(token)
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self._stops:
            at = text.find(stop, max(0, self._sent - len(stop) + 1))
            if at != -1:
                self.stopped = True
                out = text[self._sent : at] if at > self._sent else ""
                self._sent = max(self._sent, at)
                return out
        safe = len(text)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for its next token
            safe = len(text.rstrip("\ufffd"))
        safe = max(self._sent, min(safe, len(text) - self._hold))
        out = text[self._sent : safe]
        self._sent = safe
        return out

    def flush(self) -> str:
        """The text held back, at the end of a sequence that did not stop on a stop string."""
        if self.stopped:
            return ""
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        out = text[self._sent :]
        self._sent = len(text)
        return out
