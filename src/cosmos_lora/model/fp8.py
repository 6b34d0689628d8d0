"""FP8 matmuls for the frozen base linears of the DiT blocks (opt-in: `infer --fp8`, `model.fp8=true`).

The attention and MLP linears of the 28 blocks are about a third of a step at 121x704x1280; Hopper
runs FP8 (e4m3) matmuls at about twice the bf16 rate. Each frozen `nn.Linear` inside `attn1`, `attn2`
and `ff` becomes a `Float8Linear`: its weight stored once in e4m3 with one scale per output row, the
input quantized per row on the fly, and the product through `torch._scaled_mm` (rowwise scales).
LoRA factors, the adaLN modulation and the embedders stay as they are.

The base is frozen, so training only needs the gradient with respect to the input: it is computed
in the input's precision against the dequantized weight, so only the forward's rounding reaches the
LoRA gradients. What this costs in accuracy and gains in speed: benchmarks/RESULTS.md.
"""

import torch
from torch import nn

from cosmos_lora.errors import UserError

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
_BLOCK_PARTS = (".attn1.", ".attn2.", ".ff.")


def _rowwise_scale(x: torch.Tensor) -> torch.Tensor:
    """One float32 scale per row that maps the row's largest magnitude onto e4m3's largest value."""
    return (x.abs().amax(dim=-1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)


def _to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


class _Float8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_bits: torch.Tensor, weight_scale: torch.Tensor, out_dtype: torch.dtype):
        weight = weight_bits.view(torch.float8_e4m3fn)
        rows = x.reshape(-1, x.shape[-1])
        scale = _rowwise_scale(rows)
        quantized = _to_e4m3(rows, scale)
        # rowwise scaling takes bf16 output on every backend; a float32 run casts back afterwards
        out = torch._scaled_mm(quantized, weight.t(), scale_a=scale, scale_b=weight_scale.t(), out_dtype=torch.bfloat16)
        ctx.save_for_backward(weight_bits, weight_scale)
        ctx.input_dtype = x.dtype
        return out.to(out_dtype).reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight_bits, weight_scale = ctx.saved_tensors
        weight = weight_bits.view(torch.float8_e4m3fn).to(grad_out.dtype) * weight_scale.to(grad_out.dtype)
        grad_in = (grad_out.reshape(-1, grad_out.shape[-1]) @ weight).to(ctx.input_dtype)
        return grad_in.reshape(*grad_out.shape[:-1], weight.shape[1]), None, None, None


class Float8Linear(nn.Module):
    """A frozen linear layer whose matmul runs in FP8. The weight is kept as raw bytes (uint8) so that
    dtype casts of the model and buffer broadcasts (DDP) pass it through untouched; the scales run in float32."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        scale = _rowwise_scale(weight)
        self.register_buffer("weight_bits", _to_e4m3(weight, scale).view(torch.uint8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled(x.device.type)
        out_dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        out = _Float8Matmul.apply(x, self.weight_bits, self.weight_scale.float(), out_dtype)
        return out if self.bias is None else out + self.bias.to(out_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_fp8_device(device: torch.device) -> None:
    """FP8 tensor cores start with compute capability 8.9 (Ada, Hopper); CPUs emulate them (tests)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise UserError(
            f"FP8 matmuls need a GPU of compute capability 8.9 or newer (Ada, Hopper); {torch.cuda.get_device_name(device)} has none.",
            "leave FP8 off (drop --fp8 or model.fp8=true).",
        )


def _fits_fp8(linear: nn.Linear) -> bool:
    # FP8 tensor cores need both dimensions in multiples of 16
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def use_fp8_linears(net: nn.Module) -> int:
    """Swaps the base linears of the blocks' attention and MLP for `Float8Linear`, frozen from then on
    (in place, after LoRA is attached: peft's layers keep wrapping them); returns how many."""
    check_fp8_device(next(net.parameters()).device)
    swapped = 0
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}"
            if not isinstance(child, nn.Linear) or "lora_" in path:
                continue
            if any(part in f".{path}." for part in _BLOCK_PARTS) and _fits_fp8(child):
                setattr(module, child_name, Float8Linear(child))
                swapped += 1
    return swapped
