"""Official VideoMAE / VideoMAE V2 in plain PyTorch: the reference for the official-checkpoint parity fixtures.

The official code (OpenGVLab/VideoMAEv2 `models/modeling_finetune.py` and `models/modeling_pretrain.py`; MCG-NJU/
VideoMAE's files are the same models without `cos_attn`) needs timm; this re-implements it without timm, line for
line and with the official module structure, so `state_dict()` has the official names:

- `Attention`: fused `qkv` Linear without bias, `q_bias` / `v_bias` parameters concatenated with a zero k bias,
  `q * head_dim ** -0.5`, softmax, `proj`. `CosAttention` (V2's `cos_attn=True`): cosine-similarity scores times
  `exp(clamp(scale, max=log 100))`, `scale` a per-head (heads, 1, 1) parameter.
- `Block`: pre-norm attention and MLP (exact GELU), optional layer scale `gamma_1` / `gamma_2` (`init_values > 0`).
- `PatchEmbed`: Conv3d with kernel = stride = (tubelet, p, p), `flatten(2).transpose(1, 2)`: tokens in (t, h, w)
  order. `get_sinusoid_encoding_table`: the fixed 1-D sin-cos table (not a parameter nor a buffer, so in no state
  dict).
- `VisionTransformer` (fine-tuning): `fc_norm(x.mean(1))` with `use_mean_pooling`, else `norm(x[:, 0])`; `head`.
- `PretrainVisionTransformer`: encoder on the visible tokens `x[~mask]`, final `norm`; `encoder_to_decoder`
  (no bias); decoder input `[x_vis + pos[~mask], mask_token + pos[decode_vis]]` with `decode_vis = mask` (V1:
  decode every masked token) or `~decode_mask` (V2 dual masking); the decoder returns `head(norm(...))` of the last
  `decode_vis.sum()` tokens.

`pretraining_loss` is `engine_for_pretraining.py`'s loss (normalised-pixel target at the decode-visible positions,
MSE masked to the tokens the encoder did not see, sum / sum), `tube_mask` and `running_cell_mask` the masks of
`dataset/masking_generator.py`. Drop path, dropout and gradient checkpointing are left out (inference only: eval
mode computes the same). Used by scripts/parity/videomae_v2.py; torch is imported at the top, so only that and
other torch users import this module.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """timm's trunc_normal_ as the official pre-training code calls it (bounds at +-std)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-std, b=std)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _qkv(module, x):
    B, N, _ = x.shape
    qkv_bias = None
    if module.q_bias is not None:
        qkv_bias = torch.cat((module.q_bias, torch.zeros_like(module.v_bias, requires_grad=False), module.v_bias))
    qkv = F.linear(input=x, weight=module.qkv.weight, bias=qkv_bias)
    qkv = qkv.reshape(B, N, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_head_dim=None):
        super().__init__()
        self.num_heads = num_heads
        head_dim = attn_head_dim or dim // num_heads
        all_head_dim = head_dim * self.num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.qkv = nn.Linear(dim, all_head_dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(all_head_dim))
            self.v_bias = nn.Parameter(torch.zeros(all_head_dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(all_head_dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = _qkv(self, x)
        q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class CosAttention(Attention):
    """The official CosAttention: the same projections, a learned per-head logit scale on cosine similarities."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_head_dim=None):
        super().__init__(dim, num_heads, qkv_bias, qk_scale, attn_head_dim)
        if qk_scale is None:  # DO NOT RENAME [self.scale] (the official comment: no weight decay by name)
            self.scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))), requires_grad=True)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = _qkv(self, x)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(self.scale, max=4.6052).exp()  # log(1 / 0.01)
        attn = (attn * logit_scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, init_values=None,
                 act_layer=nn.GELU, norm_layer=nn.LayerNorm, attn_head_dim=None, cos_attn=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        attention = CosAttention if cos_attn else Attention
        self.attn = attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                              attn_head_dim=attn_head_dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        if init_values is not None and init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim), requires_grad=True)
        else:
            self.gamma_1, self.gamma_2 = None, None

    def forward(self, x):
        if self.gamma_1 is None:
            x = x + self.attn(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
        else:
            x = x + self.gamma_1 * self.attn(self.norm1(x))
            x = x + self.gamma_2 * self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, num_frames=16, tubelet_size=2):
        super().__init__()
        img_size, patch_size = (img_size, img_size), (patch_size, patch_size)
        num_spatial_patches = (img_size[0] // patch_size[0]) * (img_size[1] // patch_size[1])
        self.img_size, self.tubelet_size, self.patch_size = img_size, tubelet_size, patch_size
        self.num_patches = num_spatial_patches * (num_frames // tubelet_size)
        self.proj = nn.Conv3d(in_channels=in_chans, out_channels=embed_dim,
                              kernel_size=(tubelet_size, patch_size[0], patch_size[1]),
                              stride=(tubelet_size, patch_size[0], patch_size[1]))

    def forward(self, x):
        _, _, _, H, W = x.shape
        assert H == self.img_size[0] and W == self.img_size[1], f"Input image size ({H}*{W}) doesn't match model."
        return self.proj(x).flatten(2).transpose(1, 2)  # b, c, l -> b, l, c


def get_sinusoid_encoding_table(n_position, d_hid):
    """Sinusoid position encoding table (1, n_position, d_hid), computed in float64 numpy as the official code."""
    def get_position_angle_vec(position):
        return [position / np.power(10000, 2 * (hid_j // 2) / d_hid) for hid_j in range(d_hid)]

    sinusoid_table = np.array([get_position_angle_vec(pos_i) for pos_i in range(n_position)])
    sinusoid_table[:, 0::2] = np.sin(sinusoid_table[:, 0::2])  # dim 2i
    sinusoid_table[:, 1::2] = np.cos(sinusoid_table[:, 1::2])  # dim 2i+1
    return torch.tensor(sinusoid_table, dtype=torch.float, requires_grad=False).unsqueeze(0)


def _init_weights(m, linear_init):
    if isinstance(m, nn.Linear):
        linear_init(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


def _blocks(dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, init_values, cos_attn):
    return nn.ModuleList([Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                qk_scale=qk_scale, norm_layer=norm_layer, init_values=init_values, cos_attn=cos_attn)
                          for _ in range(depth)])


def _layer_norm(eps=1e-6):
    return lambda dim: nn.LayerNorm(dim, eps=eps)


class VisionTransformer(nn.Module):
    """modeling_finetune.VisionTransformer (fixed sin-cos positions, the official default)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=None, init_values=0.0,
                 init_scale=0.0, all_frames=16, tubelet_size=2, use_mean_pooling=True, cos_attn=False):
        super().__init__()
        norm_layer = norm_layer or _layer_norm()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.tubelet_size = tubelet_size
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, num_frames=all_frames, tubelet_size=tubelet_size)
        self.pos_embed = get_sinusoid_encoding_table(self.patch_embed.num_patches, embed_dim)
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, init_values,
                              cos_attn)
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(lambda m: _init_weights(m, lambda w: nn.init.trunc_normal_(w, std=0.02)))
        if num_classes > 0:
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    def forward_features(self, x):
        B = x.size(0)
        x = self.patch_embed(x)
        x = x + self.pos_embed.expand(B, -1, -1).type_as(x).to(x.device).clone().detach()
        for blk in self.blocks:
            x = blk(x)
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        return self.norm(x[:, 0])

    def forward(self, x):
        return self.head(self.forward_features(x))


