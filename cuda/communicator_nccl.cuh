#pragma once
// The NCCL communicator's factory, called by make_nccl_communicator
// (src/communicator_nccl.cpp), which picks the host communicator. Plain C++:
// host code includes it.
#include <memory>

#include "srgpt/communicator.h"

namespace srgpt::gpu {

// NCCL over `backend`'s device memory on the current CUDA device. `host`
// (MPI over host memory, or the single-process communicator for one rank)
// broadcasts rank 0's NCCL unique id and then carries the barrier, the host
// scalar reductions and abort.
std::unique_ptr<Communicator> make_nccl_communicator_over(Backend& backend, std::unique_ptr<Communicator> host,
                                                          const CommunicatorOptions& options);

}  // namespace srgpt::gpu
