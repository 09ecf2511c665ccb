"""Causal-LM compilation (pipeline.backends.inductor.decoder): real AOTInductor compiles of tiny random models.

Compiles are shared per module (one per architecture/dtype); each costs ~10-40 s on 2 cores.
The eager reference is transformers' own model.generate()."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pipeline import generation as G  # noqa: E402
from pipeline import verify  # noqa: E402
from pipeline.backends.inductor import decoder as D  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH = 2
SEQ = 48
PROMPT = 8
NEW = 32
VOCAB = 256


def _tiny_model(arch: str):
    """Tiny random causal LMs; no bos/eos so eager greedy never stops early."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            **common,
        )
        model = transformers.LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **common)
        model = transformers.GPT2LMHeadModel(config)
    elif arch == "qwen2":
        config = transformers.Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            **common,
        )
        model = transformers.Qwen2ForCausalLM(config)
    else:  # pragma: no cover
        raise KeyError(arch)
    return model.eval()


def _eager_generate(model, prompt, **kwargs):
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)


# Artifacts compiled by two background worker processes (what the pipeline's workers do:
# load the saved model, export, compile), so compiles overlap and the test process stays
# free of inductor's compile pools. The eager references use the very models saved.
ARTIFACTS = [[("llama", "fp32"), ("qwen2", "fp32")], [("gpt2", "fp32"), ("llama", "bf16")]]

COMPILE_SCRIPT = textwrap.dedent(
    """
    import json, sys, traceback
    from pathlib import Path
    from transformers import AutoModelForCausalLM
    from pipeline.backends.inductor.decoder import export_decoder
    for spec in json.loads(sys.argv[1]):
        out = Path(spec["out"])
        try:
            model = AutoModelForCausalLM.from_pretrained(spec["model_dir"])
            export_decoder(model, spec["batch_size"], spec["sequence_length"], spec["dtype"], out)
        except BaseException:
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(traceback.format_exc())
    """
)


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """compiled(arch, dtype) -> (eager fp32 model, artifact folder, meta)."""
    root = tmp_path_factory.mktemp("decoders")
    models = {}
    for arch in {arch for group in ARTIFACTS for arch, _ in group}:
        models[arch] = _tiny_model(arch)
        models[arch].save_pretrained(root / f"model-{arch}")
    procs = []
    for group in ARTIFACTS:
        specs = [
            {
                "model_dir": str(root / f"model-{arch}"),
                "out": str(root / f"{arch}-{dtype}"),
                "batch_size": BATCH,
                "sequence_length": SEQ,
                "dtype": dtype,
            }
            for arch, dtype in group
        ]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", COMPILE_SCRIPT, json.dumps(specs)],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    owner = {key: procs[i] for i, group in enumerate(ARTIFACTS) for key in group}

    def get(arch: str, dtype: str = "fp32"):
        folder = root / f"{arch}-{dtype}"
        proc = owner[arch, dtype]
        deadline = time.monotonic() + 900
        while not (folder / D.META_FILE).is_file() and not (folder / "error.txt").is_file():
            if proc.poll() is not None and not (folder / D.META_FILE).is_file():
                pytest.fail(f"compile worker for {arch}/{dtype} exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"compile of {arch}/{dtype} timed out")
            time.sleep(0.2)
        if (folder / "error.txt").is_file():
            pytest.fail(f"export_decoder({arch}, {dtype}) failed:\n{(folder / 'error.txt').read_text()}")
        return models[arch], folder, json.loads((folder / D.META_FILE).read_text())

    yield get
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (BATCH, PROMPT), generator=g), torch.randint(0, VOCAB, (BATCH, 5), generator=g)


@pytest.fixture(scope="module")
def llama(compiled):
    model, folder, meta = compiled("llama")
    return model, folder, meta, D.load_decoder(folder)


