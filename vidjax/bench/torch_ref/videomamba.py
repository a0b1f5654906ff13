"""Official VideoMamba (`VisionMamba`) in plain PyTorch: the reference for parity fixtures and --compare=torch.

mamba_ssm's CUDA/Triton kernels cannot run here, so this re-implements the official model on their reference
paths, keeping the official module structure and parameter names (the state dict is what the official code saves):

- `VisionMamba.forward_features` of OpenGVLab/VideoMamba videomamba/video_sm/models/videomamba.py line for line:
  Conv3d patch embedding, CLS token, `+ pos_embed` on every frame (CLS row included), CLS taken back as
  `x[:B, :1]`, `temporal_pos_embedding` added per frame on the patch tokens, `(b t n) -> b (t n)` token order,
  blocks, final fused add + RMSNorm (`norm_f`), head on the CLS token.
- `Block` with fused_add_norm=True and residual_in_fp32=True: `rms_norm_fn(hidden, weight, None,
  residual=residual, prenorm=True, residual_in_fp32=True, eps=1e-5)`, computed as mamba_ssm's Triton kernel does
  (sum and norm in float32, residual returned in float32, output in the input dtype) with the arithmetic of its
  `rms_norm_ref`.
- The fork's `Mamba` with bimamba=True and use_fast_path=True: `xz = in_proj.weight @ hidden`,
  `out = mamba_inner_fn_no_out_proj(xz, conv1d, x_proj, dt_proj, A, D, delta_bias=dt_proj.bias,
  delta_softplus=True)`, `out_b` the same on `xz.flip([-1])` with the `_b` parameters, then
  `F.linear(out + out_b.flip([-1]), out_proj.weight)`: a plain sum, no halving. `mamba_inner_fn_no_out_proj`
  is its forward pass with `causal_conv1d_fwd(..., silu)` replaced by F.conv1d(padding=d_conv-1) truncated to L
  plus SiLU (mamba_simple's own slow path), and `selective_scan_cuda.fwd` by mamba_ssm's `selective_scan_ref`
  (a step-by-step loop over the tokens).

Drop path and head dropout are not implemented (the official defaults for fine-tuning from scratch are 0), so
train and eval mode compute the same thing. Used by scripts/parity/videomamba.py (fixtures) and
vidjax.bench.reference (timings); torch is imported here at the top, so only those import this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's selective_scan_ref (real A, B and C variable and grouped (b, 1, n, l)), without last state."""
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B = B.float()
    C = C.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    B = repeat(B, "B G N L -> B (G H) N L", H=dim // B.shape[1])
    deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    C = repeat(C, "B G N L -> B (G H) N L", H=dim // C.shape[1])
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * rearrange(D, "d -> d 1")
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype=dtype_in)


def causal_conv1d_silu(x, weight, bias):
    """causal_conv1d_fwd(x, weight (d, w), bias, silu) == mamba_simple's slow path: conv1d(pad w-1)[..., :L]."""
    seqlen, width = x.shape[-1], weight.shape[-1]
    y = F.conv1d(x, rearrange(weight, "d w -> d 1 w"), bias, padding=width - 1, groups=x.shape[1])[..., :seqlen]
    return F.silu(y)


def mamba_inner_fn_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, D=None,
                               delta_bias=None, delta_softplus=True):
    """MambaInnerFnNoOutProj.forward with B and C input-dependent, on the reference conv and scan."""
    L = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1]
    conv1d_weight = rearrange(conv1d_weight, "d 1 w -> d w")
    x, z = xz.chunk(2, dim=1)
    conv1d_out = causal_conv1d_silu(x, conv1d_weight, conv1d_bias)
    x_dbl = F.linear(rearrange(conv1d_out, "b d l -> (b l) d"), x_proj_weight)
    delta = rearrange(delta_proj_weight @ x_dbl[:, :delta_rank].t(), "d (b l) -> b d l", l=L)
    B = rearrange(x_dbl[:, delta_rank:delta_rank + d_state], "(b l) dstate -> b 1 dstate l", l=L).contiguous()
    C = rearrange(x_dbl[:, -d_state:], "(b l) dstate -> b 1 dstate l", l=L).contiguous()
    return selective_scan_ref(conv1d_out, delta, A, B, C, D, z, delta_bias, delta_softplus)


def rms_norm_fn(x, weight, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False):
    """mamba_ssm's fused add + RMSNorm: float32 arithmetic, residual out in float32 (or its dtype), y in x.dtype."""
    dtype = x.dtype
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else dtype)
    x = x.float()
    if residual is not None:
        x = x + residual.float()
    residual_out = x.to(residual_dtype)
    rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + eps)
    out = (x * rstd * weight.float()).to(dtype)
    return (out, residual_out) if prenorm else out


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.register_parameter("bias", None)


