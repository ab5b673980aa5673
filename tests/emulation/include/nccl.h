#pragma once
// The part of NCCL that cuda/communicator_nccl.cu uses, for the CPU device
// emulator (tests/emulation), so that the NCCL communicator runs in CI:
// its collectives queue on a stream like the real library's and move bytes
// when the emulator runs that stream's work. One emulated device per
// process, so ranks are processes: a communicator of more than one rank
// sends over MPI (a duplicate of MPI_COMM_WORLD, whose rank and size must
// be the communicator's), one of a single rank copies locally.
//
// Ranks run the same program, and the emulator runs queued work only at
// synchronising calls, in an order set by the calls alone, so every rank
// reaches its MPI calls in the same order and blocking ones cannot
// deadlock. A rank that never reaches a collective blocks its peers
// inside MPI, where the real library would spin on the GPU; what that
// spinning looks like to srgpt (queries answering not ready until the
// communicator is aborted, perhaps an asynchronous error) is injected
// instead, below. Only ncclUint8 is supported (srgpt moves bytes and sums
// them itself), and a group's operations must share one stream. A test
// double, used only here.
#include <cstddef>
#include <cstdint>

#include "cuda_runtime.h"

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
};
enum ncclDataType_t { ncclUint8 = 1 };
constexpr int NCCL_UNIQUE_ID_BYTES = 128;
struct ncclUniqueId {
  char internal[NCCL_UNIQUE_ID_BYTES];
};
struct ncclComm;
typedef ncclComm* ncclComm_t;

const char* ncclGetErrorString(ncclResult_t result);
// The message of the last failed call (per process, as a stand-in keeps it).
const char* ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error);
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream);

// The test double's own hooks, for tests of srgpt's NCCL watchdog (not
// NCCL's API).
namespace srgpt::emulation {
enum class NcclFault {
  none,
  peers_never_arrive,  // the collective never completes
  remote_error,        // and ncclCommGetAsyncError reports ncclRemoteError
};
// The collective queued `after` collectives from now, on any communicator
// of this process, gets `fault` once the device reaches it: it stays
// queued (the emulator's WorkNotReady) until its communicator is aborted,
// then completes without moving any bytes, as the real library's kernels
// return on an abort.
void inject_nccl_fault(NcclFault fault, uint64_t after = 0);
// Collectives this process has queued so far (a group's are one).
uint64_t nccl_collectives_queued();
}  // namespace srgpt::emulation