FRESH_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pipeline.backends.inductor.decoder import load_decoder
    from pipeline.generation import generate
    job = json.loads(open(sys.argv[1]).read())
    out = {}
    for arch, folder in job["folders"].items():
        runner = load_decoder(folder)
        rows = []
        # two different prompts in a row on the same runner: the second must not see the first
        for prompt, new in job["requests"]:
            ids = generate(runner, torch.tensor(prompt), max_new_tokens=new)
            rows.append(ids.tolist())
        out[arch] = rows
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def fresh_process_ids(compiled, prompts, tmp_path_factory):
    """Greedy ids from the artifacts loaded in a fresh Python process (no compile state)."""
    folders = {arch: str(compiled(arch)[1]) for arch in ("llama", "gpt2", "qwen2")}
    work = tmp_path_factory.mktemp("fresh")
    job = work / "job.json"
    job.write_text(
        json.dumps({"folders": folders, "requests": [[prompts[0].tolist(), NEW], [prompts[1].tolist(), 20]]})
    )
    script = work / "run.py"
    script.write_text(FRESH_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(job)], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- correctness vs eager


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_fp32_greedy_matches_eager_in_fresh_process(arch, compiled, prompts, fresh_process_ids):
    model, _, meta = compiled(arch)
    assert meta["batch_size"] == BATCH and meta["sequence_length"] == SEQ and meta["vocab_size"] == VOCAB
    first, second = fresh_process_ids[arch]
    ref_first = _eager_generate(model, prompts[0], max_new_tokens=NEW)
    ref_second = _eager_generate(model, prompts[1], max_new_tokens=20)
    assert ref_first.shape == (BATCH, PROMPT + NEW)
    metrics = verify.greedy_agreement(ref_first, torch.tensor(first), prompt_length=PROMPT)
    assert metrics["exact"], metrics
    assert metrics["agreement_length"] == NEW
    # the second prompt (shorter, after a longer generation) is unaffected by stale cache slots
    assert torch.equal(torch.tensor(second), ref_second)


def test_prompts_in_a_row_same_as_fresh(llama, prompts):
    model, _, _, runner = llama
    long_prompt = torch.randint(0, VOCAB, (BATCH, 12), generator=torch.Generator().manual_seed(7))
    short = prompts[1]
    ref_long = _eager_generate(model, long_prompt, max_new_tokens=SEQ - 12)  # fills the whole cache
    ref_short = _eager_generate(model, short, max_new_tokens=6)
    assert torch.equal(G.generate(runner, long_prompt, max_new_tokens=SEQ - 12), ref_long)
    assert torch.equal(G.generate(runner, short, max_new_tokens=6), ref_short)
    assert torch.equal(G.generate(runner, long_prompt, max_new_tokens=SEQ - 12), ref_long)
    # a one-token prompt works too; it is a strided view: the runner must make it contiguous
    one = short[:, :1]
    assert not one.is_contiguous()
    assert torch.equal(G.generate(runner, one, max_new_tokens=10), _eager_generate(model, one, max_new_tokens=10))


def test_artifact_folder_and_meta(llama):
    _, folder, meta, runner = llama
    assert (folder / D.ARTIFACT_FILE).is_file()
    assert (folder / D.GENERATION_CONFIG_FILE).is_file()
    assert json.loads((folder / D.META_FILE).read_text()) == meta
    assert meta["format"] == D.FORMAT and meta["dtype"] == "fp32" and meta["architecture"] == "LlamaForCausalLM"
    assert meta["input_names"] == ["input_ids", "cache_position"] and meta["output_names"] == ["logits"]
    assert meta["inductor_configs"] == D.DEFAULT_INDUCTOR_CONFIGS
    logits = runner(torch.zeros(BATCH, 3, dtype=torch.long), torch.arange(3))
    assert logits.shape == (BATCH, 3, VOCAB)
    with pytest.raises(G.StaticShapeError, match="batch_size=2"):
        runner(torch.zeros(3, 1, dtype=torch.long), torch.arange(1))
    with pytest.raises(G.StaticShapeError, match="outside the compiled cache"):
        runner(torch.zeros(BATCH, 1, dtype=torch.long), torch.tensor([SEQ]))
    with pytest.raises(FileNotFoundError, match="decoder.json"):
        D.load_decoder(folder.parent)


