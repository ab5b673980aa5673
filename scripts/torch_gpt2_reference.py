#!/usr/bin/env python3
"""Reference script for tests: NEEDS PYTHON WITH torch (and numpy), except --check-io.

An independent GPT-2 written here in plain PyTorch (no transformers): learned
token and position embeddings, pre-LayerNorm blocks (epsilon from config.json,
GPT-2's 1e-5), causal multi-head attention with an explicit softmax scaled by
1/sqrt(head size), tanh-GELU MLP 4 * n_embd wide, final LayerNorm, LM head
tied to the token embedding, mean cross-entropy over all B*T tokens. It runs
forward and backward on the CPU in float32 or float64 and writes the loss and
the gradient of every weight. tests/gpu/test_gpu_vs_torch.cpp compares srgpt's
cpu and cuda backends against it.

Files (the ones `srgpt export --format hf --dtype f32` writes):
  --weights  model.safetensors with Hugging Face GPT-2 names
             (transformer.wte.weight [vocab_size, n_embd], ..., the four block
             matrices in Conv1D orientation [in, out]); F32, F64 or BF16
  --config   config.json (n_embd, n_layer, n_head, vocab_size, n_positions)
  --tokens   raw little-endian int32: B*T input ids, then B*T target ids
  --out      safetensors with "loss" (F64, shape [1]) and, under the same
             names and shapes as --weights, the gradient of the mean loss
             with respect to each weight (F32)

Example:
  python3 scripts/torch_gpt2_reference.py --weights export/model.safetensors \
      --config export/config.json --tokens tokens.bin --batch 4 --seq 64 \
      --dtype float64 --out grads.safetensors

Self-checks:
  --self-test  (needs torch) gradients of a tiny random model against
               torch.autograd.gradcheck in float64, causality, the file
               round trip, and, when transformers is importable, logits
               against transformers.GPT2LMHeadModel with the same weights
  --check-io   (no torch needed) the hand-written safetensors reader and writer
"""
import argparse
import json
import math
import os
import struct
import sys
import tempfile

DTYPE_SIZES = {"F32": 4, "F64": 8, "BF16": 2}
GELU_TANH_NAMES = ("gelu_new", "gelu_pytorch_tanh")


# ---- safetensors, by hand: an 8-byte little-endian header length, a JSON
# header {name: {dtype, shape, data_offsets}}, then the data. Tensors are
# (dtype name, shape list, raw little-endian bytes) triples.

