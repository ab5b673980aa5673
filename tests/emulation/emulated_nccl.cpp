// The emulated NCCL of include/nccl.h: collectives queue on the emulated
// stream and, when it runs them, move the bytes over MPI (more than one
// rank) or in memory (one rank).
#include "nccl.h"

#include <climits>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device_emulator.h"

#ifdef SRGPT_HAVE_MPI
#include <mpi.h>
#endif

struct ncclComm {
  int rank = 0;
  int size = 1;
#ifdef SRGPT_HAVE_MPI
  MPI_Comm mpi = MPI_COMM_NULL;
#endif
  bool aborted = false;
  ncclResult_t async_error = ncclSuccess;
};

namespace {

using srgpt::emulation::NcclFault;

// The communicators not yet destroyed or aborted, by their handles. Queued
// collectives hold a reference of their own: an abort releases the handle
// while a collective that will never complete still names it.
std::map<const ncclComm*, std::shared_ptr<ncclComm>>& live() {
  static std::map<const ncclComm*, std::shared_ptr<ncclComm>> all;
  return all;
}

struct InjectedFault {
  NcclFault fault = NcclFault::none;
  uint64_t at = 0;  // the index of the collective it strikes
};
InjectedFault& injected() {
  static InjectedFault f;
  return f;
}
uint64_t& queued() {
  static uint64_t count = 0;
  return count;
}

constexpr char kIdTag[] = "srgpt emulated NCCL";

std::string& last_error() {
  static std::string message;
  return message;
}

ncclResult_t failure(ncclResult_t result, std::string message) {
  last_error() = "emulated NCCL: " + std::move(message);
  return result;
}

// A handle that ncclCommInitRank made and no destroy or abort released.
ncclResult_t check_live(const char* call, ncclComm_t comm) {
  if (!comm) return failure(ncclInvalidArgument, std::string(call) + ": null communicator");
  if (!live().count(comm))
    return failure(ncclInvalidArgument, std::string(call) + ": a destroyed or aborted communicator");
  return ncclSuccess;
}

// A call's arguments that every collective checks: a live communicator,
// bytes, and a count MPI can take.
ncclResult_t check_call(const char* call, ncclComm_t comm, ncclDataType_t type, size_t count) {
  if (const ncclResult_t r = check_live(call, comm); r != ncclSuccess) return r;
  if (type != ncclUint8) return failure(ncclInvalidArgument, std::string(call) + ": only ncclUint8 is emulated");
  if (comm->size > 1 && count > size_t(INT_MAX))
    return failure(ncclInvalidArgument, std::string(call) + ": more than INT_MAX bytes in one MPI call");
  return ncclSuccess;
}

ncclResult_t check_rank(const char* call, ncclComm_t comm, int rank) {
  if (rank < 0 || rank >= comm->size)
    return failure(ncclInvalidArgument,
                   std::string(call) + ": rank " + std::to_string(rank) + " outside 0.." + std::to_string(comm->size - 1));
  return ncclSuccess;
}

#ifdef SRGPT_HAVE_MPI
void mpi_check(int result, const char* call) {
  if (result != MPI_SUCCESS) srgpt::emulation::fault(std::string("emulated NCCL: ") + call + " failed");
}
#endif

// Queues a collective's transfer on the stream: it runs with the
// communicator as the device reaches it, unless an abort came first (then
// its bytes are undefined, as on a GPU) or an injected fault keeps it from
// completing.
void queue_collective(const char* name, ncclComm_t comm, cudaStream_t stream,
                      std::function<void(const ncclComm&)> transfer) {
  const uint64_t index = queued()++;
  NcclFault fault = NcclFault::none;
  if (injected().fault != NcclFault::none && injected().at == index) {
    fault = injected().fault;
    injected() = {};
  }
  srgpt::emulation::enqueue(stream, [held = live().at(comm), fault, transfer = std::move(transfer)] {
    if (held->aborted) return;
    if (fault == NcclFault::remote_error) {
      held->async_error = ncclRemoteError;
      last_error() = "emulated NCCL: a peer of rank " + std::to_string(held->rank) + " failed (injected)";
    }
    if (fault != NcclFault::none)
      throw srgpt::emulation::WorkNotReady("an emulated NCCL collective whose peers never arrive (injected)");
    transfer(*held);
  }, name);
}

// ncclSend/ncclRecv between ncclGroupStart and ncclGroupEnd: posted
// together when the group ends.
struct PointToPoint {
  bool send;
  const void* send_buffer;
  void* recv_buffer;
  size_t bytes;
  int peer;
};
struct Group {
  int depth = 0;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  std::vector<PointToPoint> operations;
};
Group& group() {
  static Group g;
  return g;
}

// Runs on the stream: every receive and send of a group at once, as NCCL
// does (so a rank may send to and receive from all peers in one group).
void exchange(const ncclComm& comm, const std::vector<PointToPoint>& operations) {
  if (comm.size == 1) {
    // A rank's own sends and receives pair up in order.
    std::vector<const PointToPoint*> sends, receives;
    for (const PointToPoint& op : operations) (op.send ? sends : receives).push_back(&op);
    if (sends.size() != receives.size())
      srgpt::emulation::fault("emulated NCCL: a one-rank group sends and receives different numbers of messages");
    for (size_t i = 0; i < sends.size(); ++i) {
      if (sends[i]->bytes != receives[i]->bytes)
        srgpt::emulation::fault("emulated NCCL: a send and its receive differ in size");
      std::memmove(receives[i]->recv_buffer, sends[i]->send_buffer, sends[i]->bytes);
    }
    return;
  }
#ifdef SRGPT_HAVE_MPI
  std::vector<MPI_Request> requests(operations.size());
  for (size_t i = 0; i < operations.size(); ++i) {
    const PointToPoint& op = operations[i];
    if (op.send)
      mpi_check(MPI_Isend(op.send_buffer, int(op.bytes), MPI_BYTE, op.peer, 0, comm.mpi, &requests[i]), "MPI_Isend");
    else
      mpi_check(MPI_Irecv(op.recv_buffer, int(op.bytes), MPI_BYTE, op.peer, 0, comm.mpi, &requests[i]), "MPI_Irecv");
  }
  mpi_check(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
#endif
}

ncclResult_t add_point_to_point(const char* call, PointToPoint op, ncclDataType_t type, ncclComm_t comm,
                                cudaStream_t stream) {
  if (const ncclResult_t r = check_call(call, comm, type, op.bytes); r != ncclSuccess) return r;
  if (const ncclResult_t r = check_rank(call, comm, op.peer); r != ncclSuccess) return r;
  Group& g = group();
  const bool alone = g.depth == 0;
  if (alone) ncclGroupStart();
  if (g.operations.empty()) {
    g.comm = comm;
    g.stream = stream;
  } else if (g.comm != comm || g.stream != stream) {
    g.operations.clear();
    g.depth = 0;
    return failure(ncclInvalidUsage, std::string(call) + ": a group's operations must share a communicator and stream");
  }
  g.operations.push_back(op);
  return alone ? ncclGroupEnd() : ncclSuccess;
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
  }
  return "unknown result code";
}

const char* ncclGetLastError(ncclComm_t) { return last_error().c_str(); }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, kIdTag, sizeof kIdTag);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (std::memcmp(id.internal, kIdTag, sizeof kIdTag) != 0)
    return failure(ncclInvalidArgument, "ncclCommInitRank: the unique id is not one ncclGetUniqueId made");
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return failure(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                            std::to_string(nranks));
  auto made = std::make_shared<ncclComm>();
  made->rank = rank;
  made->size = nranks;
  if (nranks > 1) {
#ifdef SRGPT_HAVE_MPI
    int initialized = 0, world_rank = -1, world_size = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
      MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    }
    if (world_rank != rank || world_size != nranks)
      return failure(ncclInvalidUsage, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                           std::to_string(nranks) + " needs MPI's world to be the same ranks");
    if (MPI_Comm_dup(MPI_COMM_WORLD, &made->mpi) != MPI_SUCCESS)
      return failure(ncclSystemError, "ncclCommInitRank: MPI_Comm_dup failed");
