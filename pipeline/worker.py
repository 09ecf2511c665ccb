"""One job end to end, in its own process.

    python -m pipeline.worker JOB.json RESULT.json
    python -m pipeline.worker --standby BACKEND   (then one line on stdin: ["JOB.json", "RESULT.json"])

`run_worker` is the other end: it starts (or hands a job to) such a process and waits for it
with the job's timeout; the executors and `from_pretrained(export=True)` both use it.

A standby worker pays its imports (torch, transformers, Inductor) before its job is known and
waits on stdin for exactly one job; the executor starts the next one while the current job
compiles, so each job still gets its own fresh process without waiting for its imports.

Under the key's file lock: reuse a sound entry, else load the model, compute (or reuse) the
CPU fp32 reference, compile, run the artifact in a FRESH process on the same inputs, gate,
and rename the entry into place only when it passed. stdout/stderr (Inductor, g++) go to
the entry's logs/compile.log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pipeline import tasks, verify
from pipeline.backends import get_backend
from pipeline.cache import Cache


class JobFailed(Exception):
    """A deterministic failure: export error, gate failure, backend unavailable."""


def _redirect_output(log: Path):
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return saved


def _restore_output(saved) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
)


def _tokenizer(path: str, revision: str | None, local: bool):
    """The model's tokenizer, or None when the model has no tokenizer files (seeded token ids
    are used instead). Any other failure (a network blip, a corrupt file) fails the job: an
    artifact without its tokenizer must never be cached under the key of one with it."""
    from transformers import AutoTokenizer

    if local and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    if not local:
        from huggingface_hub import list_repo_files

        try:
            files = set(list_repo_files(path, revision=revision))
        except Exception:  # offline: the files are in the HF cache or nowhere
            files = None
        if files is not None and not files & set(TOKENIZER_FILES):
            return None
    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
    except Exception as e:
        raise JobFailed(
            f"tokenizer of {path} could not be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[
                :400
            ]
        ) from e


def build_artifact(job: dict, cache: Cache, tmp: Path, timings: dict) -> dict:
    """Compile into `tmp` and verify; returns metrics. Raises JobFailed with the reason."""
    spec = job["spec"]
    backend = get_backend(spec["backend"]["name"], job["backend_options"])
    reason = backend.available()
    if reason:
        raise JobFailed(f"backend unavailable: {reason}")
    # The verifying process starts now so its imports overlap the compile; it is still a fresh
    # process that never sees the model's Python code, only the artifact folder.
    verifier = verify.start_standby(backend.name, tmp, tmp / "logs" / "verify.log")
    try:
        return _build(job, cache, tmp, timings, backend, verifier)
    finally:
        if verifier.poll() is None:
            verifier.kill()
            verifier.wait()


def _build(job: dict, cache: Cache, tmp: Path, timings: dict, backend, verifier) -> dict:
    import torch

    spec = job["spec"]
    task = tasks.TASKS[job["task"]]
    revision = None if job["model"]["local"] else job["model"]["revision"]
    t = time.perf_counter()
    model = tasks.load_eager_model(job["task"], job["model"]["path"], revision)
    tokenizer = _tokenizer(job["model"]["path"], revision, job["model"]["local"])
    timings["load_s"] = round(time.perf_counter() - t, 3)

    torch.manual_seed(job["verify"]["seed"])
    shapes = spec["shapes"]
    ref_path = verify.reference_path(
        cache.root, spec, job["verify"]["seed"], job["verify"]["generate_tokens"] if task.decoder else None
    )
    t = time.perf_counter()
    if ref_path.is_file():
        saved = verify.load_tensors(ref_path)
        inputs = {k[3:]: v for k, v in saved.items() if k.startswith("in.")}
        reference = {k[4:]: v for k, v in saved.items() if k.startswith("ref.")}
        timings["reference_reused"] = True
    else:
        if task.decoder:
            inputs, reference = verify.decoder_reference(
                model,
                shapes["batch_size"],
                shapes["sequence_length"],
                job["verify"]["generate_tokens"],
                job["verify"]["seed"],
            )
        else:
            inputs = tasks.example_inputs(
                model.config.to_dict(),
                shapes["batch_size"],
                shapes["sequence_length"],
                job["verify"]["seed"],
                tokenizer,
            )
            with torch.no_grad():
                out = model(**inputs, return_dict=True)
            reference = {name: out[name].float() for name in task.outputs}
        verify.save_tensors(
            {**{f"in.{k}": v for k, v in inputs.items()}, **{f"ref.{k}": v for k, v in reference.items()}}, ref_path
        )
    timings["reference_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    try:
        section = backend.compile(model, inputs, spec, tmp)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise JobFailed(f"compile failed: {type(e).__name__}: {msg[0] if msg else ''}"[:500]) from e
    timings["compile_s"] = round(time.perf_counter() - t, 3)

    config = model.config.to_dict()
    config.update(section)
    config["pipeline"] = {
        "key": job["key"],
        "spec": spec,
        "task": job["task"],
        "shapes": shapes,
        "cast_type": spec["cast_type"],
        "backend": backend.name,
        "backend_options": job["backend_options"],
        "model_id": job["model"]["id"],
        "input_names": list(inputs),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)

    # Fresh-process verification: only the artifact and its config.json are used.
    t = time.perf_counter()
    work = tmp / ".verify"
    work.mkdir()
    verify.save_tensors(inputs, work / "inputs.safetensors")
    generate_tokens = reference["generated"].shape[1] - inputs["input_ids"].shape[1] if task.decoder else 0
    verifier.communicate(
        json.dumps([str(tmp), str(work / "inputs.safetensors"), str(work / "outputs.safetensors"), generate_tokens])
        + "\n"
    )
    if verifier.returncode != 0:
        tail = (tmp / "logs" / "verify.log").read_text().strip().splitlines()[-1:] or [""]
        raise JobFailed(
            f"compiled artifact failed to load/run in a fresh process (exit {verifier.returncode}): {tail[0][:300]}"
        )
    got = verify.load_tensors(work / "outputs.safetensors")
    shutil.rmtree(work)
    timings["verify_s"] = round(time.perf_counter() - t, 3)

    tol = job["verify"]["tolerance"]
    mask = inputs.get("attention_mask")
    if task.decoder:
        metrics = verify.decoder_metrics(reference, got, inputs["input_ids"].shape[1], tol)
    else:
        metrics = {
            name: verify.output_metrics(reference[name], got[name], mask, task.argmax, tol.get("atol"), tol.get("rtol"))
            for name in task.outputs
        }
    broken = verify.gate(metrics, tol)
    if broken:
        raise JobFailed(f"verification failed: {broken}", metrics)
    return metrics


def run_job(job: dict, warm_start: bool = False) -> dict:
    cache = Cache(job["cache_dir"])
    key = job["key"]
    result = {
        "key": key,
        "status": "failed",
        "error": None,
        "metrics": {},
        "timings": {"warm_start": warm_start},
        "artifact": None,
    }
    with cache.lock(key):
        folder, why = cache.lookup(key)
        if folder is not None:
            return dict(
                result, status="cached", artifact=str(folder), metrics=(cache.manifest(key) or {}).get("metrics", {})
            )
        result["notes"] = [why] if why else []
        cache.clear_stale_tmp(key)
        tmp = cache.new_tmp(key)
        saved = _redirect_output(tmp / "logs" / "compile.log")
        start = time.perf_counter()
        try:
            metrics = build_artifact(job, cache, tmp, result["timings"])
            result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
            _restore_output(saved)
            saved = None
            manifest = {
                "spec": job["spec"],
                "metrics": metrics,
                "timings": result["timings"],
                "verification": {"status": "passed", "tolerance": job["verify"]["tolerance"]},
                "versions": job["spec"]["toolchain"],
                "model": job["model"],
                "task": job["task"],
            }
            dest = cache.commit(key, tmp, manifest)
            return dict(result, status="passed", metrics=metrics, artifact=str(dest))
        except Exception as e:
            if saved is not None:
                traceback.print_exc()
                _restore_output(saved)
            error = str(e.args[0]) if isinstance(e, JobFailed) else f"{type(e).__name__}: {e}"
            metrics = e.args[1] if isinstance(e, JobFailed) and len(e.args) > 1 else {}
            log = tmp / "logs" / "compile.log"
            cache.record_failure(
                key,
                {
                    "error": error,
                    "spec": job["spec"],
                    "metrics": metrics,
                    "model": job["model"],
                    "log_tail": log.read_text()[-4000:] if log.is_file() else "",
                },
            )
            return dict(
                result,
                error=error,
                metrics=metrics,
                timings=dict(result["timings"], total_s=round(time.perf_counter() - start, 3)),
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def run_worker(
    job: dict, work: Path, timeout_s: float, standby: subprocess.Popen | None = None, env: dict | None = None
) -> dict:
    """One attempt in a fresh process (a standby one when given, else one started with `env`);
    a transient fault comes back as status 'transient'."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / "job.json", work / "result.json", work / "worker.log"
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        proc = standby
        if proc is not None:
            try:
                proc.stdin.write(json.dumps([str(job_file), str(result_file)]).encode() + b"\n")
                proc.stdin.close()
            except OSError:  # it died while waiting: start this job cold
                proc = None
        if proc is None:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.worker", str(job_file), str(result_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"status": "transient", "error": f"timed out after {timeout_s:.0f} s (timeout_s)"}
    if result_file.is_file():
        return json.loads(result_file.read_text())
    how = (
        f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode} without a result"
    )
    tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] if log_file.is_file() else []
    return {"status": "transient", "error": f"worker {how}" + (f": {tail[0][:300]}" if tail else "")}


def _standby(backend: str) -> tuple[str, str] | None:
    """Import what every job needs, then wait for one job on stdin (None on EOF: not needed)."""
    import transformers.modeling_utils  # noqa: F401  (every job loads an eager model)

    get_backend(backend).warm_up()
    line = sys.stdin.readline()
    if not line.strip():
        return None
    job_file, result_file = json.loads(line)
    _redirect_output(Path(result_file).with_name("worker.log"))  # from here on, output belongs to the job's log
    return job_file, result_file


def main(argv: list[str]) -> int:
    warm = argv[0] == "--standby"
    if warm:
        handed = _standby(argv[1])
        if handed is None:
            return 0
        argv = list(handed)
    job = json.loads(Path(argv[0]).read_text())
    result = run_job(job, warm)
    out = Path(argv[1])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