class Mamba(nn.Module):
    """mamba_simple.Mamba of the VideoMamba fork, bimamba=True, fast path (parameters and forward)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, bias=conv_bias, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        A = repeat(torch.arange(1, self.d_state + 1, dtype=torch.float32), "n -> d n", d=self.d_inner).contiguous()
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_b_log = nn.Parameter(torch.log(A.clone()))
        self.conv1d_b = nn.Conv1d(self.d_inner, self.d_inner, bias=conv_bias, kernel_size=d_conv,
                                  groups=self.d_inner, padding=d_conv - 1)
        self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.D_b = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)

    def forward(self, hidden_states):
        _, seqlen, _ = hidden_states.shape
        xz = rearrange(self.in_proj.weight @ rearrange(hidden_states, "b l d -> d (b l)"), "d (b l) -> b d l",
                       l=seqlen)
        if self.in_proj.bias is not None:
            xz = xz + rearrange(self.in_proj.bias.to(dtype=xz.dtype), "d -> d 1")
        A = -torch.exp(self.A_log.float())
        A_b = -torch.exp(self.A_b_log.float())
        out = mamba_inner_fn_no_out_proj(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                         self.dt_proj.weight, A, self.D.float(),
                                         delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        out_b = mamba_inner_fn_no_out_proj(xz.flip([-1]), self.conv1d_b.weight, self.conv1d_b.bias,
                                           self.x_proj_b.weight, self.dt_proj_b.weight, A_b, self.D_b.float(),
                                           delta_bias=self.dt_proj_b.bias.float(), delta_softplus=True)
        return F.linear(rearrange(out + out_b.flip([-1]), "b d l -> b l d"), self.out_proj.weight,
                        self.out_proj.bias)


class Block(nn.Module):
    """videomamba.Block with fused_add_norm=True, residual_in_fp32=True, no drop path; `mamba` goes to `Mamba`."""

    def __init__(self, dim, norm_epsilon=1e-5, **mamba):
        super().__init__()
        self.residual_in_fp32 = True
        self.mixer = Mamba(dim, **mamba)
        self.norm = RMSNorm(dim, eps=norm_epsilon)

    def forward(self, hidden_states, residual=None):
        hidden_states, residual = rms_norm_fn(hidden_states, self.norm.weight, residual=residual, prenorm=True,
                                              residual_in_fp32=self.residual_in_fp32, eps=self.norm.eps)
        return self.mixer(hidden_states), residual


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, kernel_size=1, in_chans=3, embed_dim=768):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.tubelet_size = kernel_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(kernel_size, patch_size, patch_size),
                              stride=(kernel_size, patch_size, patch_size))

    def forward(self, x):
        return self.proj(x)


class VisionMamba(nn.Module):
    """videomamba.VisionMamba (rms_norm, fused_add_norm, residual_in_fp32, bimamba; no drop path or head dropout).

    d_state, d_conv, expand and dt_rank are the official `Mamba` defaults, which the official model does not
    expose; they are arguments here so that a model can be sized like any vidjax config.
    """

    def __init__(self, img_size=224, patch_size=16, depth=24, embed_dim=192, num_classes=1000, kernel_size=1,
                 num_frames=8, norm_epsilon=1e-5, d_state=16, d_conv=4, expand=2, dt_rank="auto"):
        super().__init__()
        self.residual_in_fp32 = True
        self.patch_embed = PatchEmbed(img_size, patch_size, kernel_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames // kernel_size, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        mamba = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
        self.layers = nn.ModuleList([Block(embed_dim, norm_epsilon, **mamba) for _ in range(depth)])
        self.norm_f = RMSNorm(embed_dim, eps=norm_epsilon)

    def forward_hidden(self, x):
        """forward_features up to (not including) its final `[:, 0, :]`: the whole normed sequence."""
        x = self.patch_embed(x)
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        x = x + self.pos_embed
        cls_tokens = x[:B, :1, :]
        x = x[:, 1:]
        x = rearrange(x, "(b t) n m -> (b n) t m", b=B, t=T)
        x = x + self.temporal_pos_embedding
        x = rearrange(x, "(b n) t m -> b (t n) m", b=B, t=T)
        x = torch.cat((cls_tokens, x), dim=1)
        return self.run_layers(x)

    def run_layers(self, hidden_states):
        """The Mamba blocks over the tokens, then the final RMSNorm (with the last residual added)."""
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        norm = self.final_norm()
        return rms_norm_fn(hidden_states, norm.weight, residual=residual, prenorm=False,
                           residual_in_fp32=self.residual_in_fp32, eps=norm.eps)

    def final_norm(self) -> RMSNorm:
        return self.norm_f

    def forward_features(self, x):
        return self.forward_hidden(x)[:, 0, :]

    def forward(self, x):
        return self.head(self.forward_features(x))


class ImageVisionMamba(VisionMamba):
    """image_sm's VisionMamba (the ImageNet models the video recipes start from): Conv2d patches, no time table."""

    def __init__(self, img_size=224, patch_size=16, depth=24, embed_dim=192, num_classes=1000):
        super().__init__(img_size, patch_size, depth, embed_dim, num_classes)
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        del self.temporal_pos_embedding

    def forward_hidden(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # image_sm PatchEmbed: (B, C, H, W) -> (B, HW, C)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        return self.run_layers(x + self.pos_embed)


class LinearDecoder(nn.Module):
    """videomamba_pretrain.Linear_Decoder's parameters: one alignment head (a Linear to the teacher's width, then a
    LayerNorm; its output is L2-normalised). Only its state dict is used here: the fixtures hold the encoder."""

    def __init__(self, output_dim=512, embed_dim=576):
        super().__init__()
        self.head = nn.Linear(embed_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim)


class MaskPretrainVisionMamba(VisionMamba):
    """videomamba_pretrain.VisionMamba, the masked (UMT-style) pre-training model, as its state dict stores it: no
    head, the final RMSNorm named `norm` (not `norm_f`), and one `clip_decoder` alignment head per aligned layer.
    `forward_hidden` is the encoder with every token visible (the final RMSNorm applied, as its fused final norm
    computes it); the alignment heads are kept only so that the state dict has the published layout."""

    def __init__(self, img_size=224, patch_size=16, depth=24, embed_dim=192, kernel_size=1, num_frames=8,
                 clip_output_dim=512, clip_return_layer=1, **kwargs):
        super().__init__(img_size, patch_size, depth, embed_dim, 0, kernel_size, num_frames, **kwargs)
        self.norm = self.norm_f
        del self.norm_f
        self.clip_decoder = nn.ModuleList([LinearDecoder(clip_output_dim, embed_dim)
                                           for _ in range(clip_return_layer)])

    def final_norm(self) -> RMSNorm:
        return self.norm
