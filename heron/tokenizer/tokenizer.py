"""Heron's tokenizer: one interface over GGUF vocabularies and HF tokenizer directories."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from heron.tokenizer.gguf_vocab import EOT_LIKE_TOKENS, build_gguf_vocab

if TYPE_CHECKING:
    from heron.loader import Checkpoint

logger = logging.getLogger(__name__)

# Longer texts are encoded through the backend's batch call (see ``Tokenizer.encode``).
LONG_TEXT_CHARS = 4096
DEFAULT_TEMPLATE = "default"  # the name of the checkpoint's main chat template


def _never_prepend(node: Any) -> None:
    """Turn off every dummy-prefix step (`Metaspace` prepend, `Prepend` normalizer) in a
    tokenizer's JSON, in place: text encoded in the middle of a prompt gets no extra space."""
    if isinstance(node, dict):
        if node.get("type") == "Metaspace":
            node["prepend_scheme"] = "never"
            node.pop("add_prefix_space", None)
        for key in ("normalizers", "pretokenizers"):
            if isinstance(node.get(key), list):
                node[key] = [n for n in node[key] if not _is_prepend(n)]
        for value in node.values():
            _never_prepend(value)
    elif isinstance(node, list):
        for value in node:
            _never_prepend(value)


def _is_prepend(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "Prepend"


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _int_ids(value: Any) -> list[int]:
    """An `eos_token_id` from config.json / generation_config.json: int or list of ints."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, int) and not isinstance(v, bool)]


def _hf_chat_templates(path: Path, config: Mapping[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    if isinstance(raw, str):
        templates[DEFAULT_TEMPLATE] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, Mapping) and isinstance(entry.get("template"), str):
                templates[str(entry.get("name", DEFAULT_TEMPLATE))] = entry["template"]
    legacy = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(legacy, str):
        templates[DEFAULT_TEMPLATE] = legacy
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():  # the newest layout wins, as in the files HF writes today
        templates[DEFAULT_TEMPLATE] = jinja_file.read_text(encoding="utf-8")
    for extra in sorted((path / "additional_chat_templates").glob("*.jinja")):
        templates[extra.stem] = extra.read_text(encoding="utf-8")
    return templates


class Tokenizer:
    """Text <-> token ids and special tokens for one model, plus the chat template sources its
    checkpoint ships (`heron.prompt.ChatRenderer` renders them).

    Build with `from_gguf_metadata` or `from_hf_dir`. Thread-safe for concurrent encode/decode
    (the underlying `tokenizers.Tokenizer` is immutable after construction).
    """

    def __init__(
        self,
        backend: HFTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        chat_templates: Mapping[str, str] | None = None,
        double_leading_space: bool = False,
    ) -> None:
        self._backend = backend
        self._double_leading_space = double_leading_space
        self._bos_token_id = bos_token_id
        self._eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        eos = {eos_token_id} if eos_token_id is not None else set()
        self._eos_token_ids = frozenset(eos | set(extra_eos_token_ids))
        self._chat_templates = dict(chat_templates or {})
        added = backend.get_added_tokens_decoder()
        self._all_special_ids = frozenset(i for i, t in added.items() if t.special)
        self._special_texts = tuple(sorted({t.content for t in added.values() if t.special}))
        self._plain: HFTokenizer | None = None  # built on first use by `_plain_backend`
        # Whether plain encoding starts with bos: decides if a rendered prompt must get it.
        plain = backend.encode("", add_special_tokens=True).ids
        self.add_bos_token = bos_token_id is not None and plain[:1] == [bos_token_id]

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> Tokenizer:
        """The tokenizer a checkpoint carries: its GGUF vocabulary, or an HF directory's
        tokenizer files."""
        if ckpt.gguf is not None:
            return cls.from_gguf_metadata(ckpt.gguf.metadata)
        return cls.from_hf_dir(ckpt.path)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF file's metadata (plain Python values keyed by GGUF key).

        Raises ValueError if the tokenizer metadata is missing, unsupported or malformed.
        """
        vocab = build_gguf_vocab(metadata)
        return cls(
            vocab.tokenizer,
            bos_token_id=vocab.bos_token_id,
            eos_token_id=vocab.eos_token_id,
            pad_token_id=vocab.pad_token_id,
            unk_token_id=vocab.unk_token_id,
            extra_eos_token_ids=vocab.eot_token_ids,
            chat_templates=vocab.chat_templates,
            double_leading_space=vocab.double_leading_space,
        )

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build from an HF model directory: tokenizer.json plus tokenizer_config.json, and
        chat_template.jinja / generation_config.json / config.json when present.

        The eos set is the tokenizer's eos, every `eos_token_id` in generation_config.json and
        config.json, and special tokens with a known end-of-turn text. Raises ValueError if there is no tokenizer.json.
        """
        root = Path(path)
        if not (root / "tokenizer.json").is_file():
            raise ValueError(f"{root} has no tokenizer.json")
        backend = HFTokenizer.from_file(str(root / "tokenizer.json"))
        # tokenizer.json may carry batch padding/truncation settings (BERT-style files pad to
        # a fixed 128); prompts are encoded one by one and fitted to the context by Heron.
        backend.no_padding()
        backend.no_truncation()
        config = _read_json(root / "tokenizer_config.json")
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, Mapping):
            known = backend.get_vocab(with_added_tokens=True)
            for spec in decoder.values():
                text = _token_text(spec)
                if text is None or text in known:
                    continue
                token = AddedToken(text, special=bool(spec.get("special", False)), normalized=False)
                if token.special:
                    backend.add_special_tokens([token])
                else:
                    backend.add_tokens([token])

        def lookup(name: str) -> int | None:
            text = _token_text(config.get(name))
            return backend.token_to_id(text) if text is not None else None

        eos_id = lookup("eos_token")
        extra: set[int] = set()
        for other in ("generation_config.json", "config.json"):
            extra.update(_int_ids(_read_json(root / other).get("eos_token_id")))
        vocab_size = backend.get_vocab_size(with_added_tokens=True)
        extra = {i for i in extra if 0 <= i < vocab_size}
        added = backend.get_added_tokens_decoder()
        extra |= {i for i, t in added.items() if t.special and t.content in EOT_LIKE_TOKENS}
        if eos_id is None and extra:
            eos_id = min(extra)
        return cls(
            backend,
            bos_token_id=lookup("bos_token"),
            eos_token_id=eos_id,
            pad_token_id=lookup("pad_token"),
            unk_token_id=lookup("unk_token"),
            extra_eos_token_ids=extra,
            chat_templates=_hf_chat_templates(root, config),
        )

    # Encoding and decoding.

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`. Special-token text inside `text` (e.g. "<|im_start|>") encodes
        as its single id; `add_special_tokens` only controls the bos/eos the model adds.
        Raises ValueError for text that is not valid Unicode (lone surrogates)."""
        if not isinstance(text, str):
            raise ValueError("text to encode must be a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates cannot be tokenized
            raise ValueError(f"text is not valid Unicode: {exc.reason}") from None
        if self._double_leading_space and text.startswith(" "):
            text = " " + text
        if len(text) > LONG_TEXT_CHARS:
            # The batch call releases the GIL while it works (the single-text one does not), so
            # a long prompt tokenized on a worker thread leaves the event loop free. Same ids.
            batch = self._backend.encode_batch([text], add_special_tokens=add_special_tokens)
            return list(batch[0].ids)
        return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_with_plain_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """Token ids for `text` (no bos/eos added) with special-token text parsed, except
        inside `spans` (character ranges of `text`, e.g. message content a chat template
        inserted): there, special-token text such as "<|im_end|>" encodes as plain text.

        Everything outside a forged token encodes exactly as `encode` would: the text is
        encoded once, and only special tokens that lie inside a span are replaced by the
        plain encoding of their text (consecutive ones together).
        Raises ValueError for text that is not valid Unicode.
        """
        ids = self.encode(text, add_special_tokens=False)
        if not spans or not self._all_special_ids.intersection(ids):
            return ids
        shift = 1 if self._double_leading_space and text.startswith(" ") else 0
        shifted = (" " + text) if shift else text
        offsets = self._backend.encode(shifted, add_special_tokens=False).offsets
        bounds = [(start + shift, end + shift) for start, end in spans]
        out: list[int] = []
        run: list[int] = []  # [start, end) of consecutive forged tokens in `shifted`

        def flush() -> None:
            if run:
                plain = self._plain_backend().encode(
                    shifted[run[0] : run[1]], add_special_tokens=False
                )
                out.extend(plain.ids)
                run.clear()

        for token_id, (start, end) in zip(ids, offsets, strict=True):
            forged = token_id in self._all_special_ids and any(
                lo <= start and end <= hi for lo, hi in bounds
            )
            if not forged:
                flush()
                out.append(token_id)
            elif run and run[1] == start:
                run[1] = end
            else:
                flush()
                run.extend((start, end))
        flush()
        return out

    def _plain_backend(self) -> HFTokenizer:
        """A copy of the backend that reads special-token text as plain text and adds no
        dummy prefix (its text sits in the middle of a prompt)."""
        if self._plain is None:
            spec = json.loads(self._backend.to_str())
            _never_prepend(spec.get("normalizer"))
            _never_prepend(spec.get("pre_tokenizer"))
            plain = HFTokenizer.from_str(json.dumps(spec))
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain

    @property
    def special_token_texts(self) -> tuple[str, ...]:
        """The text of every special (control) token, e.g. "<|im_start|>", "</s>"."""
        return self._special_texts

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text for `ids`; bytes that do not form whole UTF-8 characters decode as U+FFFD."""
        return str(self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary spelling of `token_id` (e.g. "Ġhello"), or None if out of range."""
        token = self._backend.id_to_token(token_id)
        return str(token) if token is not None else None

    def token_to_id(self, token: str) -> int | None:
        token_id = self._backend.token_to_id(token)
        return int(token_id) if token_id is not None else None

    @property
    def backend(self) -> HFTokenizer:
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Ids that end generation: eos plus end-of-turn ids (eot/eom metadata, known
        end-of-turn control tokens such as <|im_end|> or <|eot_id|>, generation_config)."""
        return self._eos_token_ids

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids that `decode(..., skip_special_tokens=True)` drops."""
        return self._all_special_ids

    def _text(self, token_id: int | None) -> str | None:
        return self.id_to_token(token_id) if token_id is not None else None

    @property
    def special_tokens(self) -> dict[str, str]:
        """Texts of the bos, eos, pad and unk tokens the model has, keyed as chat templates
        name them (`bos_token`, ...)."""
        ids = {
            "bos_token": self._bos_token_id,
            "eos_token": self._eos_token_id,
            "pad_token": self.pad_token_id,
            "unk_token": self.unk_token_id,
        }
        texts = {name: self._text(token_id) for name, token_id in ids.items()}
        return {name: text for name, text in texts.items() if text is not None}

    # The checkpoint's chat templates (sources only; heron.prompt renders them).

    @property
    def chat_template(self) -> str | None:
        """The default chat template source, or None if the model has none."""
        return self._chat_templates.get(DEFAULT_TEMPLATE)

    @property
    def chat_templates(self) -> dict[str, str]:
        """All templates by name ("default", and e.g. "tool_use")."""
        return dict(self._chat_templates)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self._bos_token_id}, "
            f"eos={sorted(self._eos_token_ids)}, chat_templates={sorted(self._chat_templates)})"
        )
