"""MedPLIB network: CLIP + projector + Llama-family LLM with MoE FFNs + region adapter + SAM-Med2D mask branch.

Submodules sit where the official checkpoint puts them (`model.vision_tower.vision_tower.*`, `model.mm_projector.*`,
`model.layers.{i}.mlp.deepspeed_moe.*`, `model.region_fea_adapter.*`, `model.text_hidden_fcs.0.*`,
`model.visual_model.*`, `lm_head.*`), so official weights load without renaming.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medplib.model.config import MedPLIBConfig, VisionConfig
from medplib.model.conversation import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX, SEG_TOKEN, SPECIAL_TOKENS
from medplib.model.losses import compute_loss
from medplib.model.moe import convert_llama_to_moe
from medplib.model.region_pixels import add_region_pixels, pool_region_pixels
from medplib.model.sam_med2d import SamMed2D


class CLIPVisionTower(nn.Module):
    """transformers CLIPVisionModel; returns the patch features of `select_layer` without CLS (LLaVA-1.5)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.select_layer = cfg.select_layer
        clip_cfg = CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                                    num_hidden_layers=cfg.num_hidden_layers,
                                    num_attention_heads=cfg.num_attention_heads, image_size=cfg.image_size,
                                    patch_size=cfg.patch_size)
        self.vision_tower = _CLIPHolder(CLIPVisionModel(clip_cfg))

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower.vision_model(pixel_values.to(self.dtype), output_hidden_states=True)
        return out.hidden_states[self.select_layer][:, 1:]