def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of every tensor in a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if 8 + header_length > len(data):
        raise ValueError(f"{path}: header length {header_length} runs past the end of the file")
    header = json.loads(data[8:8 + header_length])
    body = data[8 + header_length:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = entry["dtype"], list(entry["shape"])
        begin, end = entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{path}: tensor '{name}' has dtype {dtype}; supported: {sorted(DTYPE_SIZES)}")
        if end - begin != numel(shape) * DTYPE_SIZES[dtype] or not 0 <= begin <= end <= len(body):
            raise ValueError(f"{path}: tensor '{name}' has data offsets [{begin}, {end}] that do not fit "
                             f"shape {shape} of {dtype} in a {len(body)}-byte data section")
        tensors[name] = (dtype, shape, body[begin:end])
    return tensors


def write_safetensors(path, tensors):
    """Writes {name: (dtype, shape, bytes)} in name order."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        if len(raw) != numel(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(f"tensor '{name}': {len(raw)} bytes for shape {shape} of {dtype}")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


def check_io():
    """Round trip of the safetensors helpers with hand-packed values (no torch)."""
    values = [1.5, -2.25, 0.375, 7.0, 0.0, -1.0]  # exact in float32
    tensors = {
        "b.matrix": ("F32", [2, 3], struct.pack("<6f", *values)),
        "a.vector": ("F64", [2], struct.pack("<2d", math.pi, -math.e)),
        "c.half": ("BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x0000)),
        "d.empty": ("F32", [0, 4], b""),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        write_safetensors(path, tensors)
        with open(path, "rb") as f:
            raw = f.read()
        (header_length,) = struct.unpack("<Q", raw[:8])
        assert header_length % 8 == 0, "header not padded to 8 bytes"
        assert read_safetensors(path) == tensors, "round trip changed the tensors"
        assert struct.unpack("<6f", read_safetensors(path)["b.matrix"][2]) == tuple(values)
        # A file whose data section is cut short must be refused.
        with open(path, "wb") as f:
            f.write(raw[:-4])
        try:
            read_safetensors(path)
        except ValueError:
            pass
        else:
            raise AssertionError("a truncated file was accepted")
    print("check-io: safetensors reader and writer OK")


# ---- the model (torch imported only here, so --check-io runs without it)

def torch_dtype(name):
    import torch
    return {"float32": torch.float32, "float64": torch.float64}[name]


def tensor_from(entry, dtype):
    import torch
    kind, shape, raw = entry
    source = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16}[kind]
    if not raw:
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=source).reshape(shape).to(dtype)


def tensor_bytes(t, kind):
    """Little-endian bytes of a tensor as F32 or F64."""
    import torch
    dtype = {"F32": torch.float32, "F64": torch.float64}[kind]
    return t.detach().to(dtype).contiguous().cpu().numpy().astype("<" + {"F32": "f4", "F64": "f8"}[kind]).tobytes()


def read_config(path):
    with open(path) as f:
        c = json.load(f)
    config = {key: int(c[key]) for key in ("n_embd", "n_layer", "n_head", "vocab_size")}
    config["n_positions"] = int(c.get("n_positions", c.get("n_ctx", 0)))
    config["layer_norm_epsilon"] = float(c.get("layer_norm_epsilon", 1e-5))
    activation = c.get("activation_function", "gelu_new")
    if activation not in GELU_TANH_NAMES:
        raise ValueError(f"{path}: activation_function {activation!r}; this reference implements {GELU_TANH_NAMES}")
    if config["n_embd"] % config["n_head"]:
        raise ValueError(f"{path}: n_embd {config['n_embd']} is not divisible by n_head {config['n_head']}")
    return config


def gpt2_loss(params, inputs, targets, config):
    """Mean cross-entropy of GPT-2 with HF-named weights (Conv1D matrices [in, out])."""
    import torch
    import torch.nn.functional as F
    B, T = inputs.shape
    C, H, eps = config["n_embd"], config["n_head"], config["layer_norm_epsilon"]
    hd = C // H
    wte = params["transformer.wte.weight"]
    x = wte[inputs] + params["transformer.wpe.weight"][:T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in range(config["n_layer"]):
        def p(name):
            return params[f"transformer.h.{layer}.{name}"]
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), eps)
        qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in qkv.split(C, dim=2))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        attention = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), eps)
        h = F.gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), approximate="tanh")
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), params["transformer.ln_f.weight"], params["transformer.ln_f.bias"], eps)
    logits = x @ wte.t()
    return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T)), logits


def read_tokens(path, batch, seq, vocab_size):
    """Inputs and targets [B, T] from raw little-endian int32 (inputs, then targets)."""
    import torch
    count = 2 * batch * seq
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) != 4 * count:
        raise ValueError(f"{path}: {len(raw)} bytes; --batch {batch} --seq {seq} needs {4 * count} "
                         "(B*T int32 inputs, then B*T int32 targets)")
    ids = torch.tensor(struct.unpack(f"<{count}i", raw), dtype=torch.long)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"{path}: token ids must be in [0, {vocab_size}); found [{ids.min()}, {ids.max()}]")
    return ids[:batch * seq].reshape(batch, seq), ids[batch * seq:].reshape(batch, seq)


def reference(weights_path, config_path, tokens_path, batch, seq, dtype_name, out_path):
    """Runs forward and backward and writes the loss and gradients; returns the loss."""
    import torch
    config = read_config(config_path)
    if seq > config["n_positions"]:
        raise ValueError(f"--seq {seq} exceeds n_positions {config['n_positions']} of {config_path}")
    entries = read_safetensors(weights_path)
    params = {name: tensor_from(e, torch_dtype(dtype_name)).requires_grad_(True) for name, e in entries.items()}
    inputs, targets = read_tokens(tokens_path, batch, seq, config["vocab_size"])
    loss, _ = gpt2_loss(params, inputs, targets, config)
    loss.backward()
    out = {"loss": ("F64", [1], struct.pack("<d", loss.item()))}
    for name, t in params.items():
        out[name] = ("F32", entries[name][1], tensor_bytes(t.grad, "F32"))
    write_safetensors(out_path, out)
    return loss.item()


# ---- self-test (needs torch)

def random_params(config, dtype, generator):
    """HF-named random weights with signal on every path (not GPT-2's init)."""
    import torch
    C, V, P = config["n_embd"], config["vocab_size"], config["n_positions"]

    def normal(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(*shape, dtype=dtype, generator=generator)

    params = {"transformer.wte.weight": normal(V, C, std=0.5), "transformer.wpe.weight": normal(P, C, std=0.5),
              "transformer.ln_f.weight": normal(C, std=0.2, mean=1.0), "transformer.ln_f.bias": normal(C, std=0.2)}
    for layer in range(config["n_layer"]):
        shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
                  "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                  "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (C, 4 * C), "mlp.c_fc.bias": (4 * C,),
                  "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}
        for name, shape in shapes.items():
            if name.startswith("ln_") and name.endswith("weight"):
                t = normal(*shape, std=0.2, mean=1.0)
            elif name.endswith("weight"):
                t = normal(*shape, std=1.0 / math.sqrt(shape[0]))
            else:
                t = normal(*shape, std=0.2)
            params[f"transformer.h.{layer}.{name}"] = t
    return params


def compare_with_transformers(params, inputs, config):
    """Logits of transformers.GPT2LMHeadModel with the same weights, when importable."""
    import torch
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("self-test: transformers not importable, comparison with GPT2LMHeadModel skipped")
        return
    hf_config = GPT2Config(vocab_size=config["vocab_size"], n_positions=config["n_positions"],
                           n_embd=config["n_embd"], n_layer=config["n_layer"], n_head=config["n_head"],
                           activation_function="gelu_new", layer_norm_epsilon=config["layer_norm_epsilon"],
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(hf_config).to(torch.float64).eval()
    missing, unexpected = model.load_state_dict(params, strict=False)
    assert not unexpected, f"transformers does not know {unexpected}"
    assert all(k == "lm_head.weight" or k.endswith(".attn.bias") or k.endswith(".attn.masked_bias")
               for k in missing), f"weights missing for transformers: {missing}"
    model.tie_weights()
    with torch.no_grad():
        ours = gpt2_loss(params, inputs, inputs, config)[1]
        theirs = model(inputs).logits
    error = ((ours - theirs).norm() / theirs.norm()).item()
    print(f"self-test: logits vs transformers.GPT2LMHeadModel relative error {error:.2e}")
    assert error < 1e-10, f"logits differ from transformers by {error}"


def self_test():
    import torch
    check_io()
    config = {"n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 11, "n_positions": 6,
              "layer_norm_epsilon": 1e-5}
    generator = torch.Generator().manual_seed(1234)
    params = random_params(config, torch.float64, generator)
    B, T = 2, 5
    inputs = torch.randint(0, config["vocab_size"], (B, T), generator=generator)
    targets = torch.randint(0, config["vocab_size"], (B, T), generator=generator)

    names = sorted(params)

    def loss_of(*tensors):
        return gpt2_loss(dict(zip(names, tensors)), inputs, targets, config)[0]

    leaves = tuple(params[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss_of, leaves)
    print("self-test: gradients match finite differences (torch.autograd.gradcheck, float64)")

    # Causality: changing the last input token changes only the last position's logits.
    changed = inputs.clone()
    changed[:, -1] = (changed[:, -1] + 1) % config["vocab_size"]
    with torch.no_grad():
        before, after = (gpt2_loss(params, x, targets, config)[1] for x in (inputs, changed))
    assert torch.equal(before[:, :-1], after[:, :-1]), "a later token changed an earlier position"
    assert not torch.equal(before[:, -1], after[:, -1]), "the last token did not change its own position"
    print("self-test: attention is causal")

    compare_with_transformers(params, inputs, config)

    # The file path: what reference() writes is the loss and autograd's gradients.
    with tempfile.TemporaryDirectory() as tmp:
        weights, config_file = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "config.json")
        tokens, out = os.path.join(tmp, "tokens.bin"), os.path.join(tmp, "grads.safetensors")
        write_safetensors(weights, {n: ("F64", list(t.shape), tensor_bytes(t, "F64")) for n, t in params.items()})
        with open(config_file, "w") as f:
            json.dump(config, f)
        with open(tokens, "wb") as f:
            f.write(struct.pack(f"<{2 * B * T}i", *inputs.flatten().tolist(), *targets.flatten().tolist()))
        loss = reference(weights, config_file, tokens, B, T, "float64", out)
        expected = loss_of(*leaves)
        expected.backward()
        written = read_safetensors(out)
        assert set(written) == set(params) | {"loss"}, "output names differ from the input names"
        assert abs(struct.unpack("<d", written["loss"][2])[0] - expected.item()) < 1e-12
        for name, leaf in zip(names, leaves):
            dtype, shape, _ = written[name]
            assert dtype == "F32" and shape == list(params[name].shape), f"{name}: {dtype} {shape}"
            grad = tensor_from(written[name], torch.float64)
            assert torch.allclose(grad, leaf.grad, rtol=1e-6, atol=1e-9), f"{name}: written gradient differs"
    print("self-test: reference() writes the loss and the gradients under the input names")
    print("self-test: OK")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="model.safetensors in the Hugging Face GPT-2 layout")
    parser.add_argument("--config", help="config.json with n_embd, n_layer, n_head, vocab_size, n_positions")
    parser.add_argument("--tokens", help="raw little-endian int32: B*T inputs, then B*T targets")
    parser.add_argument("--batch", type=int, help="B")
    parser.add_argument("--seq", type=int, help="T")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--out", help="safetensors to write: loss and gradients")
    parser.add_argument("--self-test", action="store_true", help="check this script (needs torch)")
    parser.add_argument("--check-io", action="store_true", help="check the safetensors helpers (no torch)")
    args = parser.parse_args()
    if args.check_io:
        check_io()
        return 0
    if args.self_test:
        self_test()
        return 0
    required = ("weights", "config", "tokens", "batch", "seq", "out")
    missing = [f"--{name}" for name in required if getattr(args, name) is None]
    if missing:
        parser.error(f"missing {', '.join(missing)} (or pass --self-test / --check-io)")
    if args.batch < 1 or args.seq < 1:
        parser.error("--batch and --seq must be positive")
    loss = reference(args.weights, args.config, args.tokens, args.batch, args.seq, args.dtype, args.out)
    print(f"loss {loss:.10f} ({args.dtype}); gradients written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