def test_bf16_agreement(compiled, prompts, record_property):
    model, folder, meta = compiled("llama", "bf16")
    assert meta["dtype"] == "bf16"
    runner = D.load_decoder(folder)
    got = G.generate(runner, prompts[0], max_new_tokens=NEW)
    vs_fp32 = verify.greedy_agreement(_eager_generate(model, prompts[0], max_new_tokens=NEW), got, PROMPT)
    eager_bf16 = _tiny_model("llama").to(torch.bfloat16)
    vs_bf16 = verify.greedy_agreement(_eager_generate(eager_bf16, prompts[0], max_new_tokens=NEW), got, PROMPT)
    record_property("bf16_vs_eager_fp32", vs_fp32)
    record_property("bf16_vs_eager_bf16", vs_bf16)
    print("\nbf16 compiled vs eager fp32:", vs_fp32, "\nbf16 compiled vs eager bf16:", vs_bf16)
    assert got.shape == (BATCH, PROMPT + NEW)
    # prefill logits stay close to the fp32 reference
    with torch.no_grad():
        ref_logits = model(prompts[0]).logits
    got_logits = runner(prompts[0], torch.arange(PROMPT)).float()
    assert (got_logits - ref_logits).abs().max() < 0.05 * max(1.0, ref_logits.abs().max().item())


# --------------------------------------------------------------------------- generate() semantics


def test_call_kwargs_take_precedence_over_generation_config_json(llama, prompts, tmp_path):
    model, folder, _, _ = llama
    custom = tmp_path / "custom"
    shutil.copytree(folder, custom)
    transformers.GenerationConfig(max_new_tokens=5, do_sample=True, temperature=3.0, top_k=0).save_pretrained(custom)
    runner = D.load_decoder(custom)
    greedy = _eager_generate(model, prompts[0], max_new_tokens=9)

    out = G.generate(runner, prompts[0], generator=torch.Generator().manual_seed(0))
    assert out.shape == (BATCH, PROMPT + 5)  # folder default
    assert G.generate(runner, prompts[0], max_new_tokens=7, do_sample=False).shape == (BATCH, PROMPT + 7)
    assert torch.equal(G.generate(runner, prompts[0], max_new_tokens=9, do_sample=False), greedy)
    # a call's max_length beats the folder's max_new_tokens
    assert G.generate(runner, prompts[0], max_length=PROMPT + 3, do_sample=False).shape == (BATCH, PROMPT + 3)
    # kwargs > generation_config argument > folder
    arg = transformers.GenerationConfig(max_new_tokens=6, do_sample=False)
    assert torch.equal(G.generate(runner, prompts[0], generation_config=arg), greedy[:, : PROMPT + 6])
    assert G.generate(runner, prompts[0], generation_config=arg, max_new_tokens=9).shape == (BATCH, PROMPT + 9)

    # a default length larger than the compiled cache is clamped; the same length asked by the call is an error
    transformers.GenerationConfig(max_length=1000).save_pretrained(custom)
    runner = D.load_decoder(custom)
    assert G.generate(runner, prompts[0]).shape == (BATCH, SEQ)
    with pytest.raises(G.StaticShapeError, match="max_length=1000"):
        G.generate(runner, prompts[0], max_length=1000)
    # no length anywhere: transformers' 20 new tokens
    (custom / D.GENERATION_CONFIG_FILE).unlink()
    assert D.load_decoder(custom).generation_config is None
    assert G.generate(D.load_decoder(custom), prompts[0]).shape == (BATCH, PROMPT + 20)


