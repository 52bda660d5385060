"""The torch decode step as one function of fixed-shape tensors, run eagerly or compiled (``--engine``).

forward (block N's output steered in place) → SAE encode (float32 accumulate) → filter scale / penalty →
top-k → logit processing → sampling → one packed record, with the request's token, position and penalty
counts updated in place. Nothing in it branches on data or on the request: the filter, the steering (zero
deltas when a request steers nothing), the bias and penalties (zeros) and the sampling parameters (tensors;
Philox keyed by seed and position) are all fixed-shape inputs. The only Python-level choices are per engine
(capture on or off, logprobs on or off), each its own graph. So :func:`decode_step` compiles with
``fullgraph=True`` into one graph per cache length, and the eager engine runs the very same code — less the
ops that are identities for the request at hand (:class:`Skips`: no steering, no logit processing, greedy),
which an eager step would otherwise pay for op by op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from backends.torch_gemma2 import Gemma2, KVCache
from backends.torch_sae import TorchSAE, TorchSteer
from backends.torch_sampling import logprob_tail, process, sample
from neuroscope.core.protocol import MAX_STEER_FEATURES, GenerationParams


@dataclass
class StepInputs:
    """One request's device inputs to the decode step, every shape fixed (``M`` = MAX_STEER_FEATURES steering
    slots, unused ones zero). ``token``, ``position`` and ``counts`` are advanced by the step itself."""

    token: torch.Tensor  # (1,) int64, the last sampled token
    position: torch.Tensor  # (1,) int64, where it goes
    temperature: torch.Tensor  # () float32, 0: greedy
    top_p: torch.Tensor  # () float32
    seed: torch.Tensor  # () int64, the Philox key
    bias: torch.Tensor  # (vocab,) float32 logit_bias, dense
    counts: torch.Tensor  # (vocab,) float32 tokens generated so far (penalties)
    presence: torch.Tensor  # () float32
    frequency: torch.Tensor  # () float32
    steer_W_enc: torch.Tensor  # (d_model, M) the steered features' encoder columns, SAE dtype
    steer_b_enc: torch.Tensor  # (M,) float32
    steer_threshold: torch.Tensor  # (M,) float32
    steer_ids: torch.Tensor  # (M,) int64 the steered features (a TopK SAE reads their activations from the full encode)
    steer_W_dec: torch.Tensor  # (M, d_model) float32
    steer_values: torch.Tensor  # (M,) float32
    steer_clamp: torch.Tensor  # (M,) float32, 1 for clamp / ablate

    @classmethod
    def allocate(cls, sae: TorchSAE, vocab: int) -> "StepInputs":
        dev, d = sae.device, sae.W_enc.shape[0]
        f32 = dict(dtype=torch.float32, device=dev)
        m = MAX_STEER_FEATURES
        return cls(
            token=torch.zeros(1, dtype=torch.long, device=dev), position=torch.zeros(1, dtype=torch.long, device=dev),
            temperature=torch.zeros((), **f32), top_p=torch.ones((), **f32),
            seed=torch.zeros((), dtype=torch.long, device=dev), bias=torch.zeros(vocab, **f32),
            counts=torch.zeros(vocab, **f32), presence=torch.zeros((), **f32), frequency=torch.zeros((), **f32),
            steer_W_enc=torch.zeros(d, m, dtype=sae.W_enc.dtype, device=dev), steer_b_enc=torch.zeros(m, **f32),
            steer_threshold=torch.zeros(m, **f32), steer_ids=torch.zeros(m, dtype=torch.long, device=dev),
            steer_W_dec=torch.zeros(m, d, **f32),
            steer_values=torch.zeros(m, **f32), steer_clamp=torch.zeros(m, **f32),
        )

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def load(self, params: GenerationParams, steer: TorchSteer | None) -> None:
        """Write one request's parameters in place (the addresses a compiled step was built on stay)."""
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.temperature.fill_(max(0.0, float(params.temperature)))
        self.top_p.fill_(float(params.top_p))
        self.seed.fill_(seed & 0x7FFF_FFFF_FFFF_FFFF)
        self.bias.zero_()
        if params.logit_bias:
            ids, vals = params.bias_arrays()
            self.bias.index_put_((torch.from_numpy(ids).to(self.bias.device),),
                                 torch.from_numpy(vals).to(self.bias.device), accumulate=True)
        self.counts.zero_()
        self.presence.fill_(float(params.presence_penalty))
        self.frequency.fill_(float(params.frequency_penalty))
        for t in (self.steer_W_enc, self.steer_b_enc, self.steer_threshold, self.steer_ids, self.steer_W_dec,
                  self.steer_values, self.steer_clamp):
            t.zero_()
        if steer is not None:
            m = steer.values.shape[0]
            self.steer_W_enc[:, :m] = steer.W_enc
            self.steer_b_enc[:m] = steer.b_enc
            self.steer_threshold[:m] = steer.threshold
            self.steer_ids[:m] = steer.ids
            self.steer_W_dec[:m] = steer.W_dec
            self.steer_values[:m] = steer.values
            self.steer_clamp[:m] = steer.clamp


