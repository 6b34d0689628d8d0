"""FP8 matmuls for the frozen base linears (`model/fp8.py`): what they compute, what they swap, and
how far they move the network's output and the LoRA gradients. CPUs run `torch._scaled_mm` too."""

import copy

import pytest
import torch
from torch import nn

from cosmos_lora.distributed import Distributed
from cosmos_lora.errors import UserError
from cosmos_lora.model.dit import build_dit
from cosmos_lora.model.edm import LogVarHead, training_loss
from cosmos_lora.model.fp8 import Float8Linear, check_fp8_device, use_fp8_linears
from cosmos_lora.model.lora import add_lora, lora_parameters, spec_for
from cosmos_lora.config.build import build_experiment
from cosmos_lora.distributed import Launch
from cosmos_lora.train.launch import prepare_run_dir
from cosmos_lora.train.trainer import Trainer


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def dequantized(layer: Float8Linear) -> torch.Tensor:
    return layer.weight_bits.view(torch.float8_e4m3fn).float() * layer.weight_scale


def test_float8_linear_computes_the_linear_within_e4m3_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    fp8 = Float8Linear(linear)
    assert fp8.weight_bits.dtype == torch.uint8 and fp8.weight_scale.shape == (48, 1)
    assert relative_difference(dequantized(fp8), linear.weight.detach()) < 0.04  # e4m3: 3 mantissa bits
    out = fp8(x)
    assert out.shape == (3, 5, 48) and out.dtype == torch.float32
    assert 0 < relative_difference(out, linear(x).detach()) < 0.04
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp8(x).dtype == torch.bfloat16  # what nn.Linear gives under autocast


def test_the_input_gradient_goes_through_the_dequantized_weight():
    torch.manual_seed(0)
    fp8 = Float8Linear(nn.Linear(32, 16, bias=False))
    x = torch.randn(7, 32, requires_grad=True)
    grad_out = torch.randn(7, 16)
    fp8(x).backward(grad_out)
    torch.testing.assert_close(x.grad, grad_out @ dequantized(fp8))
    assert not any(t.requires_grad for t in fp8.buffers())


def tiny_net_with_lora() -> nn.Module:
    torch.manual_seed(0)
    net = build_dit("tiny")
    add_lora(net, spec_for(len(net.transformer_blocks), rank=4, scale=1.0), seed=0)
    for p in lora_parameters(net).values():
        p.data.normal_(0, 0.05)  # a trained-looking adapter: gradients reach both factors
    return net


def test_only_the_frozen_attention_and_mlp_linears_of_the_blocks_become_fp8():
    net = tiny_net_with_lora()
    lora_before = {k: v.clone() for k, v in lora_parameters(net).items()}
    expected = [name for name, m in net.named_modules()
                if isinstance(m, nn.Linear) and "transformer_blocks." in name and "lora_" not in name
                and any(part in name for part in (".attn1.", ".attn2.", ".ff."))]
    assert use_fp8_linears(net) == len(expected) == 20  # 2 blocks x (4 + 4 attention + 2 MLP)
    swapped = {name for name, m in net.named_modules() if isinstance(m, Float8Linear)}
    assert swapped == set(expected)
    assert "transformer_blocks.0.attn1.to_q.base_layer" in swapped  # peft keeps wrapping it
    assert isinstance(net.transformer_blocks[0].norm1.linear_1, nn.Linear)  # adaLN stays as it was
    lora_after = lora_parameters(net)
    assert lora_after.keys() == lora_before.keys()
    assert all(p.requires_grad and torch.equal(p, lora_before[k]) for k, p in lora_after.items())
    torch.nn.Module.to(net, dtype=torch.bfloat16)  # a dtype cast of the model leaves the FP8 bytes alone
    assert net.transformer_blocks[0].ff.net[2].weight_bits.dtype == torch.uint8


def test_a_network_without_lora_gets_the_same_swap():
    torch.manual_seed(0)
    net = build_dit("tiny")  # as infer --stages original loads it: nothing frozen, no LoRA
    assert use_fp8_linears(net) == 20
    assert not any(isinstance(m, nn.Linear) for name, m in net.named_modules() if ".attn1." in name)


def test_output_and_lora_gradients_stay_close_to_the_plain_network():
    plain = tiny_net_with_lora()
    fp8 = copy.deepcopy(plain)
    use_fp8_linears(fp8)
    logvar = LogVarHead()
    generator = torch.Generator().manual_seed(1)
    x0, epsilon = torch.randn(2, 16, 3, 8, 8, generator=generator), torch.randn(2, 16, 3, 8, 8, generator=generator)
    text = torch.randn(2, 12, plain.config.text_embed_dim, generator=generator)
    results = {}
    for name, net in (("plain", plain), ("fp8", fp8)):
        loss = training_loss(net, logvar, x0, torch.tensor([0.5, 2.0]), epsilon, crossattn_emb=text, fps=24.0).loss
        loss.backward()
        results[name] = loss.detach(), torch.cat([p.grad.flatten() for p in lora_parameters(net).values()])
    (plain_loss, plain_grads), (fp8_loss, fp8_grads) = results["plain"], results["fp8"]
    assert relative_difference(fp8_loss, plain_loss) < 0.02
    assert 0 < relative_difference(fp8_grads, plain_grads) < 0.1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(fp8).values())


def test_gpus_without_fp8_tensor_cores_are_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UserError) as raised:
        check_fp8_device(torch.device("cuda", 0))
    assert "A100" in raised.value.problem and "8.9" in raised.value.problem and "--fp8" in raised.value.fix
    check_fp8_device(torch.device("cpu"))  # CPUs emulate FP8 (the tests)


def test_the_trainer_runs_fp8_when_the_config_says_so(cli_env):
    config = build_experiment("tiny_lora", cli_env, "demo/shapes", {}, ["model.fp8=true"], "fp8", Launch(1))
    prepare_run_dir(config, resume=False)
    trainer = Trainer(config, Distributed(0, 0, 1, torch.device("cpu")))
    assert sum(isinstance(m, Float8Linear) for m in trainer.net.modules()) == 20
    before = {k: v.detach().clone() for k, v in trainer.params.items()}
    trainer._start_data()
    trainer.train_step()
    trainer.close()
    assert any(not torch.equal(p, before[k]) for k, p in trainer.params.items())
