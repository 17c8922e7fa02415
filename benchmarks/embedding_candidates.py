"""Embedding for near-duplicate removal at a million texts: which model?

    python benchmarks/embedding_candidates.py [--n 20000] [--skip-dask] [--skip-onnx] [--agree-n 2000]

Candidates, all from the bundled all-MiniLM-L6-v2 (no download):
  minilm       sentence-transformers on torch, in this process (sftmill's default)
  minilm-dask  the same model on a Dask LocalCluster of 2 single-thread
               workers through prefect-dask (`embedding.runner: dask`)
  onnx-fp32    MiniLM exported to ONNX (torch.onnx), run by ONNX Runtime on
               2 threads, batches of 64 sorted by length
               (needs `pip install onnxruntime onnx`)
  onnx-int8    the same, dynamically quantised to int8
  static       `static:all-MiniLM-L6-v2`, a static token-embedding model
               distilled from MiniLM by sftmill (sftmill/embed/models.py,
               `static_model`: the model2vec recipe — each vocabulary token
               through MiniLM alone, PCA to 256 dimensions, SIF weights by
               vocabulary rank); a text is the mean of its tokens' vectors

For each: texts/s on `--n` prompt-like texts made from the example corpus
(model load and cluster start-up timed apart), and quality on the example
corpus: retrieval (each sentence taken out of its paragraph must find that
paragraph: hit@1 and hit@3 among all paragraphs) and near-duplicate
separation (a sentence against a lightly edited copy — a word dropped,
two words swapped, case and punctuation changed — versus against the other
sentences of its document: ROC AUC of the cosine, and the share of edited
copies above the highest cosine of 99 % of the non-duplicate pairs); and
agreement with sftmill's default vectors (the cosine of each text's vector
to MiniLM's on torch, over the first `--agree-n` texts: min, 1st percentile,
mean; the static model has other dimensions, so none).
Prints one JSON line per candidate.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "data" / "example" / "corpus"


def corpus_paragraphs() -> list[tuple[str, list[str]]]:
    """(document, sentences) for every paragraph of the example corpus."""
    out = []
    for path in sorted(CORPUS.glob("*")):
        for para in re.split(r"\n\s*\n", path.read_text()):
            para = re.sub(r"^#+ .*$", "", para, flags=re.M).strip()
            sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", para) if len(s.split()) >= 5]
            if sentences:
                out.append((path.stem, sentences))
    return out


def edited(sentence: str, rng: np.random.Generator) -> str:
    words = sentence.rstrip(".!?").split()
    del words[int(rng.integers(1, len(words)))]
    k = int(rng.integers(0, len(words) - 1))
    words[k], words[k + 1] = words[k + 1], words[k]
    return " ".join(words).lower() + "?"


def prompt_texts(n: int, paragraphs, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    sentences = [s for _, ss in paragraphs for s in ss]
    openers = ["Explain why", "Describe how", "In your own words, say whether", "Why is it that",
               "Give an example showing that", "What follows from the fact that"]
    return [f"{openers[i % len(openers)]} {sentences[int(rng.integers(len(sentences)))].rstrip('.').lower()} "
            f"(case {i})" for i in range(n)]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    ranks = scores.argsort().argsort() + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def quality(embed, paragraphs) -> dict:
    rng = np.random.default_rng(1)
    queries, rest, target = [], [], []
    for p, (_, sentences) in enumerate(paragraphs):
        if len(sentences) >= 2:
            k = int(rng.integers(len(sentences)))
            queries.append(sentences[k])
            target.append(p)
        rest.append(" ".join(s for i, s in enumerate(sentences) if len(sentences) < 2 or i != k))
    sims = embed(queries) @ embed(rest).T
    order = (-sims).argsort(1)
    hit1 = float(np.mean(order[:, 0] == np.array(target)))
    hit3 = float(np.mean([t in row[:3] for t, row in zip(target, order)]))
    sentences = [(doc, s) for doc, ss in paragraphs for s in ss]
    texts = [s for _, s in sentences]
    vectors, copies = embed(texts), embed([edited(s, rng) for s in texts])
    pos = (vectors * copies).sum(1)
    same_doc = np.array([[a == b for b, _ in sentences] for a, _ in sentences])
    np.fill_diagonal(same_doc, False)
    neg = (vectors @ vectors.T)[same_doc]
    cut = float(np.quantile(neg, 0.99))
    return {"retrieval_hit1": round(hit1, 3), "retrieval_hit3": round(hit3, 3), "queries": len(queries),
            "dup_auc": round(auc(pos, neg), 4), "dup_recall_at_1pct_false": round(float(np.mean(pos > cut)), 3),
            "dup_pairs": len(pos)}


def onnx_embed(workdir: Path, int8: bool):
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from sentence_transformers import SentenceTransformer

    from sftmill.embed.models import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    tok, hf = model.tokenizer, model[0].auto_model
    fp32, quantised = workdir / "minilm.onnx", workdir / "minilm-int8.onnx"
    sample = tok(["a short example sentence"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    class Encoder(torch.nn.Module):  # positional inputs, the last hidden state out
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.hf(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state

    torch.onnx.export(Encoder().eval(), tuple(sample[n] for n in names), str(fp32), input_names=names,
                      output_names=["hidden"], dynamo=False, opset_version=17,
                      dynamic_axes={n: {0: "b", 1: "t"} for n in names + ["hidden"]})
    if int8:
        quantize_dynamic(str(fp32), str(quantised), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(quantised if int8 else fp32), options,
                                   providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(texts), 64):
            batch = tok([texts[i] for i in order[s:s + 64]], padding=True, truncation=True,
                        max_length=256, return_tensors="np")
            hidden = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]
            mask = batch["attention_mask"][..., None]
            out.append((hidden * mask).sum(1) / mask.sum(1))
        vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(out)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return embed


def measure(name: str, make, texts, paragraphs, reference: np.ndarray | None = None) -> dict:
    started = time.perf_counter()
    embed = make()
    embed(texts[:64])  # load and warm up
    ready = time.perf_counter() - started
    started = time.perf_counter()
    vectors = embed(texts)
    seconds = time.perf_counter() - started
    agreement = {}
    if reference is not None and vectors.shape[1] == reference.shape[1]:
        cos = (vectors[:len(reference)] * reference).sum(1)
        agreement = {"agreement_min": round(float(cos.min()), 4),
                     "agreement_p1": round(float(np.percentile(cos, 1)), 4),
                     "agreement_mean": round(float(cos.mean()), 4)}
    return {"candidate": name, "n": len(texts), "start_s": round(ready, 1), "seconds": round(seconds, 1),
            "texts_per_s": round(len(texts) / seconds, 1), **agreement, **quality(embed, paragraphs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--static-n", type=int, default=200_000, help="texts for the static model")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--agree-n", type=int, default=2000,
                        help="texts whose vectors are compared with MiniLM's on torch")
    args = parser.parse_args()
    import tempfile

    from sftmill.core.endpoints import Embedding
    from sftmill.embed.embedder import Embedder
    from sftmill.embed.models import encode

    paragraphs = corpus_paragraphs()
    texts = prompt_texts(args.n, paragraphs)
    reference = encode(Embedding(), texts[:args.agree_n])  # sftmill's default vectors
    if not args.skip_minilm:
        print(json.dumps(measure("minilm", lambda: lambda t: encode(Embedding(), t), texts, paragraphs,
                                 reference)), flush=True)
    if not args.skip_dask:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            config = Embedding(runner="dask", dask_workers=2)
            print(json.dumps(measure("minilm-dask", lambda: lambda t: Embedder(config).embed(t),
                                     texts, paragraphs, reference)), flush=True)
    for name, int8 in (("onnx-fp32", False), ("onnx-int8", True)):
        if args.skip_onnx:
            break
        try:
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps(measure(name, lambda tmp=tmp, int8=int8: onnx_embed(Path(tmp), int8),
                                         texts, paragraphs, reference)), flush=True)
        except Exception as exc:  # noqa: BLE001 — a missing package or an export that fails
            print(json.dumps({"candidate": name, "skipped": f"{type(exc).__name__}: {exc}"}), flush=True)
    print(json.dumps(measure("static", lambda: lambda t: encode(Embedding(model="static:all-MiniLM-L6-v2"), t),
                             prompt_texts(args.static_n, paragraphs), paragraphs)), flush=True)


if __name__ == "__main__":
    main()