@dataclass(frozen=True)
class Skips:
    """Ops the eager engine leaves out because, for this request, they are identities: steering with every slot
    zero, logit processing with no bias and no penalties (``logits + 0 - 0``), the sampled draw of a greedy
    request (``where(temperature > 0, ...)`` takes the argmax). Skipping them changes no result (the compiled
    engine runs them all, and the tests hold the two equal); it saves an eager step a few hundred small ops."""

    steering: bool = False
    logits: bool = False
    sampling: bool = False

    @classmethod
    def for_request(cls, params: GenerationParams) -> "Skips":
        return cls(steering=params.steering is None, logits=not (params.logit_bias or params.penalized),
                   sampling=params.temperature <= 0.0)


NOTHING = Skips()  # the compiled engine: every op, one graph for every request


class _SlotSteer:
    """Steering from the fixed slots of :class:`StepInputs`: ``h + (values - clamp * a) @ W_dec`` with ``a``
    the slots' activations of the unsteered ``h`` (:class:`backends.torch_sae.TorchSteer`'s rule; a zero slot
    adds exactly nothing)."""

    def __init__(self, sae: TorchSAE, inp: StepInputs, layer: int):
        self.sae, self.inp, self.layer = sae, inp, layer

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        inp, x = self.inp, h[0]
        a = self.sae.steered_acts(x, inp.steer_W_enc, inp.steer_b_enc, inp.steer_threshold, inp.steer_ids)
        coef = torch.addcmul(inp.steer_values, inp.steer_clamp, a, value=-1.0)
        return torch.addmm(x.float(), coef, inp.steer_W_dec).to(h.dtype)[None]


def draw(logits: torch.Tensor, inp: StepInputs, counter: torch.Tensor, logprobs: bool,
         skips: Skips = NOTHING) -> tuple[torch.Tensor, ...]:
    """Process the (1, vocab) logits, draw the token at position ``counter``, count it; returns the token and
    (with ``logprobs``) its logprob tail. Shared by the prefill and the decode step."""
    if skips.logits:
        logits = logits.float()
    else:
        logits = process(logits, inp.bias, inp.counts, inp.presence, inp.frequency)
    if skips.sampling:
        token = logits.argmax(dim=-1)
    else:
        token = sample(logits, inp.temperature, inp.top_p, inp.seed, counter)
    if not skips.logits:  # the counts feed the penalties only
        inp.counts.index_add_(0, token, torch.ones(1, dtype=torch.float32, device=token.device))
    return (token, logprob_tail(logits, token)) if logprobs else (token,)


def decode_step(model: Gemma2, sae: TorchSAE, inp: StepInputs, cache: KVCache, layer: int, capture: bool,
                logprobs: bool, skips: Skips = NOTHING) -> torch.Tensor:
    """One token: the record ``[token, l0, filtered, k ids, k values]`` (``[token]`` without capture), plus
    the ``MAX_LOGPROBS`` logprob tail with ``logprobs``; ``inp.token`` / ``position`` / ``counts`` advance."""
    steer = None if skips.steering else _SlotSteer(sae, inp, layer)
    logits, hidden = model.step(inp.token, inp.position, cache, capture=layer if capture else None, steer=steer)
    drawn = draw(logits, inp, inp.position + 1, logprobs, skips)
    token = drawn[0]
    inp.token.copy_(token)
    inp.position.add_(1)
    parts = [token.float()]
    if capture:
        parts.append(sae.pack_fixed(sae.encode(hidden))[0])
    if logprobs:
        parts.append(drawn[1])
    return torch.cat(parts)


__all__ = ["NOTHING", "Skips", "StepInputs", "decode_step", "draw"]
