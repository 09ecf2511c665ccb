"""Reference outputs, metrics and the gate.

The reference is the original model on CPU in fp32, eager, on the same inputs; it is stored
per (model revision, task, shapes, seed) and reused across cast types and backends.
Metrics cover non-pad positions only: pad positions carry the largest, meaningless errors.

    python -m pipeline.verify ARTIFACT_DIR INPUTS.safetensors OUTPUTS.safetensors
runs a compiled artifact in a fresh process: proof that it loads without the model's code.
`python -m pipeline.verify --standby ARTIFACT_DIR` imports torch first and then reads those three
paths as a JSON list from stdin, so a worker can start it before its compile ends.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

REF_VERSION = "ref-1"


def reference_path(cache_root: Path, spec: dict, seed: int, extra: Any = None) -> Path:
    ident = json.dumps([REF_VERSION, spec["model"], spec["task"], spec["shapes"], seed, extra], sort_keys=True)
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


def output_metrics(ref, got, mask=None, argmax: bool = False, atol: float | None = None, rtol: float | None = None) -> dict:
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
        m["min_position_cosine"] = torch.nn.functional.cosine_similarity(g.flatten(1), r.flatten(1), dim=1, eps=1e-12).min().item()
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
            return (f"{name}: max_abs {m['max_abs']:.3g} exceeds atol {tolerance.get('atol')} + rtol {tolerance.get('rtol')}"
                    f" at {m['allclose_violations']} positions")
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


def decoder_reference(model, batch_size: int, sequence_length: int, generate_tokens: int, seed: int) -> tuple[dict, dict]:
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
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n,
                                   min_new_tokens=n, pad_token_id=pad, num_beams=1)
    return {"input_ids": prompt, "max_new_tokens": torch.tensor(n)}, {"logits": logits, "generated": generated}


def run_artifact(folder: Path, inputs_path: Path, out_path: Path) -> None:
    """Load a compiled artifact with only its config.json and run it on saved inputs."""
    from pipeline.backends import get_backend

    config = json.loads((folder / "config.json").read_text())
    meta = config["pipeline"]
    backend = get_backend(meta["backend"], meta["backend_options"])
    runner = backend.load(folder, config)
    inputs = load_tensors(inputs_path)
    if meta["task"] == "text-generation":
        import torch

        from pipeline import decoder

        prompt = inputs["input_ids"]
        n = int(inputs["max_new_tokens"].item())
        with torch.no_grad():
            if hasattr(runner, "prefill_logits"):  # engines that only return the last position's logits
                logits = runner.prefill_logits(prompt)
            else:
                logits = runner(prompt, torch.arange(prompt.shape[1]))
            ids = decoder.generate(runner, prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        save_tensors({"logits": logits.float().cpu(), "generated": ids.cpu()}, out_path)
        return
    outputs = runner(**inputs)
    save_tensors({k: v.float().cpu() for k, v in outputs.items()}, out_path)


def start_standby(folder: Path, log: Path):
    """A fresh verifying process for the artifact that will be in `folder`: it imports torch now
    and runs the artifact once told on its stdin (`proc.communicate(json.dumps([folder, inputs, outputs]))`)."""
    import subprocess

    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.verify", "--standby", str(folder)], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--standby"]:
        import torch  # noqa: F401
        import torch._inductor  # noqa: F401

        from pipeline.backends import inductor  # noqa: F401

        line = sys.stdin.readline()
        if not line.strip():
            return 0  # not needed (the compile failed)
        argv = json.loads(line)
    run_artifact(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