def test_eos_stops_one_row_while_the_other_continues(llama, prompts):
    model, _, _, runner = llama
    prompt = prompts[0]
    greedy = _eager_generate(model, prompt, max_new_tokens=NEW)[:, PROMPT:]
    # an eos token that row `stop` produces early and the other row never produces
    choice = None
    for stop in (0, 1):
        other = greedy[1 - stop].tolist()
        for pos, tok in enumerate(greedy[stop].tolist()):
            if tok not in other and pos < NEW - 4:
                choice = (stop, pos, tok)
                break
        if choice:
            break
    assert choice, f"no usable eos token in {greedy.tolist()}"
    stop, pos, eos = choice
    pad = (eos + 1) % VOCAB
    got = G.generate(runner, prompt, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad)
    ref = _eager_generate(model, prompt, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad)
    assert torch.equal(got, ref)
    new = got[:, PROMPT:]
    assert new.shape[1] == NEW  # the other row ran to the end
    assert new[stop, pos].item() == eos
    assert (new[stop, pos + 1 :] == pad).all()
    assert torch.equal(new[1 - stop], greedy[1 - stop])
    # eos as a list, and min_new_tokens holding eos back
    got = G.generate(
        runner, prompt, max_new_tokens=NEW, eos_token_id=[VOCAB - 1, eos], pad_token_id=pad, min_new_tokens=pos + 2
    )
    ref = _eager_generate(
        model, prompt, max_new_tokens=NEW, eos_token_id=[VOCAB - 1, eos], pad_token_id=pad, min_new_tokens=pos + 2
    )
    assert torch.equal(got, ref)
    # every row finished: generation ends early, like transformers
    both = G.generate(runner, prompt, max_new_tokens=NEW, eos_token_id=greedy[:, 0].tolist(), pad_token_id=pad)
    assert both.shape == (BATCH, PROMPT + 1)


def test_sampling_reproducible_and_like_transformers(llama, prompts):
    model, _, _, runner = llama
    prompt = prompts[0]
    opts = dict(do_sample=True, temperature=5.0, top_k=0, max_new_tokens=24)
    a = G.generate(runner, prompt, generator=torch.Generator().manual_seed(0), **opts)
    b = G.generate(runner, prompt, generator=torch.Generator().manual_seed(0), **opts)
    c = G.generate(runner, prompt, generator=torch.Generator().manual_seed(1), **opts)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    greedy = G.generate(runner, prompt, max_new_tokens=24)
    assert not torch.equal(a, greedy)
    torch.manual_seed(42)
    d = G.generate(runner, prompt, **opts)
    torch.manual_seed(42)
    assert torch.equal(d, G.generate(runner, prompt, **opts))
    # same draws as transformers for the same seed (same warpers, same torch.multinomial)
    opts = dict(do_sample=True, temperature=1.5, top_k=20, top_p=0.9, max_new_tokens=24)
    torch.manual_seed(3)
    ref = _eager_generate(model, prompt, **opts)
    torch.manual_seed(3)
    assert torch.equal(G.generate(runner, prompt, **opts), ref)


def test_min_length_and_min_new_tokens_together_as_transformers_has_them(llama, prompts):
    """transformers applies both floors (MinLength and MinNewTokensLength processors): the larger
    one wins, whichever it is. With eos = each row's first greedy token, both floors bind."""
    model, _, _, runner = llama
    prompt = prompts[0]
    eos = _eager_generate(model, prompt, max_new_tokens=1)[:, PROMPT].tolist()
    pad = (max(eos) + 1) % VOCAB
    for floors in ({"min_length": PROMPT + 6, "min_new_tokens": 3}, {"min_length": PROMPT + 2, "min_new_tokens": 5},
                   {"min_new_tokens": 4}, {"min_length": PROMPT + 4}):
        kwargs = dict(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad, **floors)
        got = G.generate(runner, prompt, **kwargs)
        assert torch.equal(got, _eager_generate(model, prompt, **kwargs)), floors
        floor = max(floors.get("min_length", 0) - PROMPT, floors.get("min_new_tokens", 0))
        assert not any(t in eos for t in got[:, PROMPT : PROMPT + floor].flatten().tolist()), floors


