"""Neuron text-generation engines as `pipeline.backends.base.DecoderRuntime`s.

`pipeline.generation.generate()` and verification (`pipeline.verify.run_decoder`) drive every
backend's decoder through `forward(input_ids, cache_position) -> logits`: a prefill from
position 0 or one decode step. Here that step is the SDK model's own forward step, never its
generate(), so choosing tokens (greedy, sampling, eos, lengths) is the same code for every
backend and a Neuron decoder is verified like any other.

Engines and the forward step each wraps (read from the libraries' sources):

- `NxDDecoderRuntime`: optimum-neuron's `NeuronModelForCausalLM` (NxD backend,
  `optimum/neuron/models/inference/backend/modules/decoder/modeling_decoder.py`,
  `NxDModelForCausalLM.forward(input_ids, position_ids, seq_ids=None, attention_mask=None,
  sampling_params=None, ...)`). Called as optimum-neuron's own vLLM integration calls it
  (`optimum/neuron/vllm/model_loader.py`): `attention_mask=None` (the model infers it from
  `position_ids`), `seq_ids` = the batch rows, no sampling params (a dummy is made when the
  model samples on the host). A prompt of more than one token starting at position 0 runs the
  context-encoding graph, one token runs the token-generation graph. The output's `.logits`
  is (batch, 1, vocab) - the last position only - and is None when the artifact was compiled
  with on-device sampling (`neuron_config.on_device_sampling`), which returns tokens instead:
  such an artifact cannot be served here and is refused with that reason.
- `TnxDecoderRuntime`: transformers-neuronx `*ForSampling` models (legacy;
  `src/transformers_neuronx/llama/model.py` and `base.py`: `forward(input_ids, cache_ids=None,
  start_ids=None)` returns the next-token logits, (batch, vocab)). Called as its own
  `sampling.sample_llama` calls it: the prefill with `cache_ids=None` (the model pads the
  prompt to its context bucket and numbers the positions itself), each decode step with
  `cache_ids=[position]` (int32); `start_ids=None` (no left padding; the model fills in zeros,
  and in recent releases a given start_ids also reorders rows as continuous-batching seq ids).

Both engines keep their KV cache on the device, so a runtime is stateful: one generate() at
a time. batch_size, sequence_length and vocab_size come from the artifact's config section
(`static_batch_size`, `static_sequence_length`, `vocab_size`); generation_config from the
artifact folder's generation_config.json when present.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.generation import StaticShapeError, generate

GENERATION_CONFIG_FILE = "generation_config.json"

ON_DEVICE_SAMPLING_MESSAGE = (
    "this artifact samples on the Neuron device (neuron_config.on_device_sampling is true): its forward "
    "step returns token ids, not logits, so it cannot be verified or driven by pipeline.generation; "
    "compile it again with this pipeline (which turns on_device_sampling off)")


def check_step(runtime: Any, input_ids: Any, cache_position: Any) -> tuple[Any, Any, int]:
    """The DecoderRuntime step contract, checked: (batch_size, n) int64 ids, n positions
    contiguous from cache_position[0], inside the compiled sequence, and either a prefill
    (from 0) or a single decode token. Returns (input_ids, cache_position, start)."""
    import torch

    input_ids = torch.as_tensor(input_ids).to(dtype=torch.long).cpu()
    cache_position = torch.as_tensor(cache_position).to(dtype=torch.long).cpu()
    if input_ids.dim() != 2 or input_ids.shape[0] != runtime.batch_size:
        raise StaticShapeError(
            f"input_ids must have shape (batch_size={runtime.batch_size}, n), got {tuple(input_ids.shape)}")
    n = int(input_ids.shape[1])
    if not 1 <= n <= runtime.sequence_length:
        raise StaticShapeError(f"input_ids length must be in [1, {runtime.sequence_length}], got {n}")
    if tuple(cache_position.shape) != (n,):
        raise StaticShapeError(f"cache_position must have shape ({n},), got {tuple(cache_position.shape)}")
    start = int(cache_position[0])
    if start < 0 or start + n > runtime.sequence_length:
        raise StaticShapeError(
            f"cache_position {start}..{start + n - 1} is outside the compiled cache 0..{runtime.sequence_length - 1}")
    if not torch.equal(cache_position, torch.arange(start, start + n)):
        raise ValueError(f"cache_position must be contiguous from {start}, got {cache_position.tolist()}")
    if start > 0 and n != 1:
        raise ValueError(f"a Neuron decoder step is a prefill from position 0 or one token; got {n} tokens "
                         f"at position {start}")
    return input_ids.contiguous(), cache_position, start


class _NeuronDecoderRuntime:
    """Shared attributes of the Neuron decoder runtimes (see the module docstring)."""

    engine = ""

    def __init__(self, model: Any, *, batch_size: int, sequence_length: int, vocab_size: int,
                 generation_config: Any = None):
        import torch

        self.model = model
        self.batch_size = int(batch_size)
        self.sequence_length = int(sequence_length)
        self.vocab_size = int(vocab_size)
        self.device = torch.device("cpu")  # the SDKs take and return host tensors
        self.generation_config = generation_config

    def generate(self, input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any) -> Any:
        return generate(self, input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs)

    def _logits(self, logits: Any) -> Any:
        """(batch, 1, vocab) float32: the last position, the padded vocabulary cut off."""
        if logits is None:
            raise RuntimeError(ON_DEVICE_SAMPLING_MESSAGE)
        if logits.dim() == 2:
            logits = logits[:, None, :]
        if logits.dim() != 3 or logits.shape[0] != self.batch_size or logits.shape[-1] < self.vocab_size:
            raise RuntimeError(f"{self.engine} returned logits of shape {tuple(logits.shape)}; expected "
                               f"({self.batch_size}, 1, {self.vocab_size})")
        return logits[:, -1:, : self.vocab_size].float()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, batch_size={self.batch_size}, "
                f"sequence_length={self.sequence_length}, vocab_size={self.vocab_size})")


class NxDDecoderRuntime(_NeuronDecoderRuntime):
    """optimum-neuron `NeuronModelForCausalLM` (NxD) as a DecoderRuntime: logits of the last
    position, (batch, 1, vocab)."""

    engine = "optimum-neuron"

    def __init__(self, model: Any, **kwargs: Any):
        if bool(getattr(getattr(model, "neuron_config", None), "on_device_sampling", False)):
            raise ValueError(ON_DEVICE_SAMPLING_MESSAGE)
        super().__init__(model, **kwargs)

    def forward(self, input_ids: Any, cache_position: Any) -> Any:
        import torch

        input_ids, cache_position, start = check_step(self, input_ids, cache_position)
        if start == 0 and hasattr(self.model, "reset"):
            self.model.reset()  # a new sequence (optimum-neuron's generate() does the same)
        position_ids = cache_position[None, :].expand(self.batch_size, -1).contiguous()
        seq_ids = torch.arange(self.batch_size, dtype=torch.long)
        out = self.model(input_ids, attention_mask=None, position_ids=position_ids, seq_ids=seq_ids,
                         sampling_params=None)
        return self._logits(getattr(out, "logits", None))


class TnxDecoderRuntime(_NeuronDecoderRuntime):
    """A transformers-neuronx `*ForSampling` model as a DecoderRuntime: next-token logits,
    (batch, 1, vocab)."""

    engine = "transformers-neuronx"

    def forward(self, input_ids: Any, cache_position: Any) -> Any:
        import torch

        input_ids, cache_position, start = check_step(self, input_ids, cache_position)
        cache_ids = None if start == 0 else cache_position.to(torch.int32)
        logits = self.model(input_ids, cache_ids=cache_ids, start_ids=None)
        return self._logits(logits)


RUNTIMES = {"optimum-neuron": NxDDecoderRuntime, "transformers-neuronx": TnxDecoderRuntime}


def generation_config_of(folder: Path | str) -> Any:
    """The artifact folder's generation_config.json as a transformers.GenerationConfig, or None."""
    folder = Path(folder)
    if not (folder / GENERATION_CONFIG_FILE).is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder, config_file_name=GENERATION_CONFIG_FILE)


def decoder_runtime(model: Any, section: dict[str, Any], folder: Path | str) -> _NeuronDecoderRuntime:
    """The DecoderRuntime of a loaded SDK model, described by the artifact's config section
    ("neuron" in config.json) and its folder (generation_config.json)."""
    engine = section.get("engine") or "optimum-neuron"
    if engine not in RUNTIMES:
        raise ValueError(f"config.json neuron.engine {engine!r} is not a decoder engine ({', '.join(RUNTIMES)})")
    missing = [k for k in ("static_batch_size", "static_sequence_length") if section.get(k) is None]
    vocab_size = section.get("vocab_size")
    if vocab_size is None:  # artifacts compiled before vocab_size was recorded
        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = getattr(text, "vocab_size", None)
    if vocab_size is None:
        missing.append("vocab_size")
    if missing:
        raise ValueError(f"config.json neuron section lacks {', '.join(missing)}: not a decoder artifact of this "
                         "pipeline (compile it again)")
    return RUNTIMES[engine](model, batch_size=section["static_batch_size"],
                            sequence_length=section["static_sequence_length"], vocab_size=vocab_size,
                            generation_config=generation_config_of(folder))
