// Chooses how NCCL is bootstrapped, or says why this build has no NCCL.
#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

#ifdef SRGPT_HAVE_NCCL
#include "communicator_nccl.cuh"
#endif

namespace srgpt {

std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, const CommunicatorOptions& options) {
#ifdef SRGPT_HAVE_NCCL
  if (backend.memory_on_host())
    fail("the NCCL communicator needs device memory, but the {} backend keeps its buffers in host memory: use the "
         "MPI communicator with the cpu backend",
         backend.name());
  // Under mpirun the unique id travels over MPI; a process started on its
  // own is a one-rank NCCL world.
  std::unique_ptr<Communicator> host =
      launched_under_mpi() ? make_mpi_host_communicator(options) : make_single_process_communicator(backend);
  return gpu::make_nccl_communicator_over(backend, std::move(host), options);
#elif defined(SRGPT_HAVE_CUDA)
  (void)backend;
  (void)options;
  fail("srgpt was built without NCCL (nccl.h and libnccl were not found when configuring): install NCCL, for "
       "example the libnccl-dev package, and reconfigure; or use the MPI communicator, which stages device buffers "
       "through host memory");
#else
  (void)backend;
  (void)options;
  fail("srgpt was built without the CUDA backend, so the NCCL communicator is unavailable (configure with "
       "-DSRGPT_CUDA=ON on a machine with nvcc and NCCL)");
#endif
}

}  // namespace srgpt