def test_errors_before_any_work(llama, prompts, monkeypatch):
    _, _, _, runner = llama
    calls = []
    monkeypatch.setattr(runner, "forward", lambda *a, **k: calls.append(a))

    with pytest.raises(G.StaticShapeError, match=r"input batch size 3 != compiled batch_size 2"):
        G.generate(runner, torch.zeros(3, 4, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(G.StaticShapeError) as info:
        G.generate(runner, prompts[0], max_new_tokens=SEQ)
    message = str(info.value)
    assert f"prompt length {PROMPT}" in message and f"sequence_length {SEQ}" in message
    assert f"max_new_tokens={SEQ - PROMPT}" in message and f"sequence_length >= {PROMPT + SEQ}" in message
    with pytest.raises(G.StaticShapeError, match="no room"):
        G.generate(runner, torch.zeros(BATCH, SEQ, dtype=torch.long), max_new_tokens=1)
    with pytest.raises(G.UnsupportedGenerationOption, match=r"num_beams=4.*supported options: .*max_new_tokens"):
        G.generate(runner, prompts[0], num_beams=4, max_new_tokens=2)
    with pytest.raises(G.UnsupportedGenerationOption, match="repetition_penalty=1.3"):
        G.generate(runner, prompts[0], repetition_penalty=1.3, max_new_tokens=2)
    with pytest.raises(G.UnsupportedGenerationOption, match="streamer"):
        G.generate(runner, prompts[0], streamer=object(), max_new_tokens=2)
    mask = torch.ones_like(prompts[0])
    mask[0, :2] = 0
    with pytest.raises(G.PaddingNotSupported, match="equal-length prompts"):
        G.generate(runner, prompts[0], attention_mask=mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        G.generate(runner, prompts[0], do_sample=True, temperature=0.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="token ids in"):
        G.generate(runner, torch.full((BATCH, 3), VOCAB), max_new_tokens=2)
    assert calls == []
    # an all-ones mask is fine
    monkeypatch.undo()
    assert G.generate(runner, prompts[0], attention_mask=mask.fill_(1), max_new_tokens=2).shape == (BATCH, PROMPT + 2)


# --------------------------------------------------------------------------- what cannot be exported


def test_unexportable_decoders_fail_clearly(tmp_path):
    t5 = transformers.T5ForConditionalGeneration(
        transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    )
    with pytest.raises(D.DecoderExportError, match="encoder-decoder"):
        D.export_decoder(t5, 1, 16, "fp32", tmp_path / "t5")

    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    with pytest.raises(D.DecoderExportError, match="cannot generate"):
        D.export_decoder(bert, 1, 16, "fp32", tmp_path / "bert")

    llama = _tiny_model("llama")
    llama.config.use_cache = False
    with pytest.raises(D.DecoderExportError, match="use_cache=False"):
        D.export_decoder(llama, 1, 16, "fp32", tmp_path / "nocache")
    with pytest.raises(D.DecoderExportError, match="max_position_embeddings=64"):
        D.export_decoder(_tiny_model("llama"), 1, 128, "fp32", tmp_path / "long")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        D.export_decoder(_tiny_model("llama"), 1, 16, "int8", tmp_path / "int8")

    mistral = transformers.MistralForCausalLM(
        transformers.MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            sliding_window=16,
        )
    )
    with pytest.raises(D.DecoderExportError, match=r"sliding_window=16.*sequence_length <= 16"):
        D.export_decoder(mistral, 1, 32, "fp32", tmp_path / "mistral")

    # Falcon: torch.export (strict) itself fails
    falcon = transformers.FalconForCausalLM(
        transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(
        D.DecoderExportError, match=r"torch.export of FalconForCausalLM \(falcon\) with a static cache failed"
    ):
        D.export_decoder(falcon, 1, 16, "fp32", tmp_path / "falcon")
    # OPT: exports, but the graph specialized on the example and cannot decode one token
    opt = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
    )
    with pytest.raises(
        D.DecoderExportError, match="OPTForCausalLM: the exported graph cannot run a one-token decode step"
    ):
        D.export_decoder(opt, 1, 16, "fp32", tmp_path / "opt")
    assert not (tmp_path / "opt" / D.ARTIFACT_FILE).exists()
    assert opt.generation_config.cache_implementation is None  # the caller's model is left as it was


# --------------------------------------------------------------------------- metrics


def test_greedy_agreement_metrics():
    ref = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    got = torch.tensor([[1, 2, 3, 9, 5], [1, 2, 3, 4, 5]])
    m = verify.greedy_agreement(ref, got, prompt_length=1)
    assert m["agreement_length"] == 2 and m["agreement_length_per_row"] == [2, 4]
    assert m["compared_tokens"] == 4 and m["agreement_rate"] == pytest.approx(0.75)
    assert m["token_match_rate"] == pytest.approx(7 / 8) and m["exact"] is False
    assert verify.greedy_agreement(ref, ref)["exact"] is True
    short = verify.greedy_agreement(ref, ref[:, :3])  # an early eos: compared up to the shorter
    assert short["agreement_length"] == 3 and short["exact"] is False