class _CLIPHolder(nn.Module):
    """Keeps the transformers<5 parameter path `vision_tower.vision_model.*` that the official checkpoint uses
    (transformers 5 dropped the `vision_model` level inside CLIPVisionModel)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.vision_model = clip


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA projector: `linear` or `mlp{N}x_gelu` (keys `mm_projector.0`, `.2`, ...)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind.startswith("mlp") and kind.endswith("x_gelu"):
        depth = int(kind[3:-6])
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector type {kind!r}")


@dataclass
class Emitted:
    """The tokens one decode emitted, with the final-norm states that predicted those MedPLIB needs."""

    seg_token_id: int
    tokens: list[int] = field(default_factory=list)
    seg: list[torch.Tensor] = field(default_factory=list)  # the state predicting each <SEG>, in order
    tail: list[torch.Tensor] = field(default_factory=list)  # the states predicting the last two tokens

    def add(self, token: int, state: torch.Tensor) -> None:
        self.tokens.append(token)
        if token == self.seg_token_id:
            self.seg.append(state)
        self.tail = [*self.tail[-1:], state]

    def seg_hidden(self, rule: str, like: torch.Tensor) -> torch.Tensor:
        """<SEG> states [n, hidden] under `rule` (`MedPLIBConfig.seg_state`).

        "predicting": every <SEG>, each from the state that predicts it (the state training supervises).
        "release": the release commit's `evaluate()` and demo worker: the first <SEG> only, and with exactly one
        `<SEG>` the state `hidden[-2]`, which predicts the second-to-last emitted token (for "... <SEG> .</s>"
        the state after <SEG>).
        """
        chosen = self.seg
        if rule == "release":
            chosen = self.tail[:1] if len(self.seg) == 1 and len(self.tail) == 2 else self.seg[:1]
        return torch.stack(chosen) if chosen else like.new_zeros((0, like.shape[-1]))


@dataclass
class Generation:
    """Result of one autoregressive decode."""

    token_ids: list[int]
    seg_hidden: torch.Tensor  # [n_seg, hidden]: final-norm <SEG> states (`Emitted.seg_hidden`)
    timings_ms: dict[str, float] = field(default_factory=dict)
    prefix_cache: object = None  # batched decoding: the row's new prefix KV cache when asked for


class MedPLIBForCausalLM(nn.Module):
    """The whole network. Build it with `medplib.checkpoints.project` (`build_model`, `from_pretrained`, official loader)."""

    def __init__(self, config: MedPLIBConfig, llm: nn.Module, token_ids: dict[str, int]):
        super().__init__()
        self.config = config
        self.llm_config = llm.config
        self.model = llm.model  # transformers LlamaModel; MedPLIB's extra modules are attached to it below
        self.lm_head = llm.lm_head
        hidden = llm.config.hidden_size
        vision = config.vision
        self.model.vision_tower = CLIPVisionTower(vision)
        self.model.mm_projector = build_projector(config.projector_type, vision.hidden_size, hidden)
        self.model.region_fea_adapter = nn.Linear(vision.hidden_size, hidden)
        self.model.text_hidden_fcs = nn.ModuleList([nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, config.out_dim), nn.Dropout(0.0))])
        self.model.visual_model = SamMed2D(config.sam)
        convert_llama_to_moe(self.model, config.moe.num_experts, config.moe.layers)
        add_region_pixels(self, config.region_pixel_dim)  # last, so every official module's init is unchanged
        self.token_ids = dict(token_ids)
        self.seg_token_id = token_ids[SEG_TOKEN]
        self.eos_token_id = token_ids["eos"]
        self.base_vocab_size = token_ids[SEG_TOKEN]  # MedPLIB's tokens are appended after the base vocabulary
        # Decoded ids are read back to the host every `sync_every` steps (0: every step on CPU, every 8 on GPU,
        # where a read-back stalls the launch queue); steps computed after an end of sequence are discarded.
        self.sync_every = 0
        self.sync_timings = False  # benchmarks: wait for the GPU at stage boundaries so timings are real

    def forward(self, batch, weights=None) -> dict[str, torch.Tensor]:
        """Training forward: the loss dict of `medplib.model.losses.compute_loss` (lets DDP wrap the model)."""
        return compute_loss(self, batch, weights)

    def clock(self) -> float:
        """`time.perf_counter` for stage timings; with `sync_timings` on a GPU it first waits for the queued
        kernels (benchmarks only: a sync stalls the launch queue)."""
        if self.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ----------------------------------------------------------------- encoders
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def encode_images(self, clip_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B,3,336,336] -> (image tokens for the LLM [B,P,hidden], CLIP patch features [B,P,C])."""
        patches = self.model.vision_tower(clip_pixels.to(self.device))
        return self.model.mm_projector(patches.to(self.dtype)), patches

    def encode_sam(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,256,256] -> the mask branch's image embedding ([B,256,16,16] SAM-Med2D, [B,256,64,64] LiteMedSAM)."""
        sam = self.model.visual_model
        return sam.encode_image(sam_pixels.to(self.device, next(sam.image_encoder.parameters()).dtype))

    def encode_region_pixels(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] -> the fine region feature map [B,dim,S/4,S/4] (models with `region_pixel_dim` only)."""
        enc = self.model.region_pixel_encoder
        return enc(clip_pixels.to(self.device, enc.layers[0].weight.dtype))

    def region_features(self, patch_feats: torch.Tensor, grids: list[np.ndarray],
                        pixel_map: torch.Tensor | None = None,
                        coverages: list[np.ndarray] | None = None) -> torch.Tensor:
        """Mean of region_fea_adapter(CLIP patches) over each region's grid cells -> [n_regions, hidden].

        Cells are sampled bilinearly at (row, col) / G with align_corners=True, exactly as the original's
        point_sample (so the sample positions sit at idx * (G-1)/G). Regions with more than
        `max_region_samples` cells are subsampled evenly instead of randomly, for reproducible answers.
        With `region_pixel_dim`, the adapted coverage-weighted mean of `pixel_map` ([dim, n, n]) over each
        region's `coverages` is added (`medplib.model.region_pixels`).
        """
        if not grids:
            return patch_feats.new_zeros((0, self.llm_config.hidden_size), dtype=self.dtype)
        fmap = self.model.region_fea_adapter(patch_feats.to(self.dtype))  # [P, hidden]
        g = int(round(fmap.shape[0] ** 0.5))
        fmap = fmap.reshape(g, g, -1).permute(2, 0, 1).unsqueeze(0).float()  # [1, hidden, G, G]
        feats = []
        for grid in grids:
            cells = torch.from_numpy(np.argwhere(grid)).to(fmap.device, torch.float32)  # (row, col)
            if len(cells) == 0:
                raise ValueError("a region covers no CLIP patch")
            if len(cells) > self.config.max_region_samples:
                keep = torch.linspace(0, len(cells) - 1, self.config.max_region_samples).round().long()
                cells = cells[keep.to(cells.device)]
            xy = cells.flip(-1) / g * 2.0 - 1.0  # grid_sample wants (x, y) in [-1, 1]
            sampled = F.grid_sample(fmap, xy.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
            feats.append(sampled[0, :, 0].mean(dim=-1))
        out = torch.stack(feats).to(self.dtype)
        if self.config.region_pixel_dim:
            if pixel_map is None or coverages is None or len(coverages) != len(grids):
                raise ValueError("this model pools regions at pixel level too: pass pixel_map and coverages")
            out = out + self.model.region_pixel_adapter(pool_region_pixels(pixel_map, coverages)).to(self.dtype)
        return out

    # ----------------------------------------------------------------- LLM
    def embed_sequence(self, input_ids: list[int], image_tokens: torch.Tensor | None,
                       region_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids with IMAGE/REGION placeholders -> input embeddings [L, hidden].

        `image_tokens` may be None for a continuation after a cached prefix that already holds the image.
        """
        n_regions = sum(1 for t in input_ids if t == REGION_TOKEN_INDEX)
        have = 0 if region_feats is None else region_feats.shape[0]
        if n_regions != have:
            raise ValueError(f"prompt has {n_regions} region placeholder(s) but {have} region feature(s) given")
        n_images = sum(1 for t in input_ids if t == IMAGE_TOKEN_INDEX)
        if n_images != (0 if image_tokens is None else 1):
            raise ValueError("prompt must contain exactly one <image> placeholder per image given")
        ids = torch.tensor(input_ids, device=self.device)
        text = self.model.embed_tokens(ids.clamp(min=0))
        pieces, region_idx, start = [], 0, 0
        for pos in torch.nonzero(ids < 0).flatten().tolist():
            pieces.append(text[start:pos])
            if input_ids[pos] == IMAGE_TOKEN_INDEX:
                pieces.append(image_tokens.to(text.dtype))
            else:
                pieces.append(region_feats[region_idx:region_idx + 1].to(text.dtype))
                region_idx += 1
            start = pos + 1
        pieces.append(text[start:])
        return torch.cat(pieces, dim=0)

    def run_llm(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, use_cache: bool = False, position_ids: torch.Tensor | None = None):
        """The decoder stack; returns (final-norm hidden states [B,L,H], past_key_values)."""
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, past_key_values=None,
                 draft: list[int] | None = None) -> Generation:
        """Greedy (temperature 0) or sampled decoding of one sequence [1, L, H].

        The hidden state that *predicts* <SEG> is the one the original trains `text_hidden_fcs` on, so it is
        taken from the very step whose output is <SEG> (this avoids the original's off-by-one in evaluate()).

        `draft` (greedy only): the answer the caller expects, e.g. the grounding template. It is checked in one
        forward pass: the longest prefix the model itself would have produced greedily is accepted, and decoding
        goes on one token at a time from the first disagreement. The tokens are exactly those of plain greedy
        decoding; a grounding answer costs one pass instead of one per token.
        """
        t0 = self.clock()
        emitted = Emitted(self.seg_token_id)
        if draft and temperature <= 1e-4 and max_new_tokens > 0:
            # The prompt and the draft go through the LLM in one pass (a pass over a few tokens costs about a
            # full read of the weights, so one pass instead of two matters).
            draft = draft[:max_new_tokens]
            start = (past_key_values.get_seq_length() if past_key_values is not None else 0) + inputs_embeds.shape[1]
            draft_embeds = self.model.embed_tokens(torch.tensor([draft], device=inputs_embeds.device))
            hidden, past = self.run_llm(torch.cat([inputs_embeds, draft_embeds.to(inputs_embeds.dtype)], dim=1),
                                        past_key_values=past_key_values, use_cache=True)
            t1 = self.clock()
            states = hidden[0, inputs_embeds.shape[1] - 1:]  # states[i] predicts answer token i
            done, h, past = self._accept_draft(draft, states, past, start, emitted)
            if done:
                return self._generation(emitted, h, t0, t1)
        else:
            hidden, past = self.run_llm(inputs_embeds, past_key_values=past_key_values, use_cache=True)
            h = hidden[:, -1]
            t1 = self.clock()
        sync_every = self.sync_every if self.sync_every else (1 if h.device.type == "cpu" else 8)
        ids: list[torch.Tensor] = []  # on the device; read back every `sync_every` steps (no per-token sync)
        states: list[torch.Tensor] = []
        while len(emitted.tokens) + len(ids) < max_new_tokens:
            logits = self.lm_head(h).float()
            if temperature > 1e-4:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                next_id = logits.argmax(dim=-1)
            ids.append(next_id)
            states.append(h[0])
            if len(ids) == sync_every or len(emitted.tokens) + len(ids) == max_new_tokens:
                if self._flush(ids, states, emitted):
                    break
            emb = self.model.embed_tokens(next_id.view(1, 1))
            hidden, past = self.run_llm(emb, past_key_values=past, use_cache=True)
            h = hidden[:, -1]
        self._flush(ids, states, emitted)
        return self._generation(emitted, h, t0, t1)

    def _flush(self, ids: list, states: list, emitted: Emitted) -> bool:
        """Move decoded ids to the host (one sync); keep what precedes the first end of sequence. True at EOS."""
        if not ids:
            return False
        values = torch.cat(ids).tolist()
        finished = False
        for tok, state in zip(values, states):
            emitted.add(tok, state)
            if tok == self.eos_token_id:
                finished = True
                break
        ids.clear()
        states.clear()
        return finished

    def _generation(self, emitted: Emitted, h, t0, t1) -> Generation:
        t2 = self.clock()
        return Generation(emitted.tokens, emitted.seg_hidden(self.config.seg_state, h),
                          {"prefill": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3})

    def _accept_draft(self, draft: list[int], states: torch.Tensor, past, start: int,
                      emitted: Emitted) -> tuple[bool, object, object]:
        """Accept the draft's longest prefix the model itself predicts (`states[i]` predicts token i; the draft
        sits in the cache from position `start`) and append the model's own next token. Returns (finished,
        hidden state to decode from, cache holding exactly the emitted tokens)."""
        predicted = self.lm_head(states).float().argmax(dim=-1).tolist()
        for i, tok in enumerate(predicted[:len(draft)]):
            emitted.add(tok, states[i])
            if tok == self.eos_token_id:
                _keep(past, start + i + 1)
                return True, states[i + 1][None], past
            if tok != draft[i]:  # the model disagrees: its own token is emitted, decoding resumes after it
                _keep(past, start + i)
                hidden, past = self.run_llm(self.model.embed_tokens(torch.tensor([[tok]], device=states.device)),
                                            past_key_values=past, use_cache=True)
                return False, hidden[:, -1], past
        # the whole draft was accepted without an end of sequence: go on from its last state
        return False, states[len(draft)][None], past

    # ----------------------------------------------------------------- masks
    def seg_to_prompt(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """<SEG> hidden states [n, hidden] -> sparse prompt embeddings [n, 1, 256]."""
        return self.model.text_hidden_fcs[0](seg_hidden.to(self.dtype)).unsqueeze(1)

    def decode_masks(self, image_embedding: torch.Tensor, text_embeds: torch.Tensor | None,
                     points: tuple[torch.Tensor, torch.Tensor] | None = None,
                     boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder on one image embedding [1,C,h,w]; returns (low-res logits [n,1,4h,4w], iou [n,1])."""
        sam = self.model.visual_model
        dtype = sam.mask_decoder.iou_token.weight.dtype
        return sam.decode(image_embedding.to(dtype), text_embeds=None if text_embeds is None else text_embeds.to(dtype),
                          points=points, boxes=boxes, multimask_output=False)


def _keep(past, length: int) -> None:
    """Crop a KV cache to its first `length` positions (transformers' crop takes how many to drop)."""
    extra = past.get_seq_length() - length
    if extra > 0:
        past.crop(-extra)


def token_ids_from_tokenizer(tokenizer) -> dict[str, int]:
    """The ids the network needs at run time."""
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS[:9] + SPECIAL_TOKENS[-2:]}
    ids["eos"] = tokenizer.eos_token_id
    return ids
