"""Reference outputs, metrics and the gate.

The reference is the original model on CPU in fp32, eager, on the same inputs; it is stored
per (model revision, task, shapes, seed) and reused across cast types and backends.
Metrics cover non-pad positions only: pad positions carry the largest, meaningless errors.

    python -m pipeline.verify ARTIFACT_DIR INPUTS.safetensors OUTPUTS.safetensors [GENERATE_TOKENS]
runs a compiled artifact in a fresh process: proof that it loads without the model's code.
`python -m pipeline.verify --standby ARTIFACT_DIR` imports torch first and then reads those three
arguments as a JSON list from stdin, so a worker can start it before its compile ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pipeline import keys
from pipeline.backends import get_backend
from pipeline.backends.base import DecoderRuntime
from pipeline.generation import generate
from pipeline.lifeline import watch_parent

REF_VERSION = "ref-2"


def reference_path(cache_root: Path, spec: dict, seed: int, extra: Any = None) -> Path:
    """Where the reference of (model revision, task, shapes, seed) is stored. The versions of
    the eager code that computed it (torch, transformers) are part of its name: after an
    upgrade, the new eager outputs are the truth, not the old ones."""
    eager = {name: keys.package_version(name) for name in ("torch", "transformers")}
    ident = json.dumps([REF_VERSION, spec["model"], spec["task"], spec["shapes"], seed, extra, eager], sort_keys=True)
    return Path(cache_root) / ".refs" / (hashlib.sha256(ident.encode()).hexdigest() + ".safetensors")


def save_tensors(tensors: dict, path: Path) -> None:
    """Atomic safetensors write (temp + rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _valid_mask(ref, mask):
    """Bool mask over the leading dims of `ref` selecting non-pad positions."""
    import torch

    if mask is not None and ref.dim() >= 2 and tuple(ref.shape[:2]) == tuple(mask.shape):
        return mask.bool()
    return torch.ones(ref.shape[:1], dtype=torch.bool)


def output_metrics(
    ref, got, mask=None, argmax: bool = False, atol: float | None = None, rtol: float | None = None
) -> dict:
    import torch

    ref, got = ref.detach().float(), got.detach().float()
    if ref.shape != got.shape:
        return {"shape_mismatch": f"{tuple(got.shape)} != reference {tuple(ref.shape)}"}
    sel = _valid_mask(ref, mask)
    r, g = ref[sel], got[sel]  # [n_valid, ...]
    d = (g - r).abs()
    norm = r.norm().item()
    m = {
        "max_abs": d.max().item() if d.numel() else 0.0,
        "mean_abs": d.mean().item() if d.numel() else 0.0,
        "rel_error": (g - r).norm().item() / norm if norm > 0 else float(d.max().item() if d.numel() else 0.0),
        "cosine": torch.nn.functional.cosine_similarity(g.flatten(), r.flatten(), dim=0, eps=1e-12).item(),
        "nonfinite": int((~torch.isfinite(g)).sum().item()),
    }
    if r.dim() >= 2:  # per position (token or row) cosine, worst case
        m["min_position_cosine"] = (
            torch.nn.functional.cosine_similarity(g.flatten(1), r.flatten(1), dim=1, eps=1e-12).min().item()
        )
    if argmax:
        m["argmax_agreement"] = (g.argmax(-1) == r.argmax(-1)).float().mean().item()
    if atol is not None or rtol is not None:
        bound = (atol or 0.0) + (rtol or 0.0) * r.abs()
        m["allclose_violations"] = int((d > bound).sum().item())
    return m


def gate(metrics: dict[str, dict], tolerance: dict) -> str | None:
    """None when every output is within tolerance, else the first broken metric, named."""
    for name, m in metrics.items():
        if "shape_mismatch" in m:
            return f"{name}: shape {m['shape_mismatch']}"
        if m.get("nonfinite"):
            return f"{name}: {m['nonfinite']} non-finite values"
        if m.get("allclose_violations") and (tolerance.get("atol") is not None or tolerance.get("rtol") is not None):
            return (
                f"{name}: max_abs {m['max_abs']:.3g} exceeds atol {tolerance.get('atol')} + rtol "
                f"{tolerance.get('rtol')}"
                f" at {m['allclose_violations']} positions"
            )
        checks = [
            ("rel_error", "max_rel_error", lambda v, t: v <= t, ">"),
            ("cosine", "min_cosine", lambda v, t: v >= t, "<"),
            ("min_position_cosine", "min_cosine", lambda v, t: v >= t, "<"),
            ("argmax_agreement", "min_argmax_agreement", lambda v, t: v >= t, "<"),
            ("token_agreement", "min_token_agreement", lambda v, t: v >= t, "<"),
        ]
        for metric, tol, ok, sign in checks:
            if metric in m and tolerance.get(tol) is not None and not ok(m[metric], tolerance[tol]):
                return f"{name}: {metric} {m[metric]:.6g} {sign} {tol} {tolerance[tol]}"
    return None


def decoder_reference(
    model, batch_size: int, sequence_length: int, generate_tokens: int, seed: int
) -> tuple[dict, dict]:
    """Seeded prompts; the eager model's logits on them and its greedy continuation.

    The prompt takes a quarter of the compiled length (at most 8 tokens) and the rest, up to
    `generate_tokens`, is generated; min_new_tokens keeps eos from ending a row early, so
    both sides generate exactly the same number of tokens."""
    import torch

    prompt_len = max(1, min(8, sequence_length // 4))
    n = max(1, min(generate_tokens, sequence_length - prompt_len))
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(min(5, vocab - 1), vocab, (batch_size, prompt_len), generator=g, dtype=torch.int64)
    pad = model.generation_config.pad_token_id
    if pad is None:
        eos = model.generation_config.eos_token_id
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    with torch.no_grad():
        logits = model(input_ids=prompt, attention_mask=torch.ones_like(prompt)).logits.float()
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=pad,
            num_beams=1,
        )
    return {"input_ids": prompt}, {"logits": logits, "generated": generated}


def run_decoder(runtime: DecoderRuntime, prompt, generate_tokens: int) -> dict:
    """What verification compares for a decoder, through the same generate() users call:
    the prefill logits (every position, or the last one for engines that compute only that)
    and greedy decoding of exactly `generate_tokens` tokens after the prompt."""
    import torch

    with torch.no_grad():
        logits = runtime.forward(prompt, torch.arange(prompt.shape[1]))
        ids = generate(runtime, prompt, max_new_tokens=generate_tokens, min_new_tokens=generate_tokens, do_sample=False)
    return {"logits": logits.float().cpu(), "generated": ids.cpu()}


def decoder_metrics(reference: dict, got: dict, prompt_length: int, tolerance: dict) -> dict:
    """Prefill-logit metrics and greedy agreement of a decoder (the gate reads both)."""
    ref_logits = (
        reference["logits"] if got["logits"].shape[1] == reference["logits"].shape[1] else reference["logits"][:, -1:]
    )
    metrics = {
        "logits": output_metrics(
            ref_logits, got["logits"], None, argmax=True, atol=tolerance.get("atol"), rtol=tolerance.get("rtol")
        )
    }
    agreement = greedy_agreement(reference["generated"], got["generated"], prompt_length=prompt_length)
    metrics["generated"] = {**agreement, "token_agreement": agreement["agreement_rate"]}
    return metrics


def greedy_agreement(ref_ids: Any, got_ids: Any, prompt_length: int = 0) -> dict:
    """How far two batches of generated ids agree, for the verify gate.

    Compares tokens from `prompt_length` on, over the shorter of the two lengths.
    agreement_length: tokens equal before the first mismatch, min over the batch;
    agreement_rate: mean over rows of (matching prefix / compared tokens);
    token_match_rate: fraction of equal tokens at equal positions;
    exact: same shape and every token equal."""
    import torch

    ref = torch.as_tensor(ref_ids).long().cpu()
    got = torch.as_tensor(got_ids).long().cpu()
    if ref.dim() == 1:
        ref = ref[None]
    if got.dim() == 1:
        got = got[None]
    if ref.shape[0] != got.shape[0]:
        raise ValueError(f"batch sizes differ: ref {ref.shape[0]} vs got {got.shape[0]}")
    end = min(ref.shape[1], got.shape[1])
    compared = max(end - prompt_length, 0)
    a = ref[:, prompt_length:end]
    b = got[:, prompt_length:end]
    equal = a == b
    if compared == 0:
        prefix = [0] * ref.shape[0]
    else:
        mismatch = ~equal
        first = torch.where(mismatch.any(dim=1), mismatch.int().argmax(dim=1), torch.full((ref.shape[0],), compared))
        prefix = [int(v) for v in first]
    return {
        "agreement_length": min(prefix) if prefix else 0,
        "agreement_length_per_row": prefix,
        "compared_tokens": compared,
        "agreement_rate": (sum(prefix) / (compared * len(prefix))) if compared and prefix else 1.0,
        "token_match_rate": float(equal.float().mean()) if compared else 1.0,
        "exact": bool(ref.shape == got.shape and torch.equal(ref, got)),
    }


def run_artifact(folder: Path, inputs_path: Path, out_path: Path, generate_tokens: int = 0) -> None:
    """Load a compiled artifact with only its config.json and run it on saved inputs."""
    config = json.loads((folder / "config.json").read_text())
    meta = config["pipeline"]
    backend = get_backend(meta["backend"], meta["backend_options"])
    runner = backend.load(folder, config)
    inputs = load_tensors(inputs_path)
    if meta["task"] == "text-generation":
        save_tensors(run_decoder(runner, inputs["input_ids"], generate_tokens), out_path)
        return
    outputs = runner(**inputs)
    save_tensors({k: v.float().cpu() for k, v in outputs.items()}, out_path)


def start_standby(backend: str, folder: Path, log: Path):
    """A fresh verifying process for the artifact that will be in `folder`: it does the backend's
    imports now and runs the artifact once told on its stdin
    (`proc.communicate(json.dumps([folder, inputs, outputs, generate_tokens]))`)."""
    import subprocess

    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.verify", "--standby", backend, str(folder)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )


def _main(argv: list[str]) -> int:
    watch_parent()
    if argv[:1] == ["--standby"]:
        get_backend(argv[1]).warm_up()
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # not needed (the compile failed)
        argv = json.loads(line)
    run_artifact(Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3]) if len(argv) > 3 else 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
