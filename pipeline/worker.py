"""One job end to end, in its own process.

    python -m pipeline.worker JOB.json RESULT.json
    python -m pipeline.worker --standby BACKEND [RUN_DIR]
        then jobs on stdin, one line each: ["JOB.json", "RESULT.json", SENT_AT]; RUN_DIR only labels the process

`pipeline.executors.processes.run_worker` is the other end: it starts (or hands a job to) such
a process and waits for it with the job's timeout; the executors and
`from_pretrained(export=True)` both use it. A worker dies with its parent (`pipeline.lifeline`).

A standby worker pays its imports (torch, transformers, Inductor) before its job is known and
then takes jobs from stdin; the executor starts the next one while the current job compiles,
and decides how many jobs one process takes in turn (executor.jobs_per_process): later jobs of
a process skip the cold start and reuse Inductor's in-memory state.

Under the key's file lock: reuse a sound entry; else take the entry from the shared cache and
verify it here (it is native code someone else built); else load the model, compute (or
reuse) the CPU fp32 reference, compile, run the artifact in a FRESH process on the same
inputs, gate, and rename the entry into place only when it passed. stdout/stderr (Inductor, g++) go to
the entry's logs/compile.log.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from pipeline import keys, shared_cache, tasks, verify
from pipeline.backends import get_backend
from pipeline.cache import Cache
from pipeline.job import Job, WorkerResult
from pipeline.lifeline import watch_parent


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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model")  # fmt: skip


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


OUT_OF_MEMORY = ("can't allocate memory", "Cannot allocate memory", "bad_alloc", "out of memory")


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(s in f"{type(e).__name__}: {e}" for s in OUT_OF_MEMORY)


FULL_BYTES = 1 << 20  # a filesystem with less free space than this is full for our purposes


def full_disk(job: dict) -> str | None:
    """The folder (cache dir or Inductor's cache) whose filesystem is full, or None. Compilers
    report a full disk in their own words ("C++ compile error", "file write failed"), so after
    any failure the filesystems we write to are checked."""
    for folder in (job["cache_dir"], os.environ.get("TORCHINDUCTOR_CACHE_DIR")):
        try:
            if folder and shutil.disk_usage(folder).free < FULL_BYTES:
                return folder
        except OSError:
            continue
    return None


def hit_memory_cap(job: dict) -> bool:
    """Whether this process's peak address space reached executor.memory_limit_gb: allocations
    past the cap fail in many shapes (MemoryError, SystemError, a C++ bad_alloc)."""
    limit = job.get("memory_limit_gb")
    if not limit:
        return False
    try:
        status = Path("/proc/self/status").read_text()
        peak_kb = int(status.split("VmPeak:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return False
    return peak_kb * 1024 >= 0.9 * limit * 1024**3


def failure_message(e: BaseException, job: dict) -> str:
    """One line naming what went wrong, with the faults a user acts on named plainly."""
    text = f"{type(e).__name__}: {e}".strip() if not isinstance(e, JobFailed) else str(e.args[0])
    full = full_disk(job)
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or full:
        where = full or e.filename or "the cache"
        return f"no space left on device ({where}); free space or move cache.dir: {text.splitlines()[0][:200]}"
    if out_of_memory(e) or hit_memory_cap(job):
        limit = job.get("memory_limit_gb")
        return "out of memory" + (f" (executor.memory_limit_gb={limit})" if limit else "") + f": {text[:300]}"
    return text if isinstance(e, JobFailed) else text.splitlines()[0][:500]


def build_artifact(job: dict, cache: Cache, tmp: Path, timings: dict, prebuilt: bool = False) -> dict:
    """Compile into `tmp` (or, `prebuilt`, take the artifact already there: a shared-cache
    download) and verify it; returns metrics. Raises JobFailed with the reason."""
    spec = job["spec"]
    backend = get_backend(spec["backend"]["name"], job["backend_options"])
    reason = backend.available()
    if reason:
        raise JobFailed(f"backend unavailable: {reason}")
    # The verifying process starts now so its imports overlap the compile; it is still a fresh
    # process that never sees the model's Python code, only the artifact folder.
    verifier = verify.start_standby(backend.name, tmp, tmp / "logs" / "verify.log")
    try:
        model, tokenizer, inputs, reference = _reference(job, cache, timings)
        if prebuilt:
            _check_prebuilt(job, tmp)
        else:
            graph = keys.shared_program(job)  # weights: refit: a cached program of the graph key is refit
            _compile(job, tmp, timings, backend, model, tokenizer, inputs, cache.program(graph) if graph else None)
        return _verify(job, tmp, timings, verifier, inputs, reference)
    finally:
        if verifier.poll() is None:
            verifier.kill()
            verifier.wait()


def _reference(job: dict, cache: Cache, timings: dict):
    """The eager model, its tokenizer, the example inputs and the CPU fp32 reference outputs
    (stored per model revision, task, shapes, seed and eager versions; reused across casts)."""
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
    seed = job["verify"]["seed"]
    ref_path = verify.reference_path(cache.root, spec, seed, job["verify"]["generate_tokens"] if task.decoder else None)
    t = time.perf_counter()
    if ref_path.is_file():
        os.utime(ref_path)  # used: gc keeps the most recently used references
        saved = verify.load_tensors(ref_path)
        inputs = {k[3:]: v for k, v in saved.items() if k.startswith("in.")}
        reference = {k[4:]: v for k, v in saved.items() if k.startswith("ref.")}
        timings["reference_reused"] = True
    else:
        if task.decoder:
            inputs, reference = verify.decoder_reference(
                model, shapes["batch_size"], shapes["sequence_length"], job["verify"]["generate_tokens"], seed
            )
        else:
            inputs = tasks.example_inputs(
                model.config.to_dict(), shapes["batch_size"], shapes["sequence_length"], seed, tokenizer
            )
            with torch.no_grad():
                out = model(**inputs, return_dict=True)
            reference = {name: out[name].float() for name in task.outputs}
        verify.save_tensors(
            {**{f"in.{k}": v for k, v in inputs.items()}, **{f"ref.{k}": v for k, v in reference.items()}}, ref_path
        )
    timings["reference_s"] = round(time.perf_counter() - t, 3)
    return model, tokenizer, inputs, reference


def _compile(job: dict, tmp: Path, timings: dict, backend, model, tokenizer, inputs: dict, program=None) -> None:
    """Compile, or with a cached `program` of the job's graph key, refit it with this model's
    weights (verified afterwards like any compile; a refit that does not fit falls back to a
    compile, noted in the timings)."""
    spec = job["spec"]
    t = time.perf_counter()
    try:
        section = None
        if program is not None:
            try:
                section = backend.refit(model, inputs, spec, tmp, program)
                timings["refit_from"] = program.name
            except ValueError as e:  # the weights do not fit (nothing was written): compile instead
                timings["refit_failed"] = str(e)[:300]
        if section is None:
            section = backend.compile(model, inputs, spec, tmp)
    except Exception as e:
        if isinstance(e, OSError) or out_of_memory(e):
            raise  # a full disk or exhausted memory is not a compile error
        msg = str(e).strip().splitlines()
        raise JobFailed(f"compile failed: {type(e).__name__}: {msg[0] if msg else ''}"[:500]) from e
    timings["compile_s"] = round(time.perf_counter() - t, 3)
    timings.update(section.pop("timings", None) or {})  # the backend's phases (export_s, lower_s, cxx_s, ...)
    config = model.config.to_dict()
    config.update(section)
    config["pipeline"] = {
        "key": job["key"],
        "spec": spec,
        "task": job["task"],
        "shapes": spec["shapes"],
        "cast_type": spec["cast_type"],
        "backend": backend.name,
        "backend_options": job["backend_options"],
        "model_id": job["model"]["id"],
        "input_names": list(inputs),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)


def _check_prebuilt(job: dict, tmp: Path) -> None:
    try:
        meta = json.loads((tmp / "config.json").read_text())["pipeline"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise JobFailed(f"fetched artifact has no readable config.json pipeline section ({type(e).__name__})") from e
    if meta.get("key") != job["key"] or meta.get("task") != job["task"]:
        raise JobFailed("fetched artifact's config.json names another key or task")


def _verify(job: dict, tmp: Path, timings: dict, verifier, inputs: dict, reference: dict) -> dict:
    """Run the artifact in the FRESH verifying process (only the artifact folder and its
    config.json are used) on the reference inputs, and gate the outputs."""
    task = tasks.TASKS[job["task"]]
    t = time.perf_counter()
    work = tmp / ".verify"
    work.mkdir(exist_ok=True)
    verify.save_tensors(inputs, work / "inputs.safetensors")
    generate_tokens = reference["generated"].shape[1] - inputs["input_ids"].shape[1] if task.decoder else 0
    request = [str(tmp), str(work / "inputs.safetensors"), str(work / "outputs.safetensors"), generate_tokens]
    verifier.communicate(json.dumps(request) + "\n")
    if verifier.returncode != 0:
        tail = (tmp / "logs" / "verify.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        if verifier.returncode == -signal.SIGILL:
            raise JobFailed(
                "the artifact was built for a CPU feature this machine lacks (SIGILL in the verifying "
                "process); the key's platform does not match this CPU"
            )
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
            name: verify.output_metrics(
                reference[name],
                got[name],
                mask if name in task.token_outputs else None,  # a pooled [batch, dim] output has no pad positions
                task.argmax,
                tol.get("atol"),
                tol.get("rtol"),
            )
            for name in task.outputs
        }
    broken = verify.gate(metrics, tol)
    if broken:
        raise JobFailed(f"verification failed: {broken}", metrics)
    return metrics


def _manifest(job: dict, metrics: dict, timings: dict, **extra) -> dict:
    return {
        "spec": job["spec"],
        "metrics": metrics,
        "timings": timings,
        "verification": {"status": "passed", "tolerance": job["verify"]["tolerance"], "verified_on": platform.node()},
        "versions": job["spec"]["toolchain"],
        "model": job["model"],
        "task": job["task"],
        **extra,
    }


def _from_shared(job: dict, cache: Cache, tmp: Path, result: dict) -> Path | None:
    """The key's entry from the shared cache, verified here unless shared_cache.verify=false,
    committed to the local cache; None when there is none or it was not usable (why: in notes)."""
    shared = job.get("shared_cache") or {}
    source = shared.get("source")
    if not source:
        return None
    refused = shared_cache.untrusted(source, shared.get("trusted_repos") or [])
    if refused:
        result["notes"].append(refused)
        return None
    manifest, why = shared_cache.download(job["key"], job["spec"], tmp, source)
    if why:
        result["notes"].append(why)
    if manifest is None:
        _empty(tmp)
        return None
    origin = manifest["fetched_from"]["source"]
    if not shared.get("verify", True):
        result["notes"].append(f"fetched from {origin}; not re-verified (shared_cache.verify=false)")
        return cache.commit(
            job["key"], tmp, dict(manifest, verification=dict(manifest.get("verification") or {}, local="skipped"))
        )
    timings = result["timings"]
    try:
        metrics = build_artifact(job, cache, tmp, timings, prebuilt=True)
    except JobFailed as e:
        result["notes"].append(
            f"shared cache entry from {origin} failed local re-verification ({e.args[0]}); compiling it here instead"
        )
        _empty(tmp)
        return None
    result["notes"].append(f"fetched from {origin} and re-verified here against the CPU fp32 reference")
    result["metrics"] = metrics
    return cache.commit(
        job["key"],
        tmp,
        _manifest(
            job, metrics, timings, fetched_from=manifest["fetched_from"], published_metrics=manifest.get("metrics")
        ),
    )


def _empty(folder: Path) -> None:
    """Remove everything in a build folder but its logs."""
    for p in folder.iterdir():
        if p.name != "logs":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_job(job: Job, warm_start: bool = False) -> WorkerResult:
    cache = Cache(job["cache_dir"])
    key = job["key"]
    result = {
        "key": key,
        "status": "failed",
        "error": None,
        "metrics": {},
        "timings": {"warm_start": warm_start},
        "artifact": None,
        "notes": [],
        "pid": os.getpid(),
    }
    with cache.lock(key):
        folder, why = cache.lookup(key, locked=True)
        if folder is not None:
            return dict(
                result, status="cached", artifact=str(folder), metrics=(cache.manifest(key) or {}).get("metrics", {})
            )
        result["notes"] += [why] if why else []
        cache.clear_stale_tmp(key)
        tmp = cache.new_tmp(key)
        saved = _redirect_output(tmp / "logs" / "compile.log")
        start = time.perf_counter()
        try:
            dest = _from_shared(job, cache, tmp, result)
            if dest is not None:
                _restore_output(saved)
                return dict(result, status="fetched", artifact=str(dest))
            metrics = build_artifact(job, cache, tmp, result["timings"])
            result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
            _restore_output(saved)
            saved = None
            dest = cache.commit(key, tmp, _manifest(job, metrics, result["timings"]))
            if keys.shared_program(job):
                cache.record_program(job["graph_key"], key)
            if result["timings"].get("refit_from"):
                result["notes"].append(f"refit: the program of {result['timings']['refit_from'][:12]} + these weights")
            return dict(result, status="passed", metrics=metrics, artifact=str(dest))
        except Exception as e:
            if saved is not None:
                traceback.print_exc()
                _restore_output(saved)
            error = failure_message(e, job)
            metrics = e.args[1] if isinstance(e, JobFailed) and len(e.args) > 1 else {}
            log = tmp / "logs" / "compile.log"
            try:
                cache.record_failure(
                    key,
                    {
                        "error": error,
                        "spec": job["spec"],
                        "metrics": metrics,
                        "model": job["model"],
                        "log_tail": log.read_text(errors="replace")[-4000:] if log.is_file() else "",
                    },
                )
            except OSError as record_error:  # a full disk must not hide the job's own error
                result["notes"].append(f"could not record the failure: {record_error}")
            timings = dict(result["timings"], total_s=round(time.perf_counter() - start, 3))
            return dict(result, error=error, metrics=metrics, timings=timings)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp.parent / f"{tmp.name}.download", ignore_errors=True)


def _standby_imports(backend: str) -> None:
    import transformers.modeling_utils  # noqa: F401  (every job loads an eager model)

    get_backend(backend).warm_up()


def _limit_memory(limit_gb: float | None) -> None:
    """executor.memory_limit_gb: cap this process's address space (its compiler children inherit
    the cap); an allocation past it fails and the job's row says "out of memory"."""
    if limit_gb:
        limit = int(limit_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _write_result(result: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, out)


def serve(backend: str) -> int:
    """Import what every job needs, then take jobs from stdin, one JSON line each
    (["JOB.json", "RESULT.json", SENT_AT]), until EOF. The executor decides how many jobs one process
    takes (executor.jobs_per_process) and closes stdin to let it go."""
    _standby_imports(backend)
    ready_at, served = time.time(), 0
    for line in sys.stdin:
        if not line.strip():
            continue
        job_file, result_file, sent_at = json.loads(line)
        _redirect_output(Path(result_file).with_name("worker.log"))  # this job's output belongs to its log
        job = json.loads(Path(job_file).read_text())
        _limit_memory(job.get("memory_limit_gb"))
        result = run_job(job, warm_start=sent_at >= ready_at)  # warm: the imports were done before the job came
        served += 1
        result["timings"]["jobs_in_process"] = served
        _write_result(result, Path(result_file))
    return 0


def main(argv: list[str]) -> int:
    watch_parent()
    if argv[0] == "--standby":
        return serve(argv[1])
    job = json.loads(Path(argv[0]).read_text())
    if job.get("memory_limit_gb"):
        _standby_imports(job["backend"])  # imports first: the cap is for the job's own work
    _limit_memory(job.get("memory_limit_gb"))
    _write_result(run_job(job), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