class PretrainVisionTransformerEncoder(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=0, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=None, init_values=None,
                 tubelet_size=2, all_frames=16, cos_attn=False):
        super().__init__()
        norm_layer = norm_layer or _layer_norm()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, num_frames=all_frames, tubelet_size=tubelet_size)
        self.pos_embed = get_sinusoid_encoding_table(self.patch_embed.num_patches, embed_dim)
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, init_values,
                              cos_attn)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(lambda m: _init_weights(m, nn.init.xavier_uniform_))

    def forward_features(self, x, mask):
        x = self.patch_embed(x)
        x = x + self.pos_embed.type_as(x).to(x.device).clone().detach()
        B, _, C = x.shape
        x_vis = x[~mask].reshape(B, -1, C)  # ~mask means visible
        for blk in self.blocks:
            x_vis = blk(x_vis)
        return self.norm(x_vis)

    def forward(self, x, mask):
        return self.head(self.forward_features(x, mask))


class PretrainVisionTransformerDecoder(nn.Module):
    def __init__(self, patch_size=16, num_classes=768, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 qkv_bias=False, qk_scale=None, norm_layer=None, init_values=None, tubelet_size=2, cos_attn=False):
        super().__init__()
        norm_layer = norm_layer or _layer_norm()
        self.num_classes = num_classes
        assert num_classes == 3 * tubelet_size * patch_size ** 2
        self.num_features = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_layer, init_values,
                              cos_attn)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(lambda m: _init_weights(m, nn.init.xavier_uniform_))

    def forward(self, x, return_token_num):
        for blk in self.blocks:
            x = blk(x)
        if return_token_num > 0:
            return self.head(self.norm(x[:, -return_token_num:]))  # only the mask tokens' predicted pixels
        return self.head(self.norm(x))


