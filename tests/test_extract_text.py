"""Text extractors: decoding, doc2vec (deterministic, saved without pickle), minilm (= sentence-transformers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _extract_media import TOPICS

from extractors import create_extractor
from extractors.errors import ExtractorError, MediaError
from extractors.text import Doc2VecConfig, load_doc2vec, read_text, save_doc2vec

CORPUS = [s for sentences in TOPICS.values() for s in sentences] * 2
TINY = dict(vector_size=16, min_count=1, epochs=10, sample=0.0)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_text_in_utf8_or_with_a_byte_order_mark_decodes_to_the_same_string(tmp_path, encoding):
    text = "Ünïcode café — naïve 猫\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    assert read_text(path) == text


@pytest.mark.parametrize("content, reason", [
    (b"caf\xe9 latin-1 bytes", r"not utf-8 text \(byte 0xe9 at offset 3\)"),
    (b"", "empty text"),
    (b" \n\t\n", "only whitespace"),
])
def test_undecodable_or_empty_text_raises_media_error_with_its_reason(tmp_path, content, reason):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(MediaError, match=reason):
        read_text(path)


def test_doc2vec_defaults_to_300_dimensional_pv_dbow():
    config = Doc2VecConfig()
    assert (config.vector_size, config.mode) == (300, "pv-dbow")
    assert create_extractor("doc2vec").dim == 300


@pytest.mark.parametrize("mode", ["pv-dbow", "pv-dm"])
def test_doc2vec_fits_the_same_model_twice_and_infers_the_same_vectors_in_any_batch_order(mode):
    a, b = create_extractor("doc2vec", mode=mode, **TINY), create_extractor("doc2vec", mode=mode, **TINY)
    a.fit(CORPUS)
    b.fit(CORPUS)
    docs = CORPUS[:8]
    X = a(docs)
    assert X.shape == (8, 16)
    np.testing.assert_array_equal(X, b(docs))
    np.testing.assert_array_equal(X, a(docs[::-1])[::-1])


def test_a_saved_doc2vec_model_rebuilds_without_pickle_and_infers_identical_vectors(tmp_path):
    ext = create_extractor("doc2vec", **TINY)
    model = ext.fit(CORPUS)
    folder = save_doc2vec(model, tmp_path / "d2v")
    assert sorted(p.name for p in folder.iterdir()) == ["doc2vec.json", "syn1neg.npy", "word_vectors.npy"]
    rebuilt = load_doc2vec(folder)
    assert rebuilt.wv.index_to_key == model.wv.index_to_key
    np.testing.assert_array_equal(rebuilt.cum_table, model.cum_table)
    loaded = create_extractor("doc2vec", model_path=str(folder), **TINY)
    docs = CORPUS[:5]
    np.testing.assert_array_equal(loaded(docs), ext(docs))


def test_doc2vec_prepare_fits_once_per_corpus_and_reuses_the_saved_model(tmp_path, monkeypatch):
    paths = []
    for i, text in enumerate(CORPUS[:8]):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(text)
    corpus = [(f"hash{i}", p) for i, p in enumerate(paths)]
    first = create_extractor("doc2vec", **TINY)
    first.prepare(corpus, cache_dir=tmp_path / "fitted")
    second = create_extractor("doc2vec", **TINY)
    monkeypatch.setattr(type(second), "fit", lambda self, texts: pytest.fail("refitted an already fitted corpus"))
    second.prepare(corpus[::-1], cache_dir=tmp_path / "fitted")
    assert second.key == first.key
    assert second.config.model_path == first.config.model_path
    assert create_extractor("doc2vec", model_path=first.config.model_path, **TINY).key == first.key


def test_doc2vec_without_a_model_says_how_to_get_one():
    with pytest.raises(ExtractorError, match="doc2vec has no model") as err:
        create_extractor("doc2vec").key  # noqa: B018
    assert "model_path" in err.value.hint


def test_doc2vec_refuses_a_text_with_no_word_of_its_vocabulary():
    ext = create_extractor("doc2vec", **TINY)
    ext.fit(CORPUS)
    with pytest.raises(MediaError, match="no word of the text is in the doc2vec vocabulary"):
        ext(["zyzzyva quux"])


@pytest.fixture(scope="module")
def minilm():
    return create_extractor("minilm")


def test_minilm_gives_384_dimensional_unit_vectors_where_paraphrases_are_closest(minilm):
    X = minilm(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."])
    assert X.shape == (3, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    sims = X @ X.T
    assert sims[0, 1] > 0.5 > 0.2 > max(sims[0, 2], sims[1, 2])


def test_minilm_equals_sentence_transformers_on_the_same_local_model(minilm):
    st = pytest.importorskip("sentence_transformers")
    texts = ["The horse grazes in the field.", "Banks raised interest rates. " * 60]  # the second is truncated
    expected = st.SentenceTransformer(str(minilm.model_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(minilm(texts), expected, atol=1e-5)


def test_doc2vec_vectors_are_the_same_in_processes_with_different_hash_seeds():
    import os
    import subprocess
    import sys

    script = (
        "from extractors import create_extractor\n"
        "e = create_extractor('doc2vec', vector_size=8, min_count=1, epochs=3)\n"
        "texts = ['the cat sat on the mat', 'a dog ran in the park', 'cats and dogs are pets'] * 2\n"
        "e.fit(texts)\n"
        "print(e(texts[:2]).tolist())\n"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


# ---------------------------------------------------------------------------------------------- bounded texts

LONG = " ".join(f"word{i % 97} of the sentence number {i}." for i in range(3000))  # about 21,000 tokens


@pytest.mark.parametrize("name", ["doc2vec", "minilm"])
def test_a_text_file_larger_than_max_bytes_is_refused_naming_the_file_and_the_limit(tmp_path, name):
    path = tmp_path / "big.txt"
    path.write_text("word " * 300)
    extractor = create_extractor(name, max_bytes=1000, **({"model_path": str(tmp_path)} if name == "doc2vec" else {}))
    with pytest.raises(MediaError, match=r"larger than the limit max_bytes=1000 \(1500 bytes\)") as info:
        extractor.load(path)
    assert str(path) in str(info.value) and "--set max_bytes" in info.value.hint


def test_a_file_without_a_size_is_read_no_further_than_max_bytes():
    zero = Path("/dev/zero")  # endless, and its size says 0
    if not zero.exists():
        pytest.skip("no /dev/zero here")
    with pytest.raises(MediaError, match=r"max_bytes=1000 \(1001 bytes or more\)"):
        read_text(zero, max_bytes=1000)


def test_minilm_tokenises_only_a_prefix_of_a_long_text_and_its_window_is_that_of_the_whole_text(minilm):
    prefix = minilm.windowed_prefix(LONG)
    assert 256 < len(prefix) < len(LONG) / 20 and LONG.startswith(prefix) and LONG[len(prefix)] == " "
    tokenizer = minilm._tokenizer
    whole = tokenizer(LONG, truncation=True, max_length=256, verbose=False)["input_ids"]
    assert tokenizer(prefix, truncation=True, max_length=256)["input_ids"] == whole and len(whole) == 256
    np.testing.assert_array_equal(minilm([LONG]), minilm([prefix]))


def test_minilm_with_max_chunks_averages_the_vectors_of_the_first_windows(minilm):
    import torch

    two = create_extractor("minilm", max_chunks=2)
    tokenizer, model = minilm._tokenizer, minilm._model
    ids = tokenizer(LONG, add_special_tokens=False, verbose=False)["input_ids"]
    windows = [[tokenizer.cls_token_id, *ids[k * 254:(k + 1) * 254], tokenizer.sep_token_id] for k in (0, 1)]
    with torch.inference_mode():
        pooled = model(input_ids=torch.tensor(windows)).last_hidden_state.mean(1)  # full windows: no padding
    expected = torch.nn.functional.normalize(pooled.mean(0, keepdim=True), dim=1).numpy()
    np.testing.assert_allclose(two([LONG]), expected, atol=1e-5)
    assert two.key != minilm.key and create_extractor("minilm", max_chunks=1).key == minilm.key


def test_the_byte_limit_only_refuses_files_so_it_leaves_the_key_unchanged(minilm, tmp_path):
    assert create_extractor("minilm", max_bytes=10).key == minilm.key
    save_doc2vec(create_extractor("doc2vec", **TINY).fit(CORPUS), tmp_path / "model")
    keys = {create_extractor("doc2vec", **TINY, model_path=str(tmp_path / "model"), max_bytes=b).key for b in (10, 99)}
    assert len(keys) == 1


def test_minilm_reads_a_bounded_prefix_of_a_text_without_whitespace_and_sees_the_same_unknown_word(minilm):
    word = "a" * 200_000  # one word: BERT reads a word of over 100 letters as one [UNK], whatever its length
    prefix = minilm.windowed_prefix(word)
    assert len(prefix) <= 64 * 254 + 1000
    tokenizer = minilm._tokenizer
    assert tokenizer(prefix)["input_ids"] == tokenizer(word, verbose=False)["input_ids"] == [
        tokenizer.cls_token_id, tokenizer.unk_token_id, tokenizer.sep_token_id]
