"""A mixture-of-experts MLP for the trunk (`mlp_type="moe"`): a linear router, the top-k of `num_experts` gated
(SwiGLU) experts per token, and optionally a shared expert every token goes through (LLaDA-MoE, OLMoE layout).

    y = sum_{e in topk(p)} w_e * expert_e(x)  [+ shared_expert(x)],   p = softmax(router(x)) (+ expert_bias)

w_e are the top-k values of p, renormalised to sum to 1 when `norm_topk_prob`. The router runs in float32 (as
the published MoE codes do) so that bf16 weights pick the same experts as fp32 ones up to ties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textdiff.modeling.layers import SwiGLU

__all__ = ["MoEMLP"]


class MoEMLP(nn.Module):
    """Router `gate` [num_experts, hidden] -> top-`top_k` experts (`experts.{e}`: gated MLPs of width
    `intermediate_size`) -> their weighted sum, plus `shared_expert` (width `shared_intermediate_size`) when
    set.

    norm_topk_prob: divide the top-k weights by their sum (Qwen-MoE, Mixtral do; LLaDA-MoE's published code
    does not). expert_bias: a per-expert bias buffer added to the router probabilities before the top-k
    (loaded from
    the checkpoint; zero at init)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        num_experts: int,
        top_k: int,
        shared_intermediate_size: int | None = None,
        norm_topk_prob: bool = False,
        expert_bias: bool = False,
        act: str = "silu",
        bias: bool = False,
    ):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok {top_k} must be in [1, num_experts={num_experts}]")
        self.num_experts, self.top_k, self.norm_topk_prob = num_experts, top_k, norm_topk_prob
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(
            SwiGLU(hidden_size, intermediate_size, act=act, bias=bias) for _ in range(num_experts)
        )
        if shared_intermediate_size:
            self.shared_expert = SwiGLU(hidden_size, shared_intermediate_size, act=act, bias=bias)
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [N, top_k] in x's dtype, expert ids [N, top_k]) for the tokens x [N, hidden]."""
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [N, E]
        if "expert_bias" in self._buffers:
            probs = probs + self.expert_bias.float()
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # [N, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [N, hidden]
        weights, experts = self.route(tokens)  # [N, k] each
        out = torch.zeros_like(tokens)
        # each expert runs once, on the tokens routed to it (slot = which of the token's k choices it is)
        for e in range(self.num_experts):
            token_idx, slot = torch.where(experts == e)
            if token_idx.numel() == 0:
                continue
            expert_out = self.experts[e](tokens[token_idx]) * weights[token_idx, slot, None]  # [n_e, hidden]
            out.index_add_(0, token_idx, expert_out.to(tokens.dtype))
        if "shared_expert" in self._modules:
            out = out + self.shared_expert(tokens)
        return out.reshape(shape)
