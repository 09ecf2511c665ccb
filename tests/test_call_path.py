"""Where a job's compile time goes (report.json timings by phase), and the runtime call path: the
runtime class's fast path gives exactly what the AOTInductor package itself gives."""

from __future__ import annotations

import pytest
import torch

from pipeline import modeling
from pipeline.backends.inductor import flat_call_order

PHASES = ("export_s", "lower_s", "cxx_s", "package_s")


def test_every_inductor_job_reports_its_compile_phases(smoke):
    rows = [r for r in smoke["report"]["jobs"] if r["backend"] == "inductor" and r["status"] == "passed"]
    assert rows
    for row in rows:
        t = row["timings"]
        assert all(isinstance(t.get(p), (int, float)) and t[p] >= 0 for p in PHASES), (row["model"], t)
        assert t["cxx_builds"] >= 1 and t["cxx_s"] > 0, (row["model"], t)  # AOTInductor always runs the compiler
        # the phases are parts of the compile: together they never exceed it (rounding aside)
        assert sum(t[p] for p in PHASES) <= t["compile_s"] + 0.05, (row["model"], t)


@pytest.fixture(scope="module")
def tiny_bert_b1(smoke):
    (row,) = [r for r in smoke["report"]["jobs"] if r["model"] == "tiny-bert" and r["cast_type"] == "fp32"
              and r["shapes"] == {"batch_size": 1, "sequence_length": 16}]  # fmt: skip
    return modeling.CompiledModelForFeatureExtraction.from_pretrained(row["artifact"])


def test_the_class_gives_exactly_what_the_package_gives(tiny_bert_b1):
    model = tiny_bert_b1
    package = torch._inductor.aoti_load_package(str(model.folder / model.compile_config["compiled"]["file"]))
    assert flat_call_order(package) == model.input_names  # so the runner takes the flat fast path
    gen = torch.Generator().manual_seed(0)
    for s in (16, 9):  # the compiled shape (fast path) and a padded one
        ids = torch.randint(5, 100, (1, s), generator=gen)
        mask = torch.ones_like(ids)
        types = torch.zeros_like(ids)
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        pad = (0, 16 - s)  # what the class does: pad ids, mask 0, type 0 up to the compiled length
        pad_id = int(model.config.pad_token_id or 0)
        full = {
            "input_ids": torch.nn.functional.pad(ids, pad, value=pad_id),
            "attention_mask": torch.nn.functional.pad(mask, pad),
            "token_type_ids": torch.nn.functional.pad(types, pad),
        }
        with torch.no_grad():
            want = package(**full)[0][:, :s]
        assert got.shape == (1, s, model.config.hidden_size)
        assert torch.equal(got, want), s


def test_a_package_with_another_call_layout_takes_the_generic_path(tmp_path):
    """A package whose inputs are positional (not what `compile` exports) is not given the flat path."""

    class Add(torch.nn.Module):
        def forward(self, a, b):
            return (a + b,)

    x = torch.ones(2)
    program = torch.export.export(Add(), (x, x))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "m.pt2"))
    assert flat_call_order(torch._inductor.aoti_load_package(path)) is None