class PretrainVisionTransformer(nn.Module):
    """modeling_pretrain.PretrainVisionTransformer; `decoder_embed_dim` / `decoder_num_heads` are what the
    official builders set per size (S 192/3, B 384/6, L/H/g 512/8; V1's H 640/8)."""

    def __init__(self, img_size=224, patch_size=16, encoder_in_chans=3, encoder_num_classes=0, encoder_embed_dim=768,
                 encoder_depth=12, encoder_num_heads=12, decoder_num_classes=1536, decoder_embed_dim=512,
                 decoder_depth=8, decoder_num_heads=8, mlp_ratio=4.0, qkv_bias=False, qk_scale=None,
                 norm_layer=None, init_values=0.0, tubelet_size=2, all_frames=16, cos_attn=False):
        super().__init__()
        norm_layer = norm_layer or _layer_norm()
        self.encoder = PretrainVisionTransformerEncoder(
            img_size=img_size, patch_size=patch_size, in_chans=encoder_in_chans, num_classes=encoder_num_classes,
            embed_dim=encoder_embed_dim, depth=encoder_depth, num_heads=encoder_num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, qk_scale=qk_scale, norm_layer=norm_layer, init_values=init_values,
            tubelet_size=tubelet_size, all_frames=all_frames, cos_attn=cos_attn)
        self.decoder = PretrainVisionTransformerDecoder(
            patch_size=patch_size, num_classes=decoder_num_classes, embed_dim=decoder_embed_dim, depth=decoder_depth,
            num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
            norm_layer=norm_layer, init_values=init_values, tubelet_size=tubelet_size, cos_attn=cos_attn)
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = get_sinusoid_encoding_table(self.encoder.patch_embed.num_patches, decoder_embed_dim)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x, mask, decode_mask=None):
        decode_vis = mask if decode_mask is None else ~decode_mask
        x_vis = self.encoder(x, mask)  # [B, N_vis, C_e]
        x_vis = self.encoder_to_decoder(x_vis)  # [B, N_vis, C_d]
        B, _, C = x_vis.shape
        # The visible tokens are not unshuffled: the position table is shuffled to match.
        expand_pos_embed = self.pos_embed.expand(B, -1, -1).type_as(x).to(x.device).clone().detach()
        pos_emd_vis = expand_pos_embed[~mask].reshape(B, -1, C)
        pos_emd_mask = expand_pos_embed[decode_vis].reshape(B, -1, C)
        x_full = torch.cat([x_vis + pos_emd_vis, self.mask_token + pos_emd_mask], dim=1)  # [B, N, C_d]
        return self.decoder(x_full, pos_emd_mask.shape[1])


def pretraining_labels(images, bool_masked_pos, decode_masked_pos, patch_size, tubelet_size=2,
                       normlize_target=True):
    """engine_for_pretraining.py's labels: un-normalised (ImageNet) pixels, per-patch normalised (unbiased std
    + 1e-6), at the decode-visible positions `~decode_masked_pos`. `images` (B, C, T, H, W), normalised."""
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN)[None, :, None, None, None]
    std = torch.as_tensor(IMAGENET_DEFAULT_STD)[None, :, None, None, None]
    unnorm_images = images * std + mean  # in [0, 1]
    B, C, T, H, W = unnorm_images.shape
    t, h, w = T // tubelet_size, H // patch_size, W // patch_size
    # 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c'
    patches = unnorm_images.reshape(B, C, t, tubelet_size, h, patch_size, w, patch_size)
    patches = patches.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, t * h * w, -1, C)
    if normlize_target:
        patches = (patches - patches.mean(dim=-2, keepdim=True)) / (
            patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    images_patch = patches.reshape(B, t * h * w, -1)  # 'b n p c -> b n (p c)'
    _, _, D = images_patch.shape
    return images_patch[~decode_masked_pos].reshape(B, -1, D)


def pretraining_loss(outputs, labels, bool_masked_pos, decode_masked_pos):
    """engine_for_pretraining.py's loss: per-token MSE, averaged over the decoded tokens the encoder masked."""
    B = outputs.shape[0]
    loss = ((outputs - labels) ** 2).mean(dim=-1)
    cal_loss_mask = bool_masked_pos[~decode_masked_pos].reshape(B, -1)
    return (loss * cal_loss_mask).sum() / cal_loss_mask.sum()


def tube_mask(input_size, mask_ratio, rng: np.random.Generator) -> np.ndarray:
    """TubeMaskingGenerator: one random spatial mask of int(ratio * h * w) patches, repeated over t. (t*h*w,)"""
    frames, height, width = input_size
    per_frame = height * width
    num_masks = int(mask_ratio * per_frame)
    mask_per_frame = np.hstack([np.zeros(per_frame - num_masks), np.ones(num_masks)])
    rng.shuffle(mask_per_frame)
    return np.tile(mask_per_frame, (frames, 1)).flatten()


def running_cell_mask(input_size, mask_ratio, rng: np.random.Generator) -> np.ndarray:
    """RunningCellMaskingGenerator: a 2x2 cell with int(4 * ratio) masked, shifted one step per time index and
    tiled over (h, w); one of the cell's starting offsets at random. (t*h*w,) float, 1 = decoder-masked."""
    frames, height, width = input_size
    num_masks_per_cell = int(4 * mask_ratio)
    assert 0 < num_masks_per_cell < 4
    size = 4
    queue = np.hstack([np.ones(num_masks_per_cell), np.zeros(size - num_masks_per_cell)])
    all_masks = []
    for ptr_pos in range(size):
        ptr, mask = ptr_pos, []
        for _ in range(frames):
            ptr += 1  # run_cell
            unit = queue[(np.arange(size) + ptr) % size].reshape(2, 2)
            mask.append(np.tile(unit, [height // 2, width // 2]).flatten())
        all_masks.append(np.stack(mask, axis=0))
    return np.copy(np.stack(all_masks, axis=0)[rng.integers(size)]).flatten()