#else
    return failure(ncclInvalidUsage, "ncclCommInitRank: more than one rank needs MPI, which this build lacks");
#endif
  }
  *comm = made.get();
  live()[made.get()] = std::move(made);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (const ncclResult_t r = check_live("ncclCommDestroy", comm); r != ncclSuccess) return r;
  // Queued collectives use the MPI duplicate: let them run first.
  cudaDeviceSynchronize();
#ifdef SRGPT_HAVE_MPI
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (comm->mpi != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm->mpi);
#endif
  live().erase(comm);
  return ncclSuccess;
}

// Without waiting for peers: queued collectives complete without moving
// bytes, and the MPI duplicate is left to MPI_Finalize.
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (const ncclResult_t r = check_live("ncclCommAbort", comm); r != ncclSuccess) return r;
  comm->aborted = true;
  live().erase(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (const ncclResult_t r = check_live("ncclCommGetAsyncError", comm); r != ncclSuccess) return r;
  *async_error = comm->async_error;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++group().depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  Group& g = group();
  if (g.depth == 0) return failure(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--g.depth > 0 || g.operations.empty()) return ncclSuccess;
  queue_collective("ncclSend/ncclRecv group", g.comm, g.stream,
                   [operations = std::move(g.operations)](const ncclComm& comm) { exchange(comm, operations); });
  g.operations.clear();
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return add_point_to_point("ncclSend", {true, send, nullptr, count, peer}, type, comm, stream);
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
  return add_point_to_point("ncclRecv", {false, nullptr, recv, count, peer}, type, comm, stream);
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  if (const ncclResult_t r = check_call("ncclAllGather", comm, type, count); r != ncclSuccess) return r;
  char* own = static_cast<char*>(recv) + size_t(comm->rank) * count;
  const bool in_place = send == own;
  const char* from = static_cast<const char*>(send);
  if (!in_place && from < static_cast<char*>(recv) + size_t(comm->size) * count && from + count > recv)
    return failure(ncclInvalidArgument, "ncclAllGather: the send buffer overlaps the receive buffer, but not in place");
  queue_collective("ncclAllGather", comm, stream, [=](const ncclComm& c) {
    if (c.size == 1) {
      if (!in_place) std::memcpy(own, send, count);
      return;
    }
#ifdef SRGPT_HAVE_MPI
    mpi_check(MPI_Allgather(in_place ? MPI_IN_PLACE : send, int(count), MPI_BYTE, recv, int(count), MPI_BYTE, c.mpi),
              "MPI_Allgather");
#endif
  });
  return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (const ncclResult_t r = check_call("ncclBroadcast", comm, type, count); r != ncclSuccess) return r;
  if (const ncclResult_t r = check_rank("ncclBroadcast", comm, root); r != ncclSuccess) return r;
  queue_collective("ncclBroadcast", comm, stream, [=](const ncclComm& c) {
    if (c.rank == root && send != recv) std::memmove(recv, send, count);
#ifdef SRGPT_HAVE_MPI
    if (c.size > 1) mpi_check(MPI_Bcast(recv, int(count), MPI_BYTE, root, c.mpi), "MPI_Bcast");
#endif
  });
  return ncclSuccess;
}

namespace srgpt::emulation {

void inject_nccl_fault(NcclFault fault, uint64_t after) { injected() = {fault, queued() + after}; }

uint64_t nccl_collectives_queued() { return queued(); }

}  // namespace srgpt::emulation
