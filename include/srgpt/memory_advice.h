#pragma once
// What an out-of-memory error of either backend advises: the settings that
// make a run need less memory, by what they shrink.
namespace srgpt {

constexpr const char* kMemoryAdvice =
    "To need less memory: for srgpt eval, lower --batch or --seq-len; for training, set train.recompute = "
    "\"gelu\", train.layernorm_backward_from = \"output\" and train.lm_head_chunks = 8 (activations), lower "
    "batch.micro_batch (raising the gradient accumulation to keep batch.total_tokens), raise dist.zero_stage with "
    "more ranks (weights, gradients, optimizer state), or shorten batch.seq_len";

}  // namespace srgpt
