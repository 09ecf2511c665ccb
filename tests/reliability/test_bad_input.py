"""Bad input, as users produce it: every case exits 2 (config/usage) or raises a clear error
naming the file and field; never a traceback.

CLI cases run `python -m pipeline` in a subprocess as a user would (`run_cli`); runtime cases
call `from_pretrained` on artifact folders broken by hand (no compile needed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, artifact_config, cli_env, run_cli

from pipeline import model_entries, modeling
from pipeline.cache import MANIFEST, Cache
from pipeline.validate import ConfigError, validate

pytestmark = pytest.mark.reliability

FE = "feature-extraction"


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_usage_error(proc: subprocess.CompletedProcess, *fragments: str, one_line: bool = False) -> None:
    text = output(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    if one_line:
        assert len([line for line in text.splitlines() if line.strip()]) == 1, text


def config_dir(tmp_path: Path, rel: str, content: bytes) -> Path:
    """A --config-dir holding one (broken) config file at `rel`."""
    d = tmp_path / "confdir"
    (d / rel).parent.mkdir(parents=True, exist_ok=True)
    (d / rel).write_bytes(content)
    return d


def model_folder(tmp_path: Path, name: str, config: bytes | None) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_bytes(config)
    return folder


# --------------------------------------------------------------------------- 1. YAML files Hydra reads
YAML_CASES = {
    "syntax": (b"matrix:\n  models: [tiny-bert\n  shapes: {a: 1\n", ["line 3, column 9", "expected ',' or ']'"]),
    "duplicate-key": (b"mode: validate\nmode: plan\n", ["line 2, column 1", "found duplicate key mode"]),
    "not-utf8": (b"matrix:\n  models: [tiny-bert]\n# caf\xe9\n", ["is not UTF-8 text (byte 0xe9 at line 3 column 6)"]),
    "control-character": (b"matrix:\n  models: [a\x01b]\n", ["line 2, column 13", "unacceptable character #x0001"]),
}


@pytest.mark.parametrize("full_error", ["", "1"], ids=["default", "HYDRA_FULL_ERROR=1"])
@pytest.mark.parametrize("case", list(YAML_CASES))
def test_broken_sweep_yaml_is_one_line_with_file_line_column(tmp_path, case, full_error):
    content, fragments = YAML_CASES[case]
    d = config_dir(tmp_path, "sweep/broken.yaml", content)
    proc = run_cli("--config-dir", str(d), "+sweep=broken", "mode=validate",
                   env=cli_env(HYDRA_FULL_ERROR=full_error), timeout=120)
    assert_usage_error(proc, f"config error: {d / 'sweep' / 'broken.yaml'}", *fragments, one_line=True)


def test_broken_model_yaml_given_with_plus_model(tmp_path):
    d = config_dir(tmp_path, "model/broken.yaml", b"id: [artifacts/models/tiny-bert\ntask: feature-extraction\n")
    proc = run_cli("--config-dir", str(d), "+model=broken", "mode=validate", timeout=120)
    assert_usage_error(proc, str(d / "model" / "broken.yaml"), "YAML syntax error", one_line=True)


def test_hydra_full_error_keeps_exit_2_for_override_errors():
    for env in (cli_env(), cli_env(HYDRA_FULL_ERROR="1")):
        proc = run_cli("foo=1", "mode=validate", env=env, timeout=120)
        assert proc.returncode == 2, output(proc)
        assert "Could not override 'foo'" in output(proc)


def test_broken_model_file_listed_in_the_matrix(tmp_path, monkeypatch):
    """configs/model/<name>.yaml is read by the validator itself (matrix.models=[name])."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "broken.yaml").write_bytes(b"id: [x\n")
    (tmp_path / "model" / "latin.yaml").write_bytes(b"id: caf\xe9\n")
    (tmp_path / "model" / "alist.yaml").write_bytes(b"- 1\n")
    monkeypatch.setattr(model_entries, "CONFIG_DIR", tmp_path)
    errors: list[str] = []
    for name in ("broken", "latin", "alist"):
        assert model_entries.entry_from(name, f"matrix.models[{name}]", errors) is None
    assert errors[0].startswith("matrix.models[broken]: configs/model/broken.yaml, line 2, column 1: YAML syntax error")
    assert errors[1] == (
        "matrix.models[latin]: configs/model/latin.yaml is not UTF-8 text (byte 0xe9 at line 1 column 8)"
    )
    assert errors[2] == "matrix.models[alist]: configs/model/alist.yaml: expected a mapping {id, task, ...}, got list"


# --------------------------------------------------------------------------- 2./3. a model's config.json
BAD_CONFIG_JSON = {
    "invalid-json": (
        b'{\n  "model_type": "bert",\n    x\n}',
        "is not valid JSON (line 3 column 5: Expecting property name",
    ),
    "json-list": (b"[1, 2]", "is not a JSON object (it holds an array)"),
    "not-utf8": (b'{"model_type": "caf\xe9"}', "is not UTF-8 text (byte 0xe9 at line 1 column 20)"),
}


@pytest.mark.parametrize("mode", ["validate", "plan", "run"])
@pytest.mark.parametrize("case", list(BAD_CONFIG_JSON))
def test_model_config_json_that_is_not_a_json_object(tmp_path, case, mode):
    content, message = BAD_CONFIG_JSON[case]
    folder = model_folder(tmp_path, "x", content)
    proc = run_cli(
        f"matrix.models=[{{id: '{folder}', task: {FE}}}]", f"mode={mode}",
        f"cache.dir={tmp_path / 'cache'}", f"report.dir={tmp_path / 'runs'}", timeout=120,
    )
    assert_usage_error(proc, f"matrix.models[0].id: {folder}/config.json {message}")


def test_custom_code_model_is_refused(tmp_path):
    config = json.loads((REPO / "artifacts" / "models" / "tiny-bert" / "config.json").read_text()) if (
        REPO / "artifacts" / "models" / "tiny-bert" / "config.json").is_file() else {"model_type": "bert"}
    config["auto_map"] = {"AutoModel": "modeling_x.XModel", "AutoConfig": "configuration_x.XConfig"}
    folder = model_folder(tmp_path, "custom", json.dumps(config).encode())
    proc = run_cli(f"matrix.models=[{{id: '{folder}', task: {FE}}}]", "mode=validate", timeout=120)
    assert_usage_error(
        proc,
        f"matrix.models[0].id: {folder} needs custom code (auto_map in config.json); "
        "the pipeline never runs remote code",
    )
    with pytest.raises(ValueError, match="needs custom code"):  # and export=True never compiles it
        modeling.CompiledModelForFeatureExtraction.from_pretrained(
            str(folder), export=True, batch_size=1, sequence_length=16, cache_dir=tmp_path / "cache"
        )


# --------------------------------------------------------------------------- 6. ids of local folders
def test_smoke_sweep_before_the_tiny_models_are_built(tmp_path):
    """From a checkout without artifacts/models (here: another working directory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "+sweep=smoke", "mode=validate"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    text = output(proc)
    assert_usage_error(
        proc,
        "matrix.models[0].id: local model folder 'artifacts/models/tiny-bert' does not exist; "
        "build the smoke models with `make tiny-models`",
    )
    assert "not a valid Hub repo id" not in text
    assert text.count("make tiny-models") == 4  # one line per model, no follow-up errors (include/exclude)
    assert "is not in the matrix" not in text and "is not a model of the matrix" not in text


@pytest.mark.parametrize(
    "model_id, local",
    [
        ("artifacts/models/nope", True),
        ("artifacts/nope", True),  # a local root
        ("tests/nope", True),  # its parent folder exists
        ("a/b/c", True),  # a Hub id has at most one '/'
        ("./nope", True),
        ("google-bert/bert-base-uncased", False),
        ("gpt2", False),
    ],
)
def test_local_or_hub_id(model_id, local, monkeypatch):
    monkeypatch.chdir(REPO)
    assert model_entries.is_local_id(model_id) is local
    why = model_entries.check_model_id(model_id)
    assert (why is None) is (not local), why
    if local:
        assert why.startswith(f"local model folder {model_id!r} does not exist")


def test_real_hub_ids_still_validate(monkeypatch):
    monkeypatch.chdir(REPO)
    proc = run_cli(
        f"matrix.models=[{{id: google-bert/bert-base-uncased, task: {FE}, max_positions: 512}}]", "mode=validate",
        timeout=120,
    )
    assert proc.returncode == 0, output(proc)


# --------------------------------------------------------------------------- 4./5. artifact folders
ARTIFACT_CONFIG = artifact_config("ab" * 32)


def artifact(folder: Path, config: dict | None = None, manifest: bool = True, **files: bytes) -> Path:
    """An artifact folder made by hand: config.json, a model.pt2 that is not a package, and a
    manifest.json with the files' sha256 and a passed verification."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or ARTIFACT_CONFIG))
    (folder / "model.pt2").write_bytes(b"not a zip archive")
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "logs" / "compile.log").write_text("ok\n")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if manifest:
        table = {
            p.relative_to(folder).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                               "size": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        (folder / MANIFEST).write_text(json.dumps({"files": table, "verification": {"status": "passed"}}))
    return folder


def load(folder, **kwargs):
    return modeling.CompiledModelForFeatureExtraction.from_pretrained(str(folder), **kwargs)


def test_artifact_config_json_not_valid_json(tmp_path):
    folder = artifact(tmp_path / "a", manifest=False)  # with a manifest: refused by its integrity check first
    (folder / "config.json").write_text('{"pipeline": ')
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/config.json is not valid JSON \(line 1 column 14"):
        load(folder, allow_unverified=True)
    (folder / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/config.json is not UTF-8 text"):
        load(folder, allow_unverified=True)
    (folder / "config.json").write_text("[]")
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/config.json is not a JSON object"):
        load(folder, allow_unverified=True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("task", "translation"),
        ("backend", "tpu"),
        ("shapes", {"batch_size": "1"}),
        ("input_names", "input_ids"),
        ("spec", None),
    ],
)
def test_artifact_pipeline_section_fields_are_checked(tmp_path, field, value):
    config = json.loads(json.dumps(ARTIFACT_CONFIG))
    config["pipeline"][field] = value
    folder = artifact(tmp_path / "a", config)
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/config.json: pipeline\.{field}: "):
        load(folder)


def test_artifact_whose_package_does_not_load_names_the_file(tmp_path):
    folder = artifact(tmp_path / "a")  # hashes match: the manifest is sound, the package is not
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/model.pt2 cannot be loaded: .*zip archive"):
        load(folder)


def test_key_prefix_not_in_the_cache(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(modeling.ArtifactNotFoundError, match=rf"^no cache entry starts with abcdef12 in {cache}$"):
        load("abcdef12", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no such artifact folder"):
        load(tmp_path / "missing" / "folder")
    with pytest.raises(FileNotFoundError, match="cannot be fetched: LocalEntryNotFoundError"):
        load("org/not-cached-anywhere", cache_dir=cache)  # offline: a Hub id that is not in the HF cache


def test_key_prefix_of_a_cache_entry_loads_it(tmp_path):
    """A prefix found in the cache resolves to its entry (which loads up to its garbage package)."""
    cache = Cache(tmp_path / "cache")
    key = "cd" * 32
    artifact(cache.entry_dir(key))
    with pytest.raises(modeling.ArtifactError, match=rf"^{cache.entry_dir(key)}/model.pt2 cannot be loaded"):
        load(key[:10], cache_dir=cache.root)


@pytest.mark.parametrize("victim", ["model.pt2", "config.json", "tokenizer.json"])
def test_tampered_file_is_refused_naming_it(tmp_path, victim):
    folder = artifact(tmp_path / "a", **{"tokenizer.json": b"{}"})
    with open(folder / victim, "ab") as f:
        f.write(b" ")
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/{victim}: size \d+ != \d+"):
        load(folder)
    data = (folder / victim).read_bytes()[:-1]  # same size, other bytes
    (folder / victim).write_bytes(data[:-1] + (b"x" if data[-1:] != b"x" else b"y"))
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/{victim}: sha256 mismatch"):
        load(folder)
    (folder / victim).unlink()
    if victim == "config.json":
        with pytest.raises(modeling.ArtifactNotFoundError, match=rf"^{folder}: no config.json"):
            load(folder)
    else:
        with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/{victim}: missing"):
            load(folder)


def test_logs_are_not_needed_to_load(tmp_path):
    """push_to_hub and publish leave logs/ out: a manifest that lists them still loads."""
    folder = artifact(tmp_path / "a")
    shutil.rmtree(folder / "logs")
    with pytest.raises(modeling.ArtifactError, match="model.pt2 cannot be loaded"):  # got past the integrity check
        load(folder)


@pytest.mark.parametrize("name", ["../x", "/etc/hostname", "a/../../x"])
def test_manifest_naming_files_outside_the_folder_is_refused(tmp_path, name):
    folder = artifact(tmp_path / "a")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/manifest.json: files: .* is not a path inside"):
        load(folder)


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"files": []}', b'{"files": {"model.pt2": 5}}'])
def test_broken_manifest_is_refused_naming_it(tmp_path, content):
    folder = artifact(tmp_path / "a")
    (folder / MANIFEST).write_bytes(content)
    with pytest.raises(modeling.ArtifactError, match=rf"^{folder}/manifest.json"):
        load(folder)


def test_unverified_folder_is_still_refused_unless_allowed(tmp_path):
    folder = artifact(tmp_path / "a", manifest=False)
    with pytest.raises(modeling.UnverifiedArtifactError, match="missing \\(no manifest.json\\)"):
        load(folder)
    with pytest.raises(modeling.ArtifactError, match="model.pt2 cannot be loaded"):
        load(folder, allow_unverified=True)
    assert issubclass(modeling.UnverifiedArtifactError, RuntimeError)  # as before


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("compiled", "file", "/etc/passwd"),
        ("compiled", "file", "../model.pt2"),
        ("compiled", "file", "sub/model.pt2"),
        ("compiled", "file", ".."),
        ("compiled", "generation_config_file", "../../generation_config.json"),
        ("compiled", "file", 5),
        ("neuron", "model_file", "/tmp/model.pt"),
    ],
)
def test_file_names_in_config_json_must_be_plain_names(tmp_path, section, key, value):
    config = json.loads(json.dumps(ARTIFACT_CONFIG))
    config.setdefault(section, {})[key] = value
    for allow in (False, True):  # refused before the backend joins it to the folder, manifest or not
        folder = artifact(tmp_path / f"a-{allow}", config, manifest=not allow)
        message = rf"^{folder}/config.json: {section}\.{key}: .* is not a plain file name in the artifact folder"
        with pytest.raises(modeling.ArtifactError, match=message):
            load(folder, allow_unverified=allow)


def test_validate_reports_bad_input_without_crashing(tmp_path, monkeypatch):
    """validate() on a hand-made dict: missing sections get their defaults; a null list, a null
    include item and an unhashable exclude value are reported with their paths."""
    folder = model_folder(tmp_path, "m", json.dumps({"model_type": "bert", "max_position_embeddings": 64}).encode())
    monkeypatch.chdir(REPO)
    cfg = {
        "backend": {"name": "inductor"},
        "matrix": {"models": [{"id": str(folder), "task": FE}], "shapes": None, "include": [None],
                   "exclude": [{"model": ["x"]}]},
    }
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "matrix.shapes: must not be null" in e.value.errors
    assert "matrix.include[0]: must not be null" in e.value.errors
    assert any(m.startswith("matrix.exclude[0].model: ['x'] is not in the matrix") for m in e.value.errors)
