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
// inside MPI, where the real library would spin on the GPU: the
// communicator's timeout cannot be tested here. Only ncclUint8 is
// supported (srgpt moves bytes and sums them itself), and a group's
// operations must share one stream. A test double, used only here.
#include <cstddef>

#include "cuda_runtime.h"

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
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
