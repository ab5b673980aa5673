#pragma once
// Collectives between data-parallel ranks (DESIGN.md section 5). Buffers
// are backend memory of the backend the communicator was made for: host
// memory for the cpu backend, device memory for NCCL, and device memory
// staged through host for the MPI communicator used with the cuda backend.
//
// Reductions are deterministic and replica-consistent by construction:
// every element is summed by exactly one owner rank, in fp32 (fp64 for f64
// data), in rank order 0..N-1, rounded once to the element dtype, and the
// result is then copied to every rank. So all ranks hold bit-identical
// results, a rerun with the same world size reproduces them, and the MPI and
// NCCL communicators give the same bits for the same inputs.
//
// The plain collectives are synchronous: each returns when its result is
// in place (with a device backend it first waits for the backend's queued
// work). The start_* collectives let communication overlap the backend's
// work instead (docs/distributed.md): each is ordered after the work queued
// before it and returns a ticket; wait(ticket) orders the backend's later
// work after it, without a host wait where the transport allows (NCCL);
// wait_all() waits on the host for every started one. All ranks must call
// the same collectives, started or plain, in the same order. A collective
// that other ranks do not join within CommunicatorOptions::timeout_s throws
// an Error naming the rank and the call instead of hanging.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "srgpt/dtype.h"

namespace srgpt {

class Backend;

// Names a started collective (Communicator::start_*).
using CollectiveTicket = uint64_t;

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual std::string name() const = 0;

  // recv[count] = sum over ranks of send[rank * count .. (rank + 1) * count)
  // of the calling rank's chunk: rank r receives the reduced chunk r.
  // send holds size() * count elements. In place when
  // recv == send + rank() * count (elements).
  virtual void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) = 0;
  // recv[size() * count] = the concatenation of every rank's send[count].
  // In place when send == recv + rank() * count (elements).
  virtual void all_gather(const void* send, void* recv, size_t count, DType dtype) = 0;
  // In place; reduce-scatter + all-gather, so the result is identical on
  // every rank. The last count % size() elements, which do not split into
  // equal chunks, are gathered and summed in rank order by every rank: the
  // same bits as padding them would give.
  virtual void all_reduce_sum(void* data, size_t count, DType dtype) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Host scalars, for losses and norms: sum in rank order, same on all.
  // all_reduce_max returns NaN when any rank passes NaN.
  virtual double all_reduce_sum(double x) = 0;
  virtual double all_reduce_max(double x) = 0;

  // ---- Started collectives: the same operations and bits as the plain
  // ones above, run beside the backend's work. Until the collective is
  // waited for, its send buffer must not change and its receive buffer must
  // not be read or written. Started collectives run in start order, and
  // plain ones may be called between them as long as they touch other
  // buffers. Tickets count from 1.
  //
  // This base implementation defers a started collective until it is
  // waited for and then runs the plain one: a host-memory transport (MPI)
  // progresses only inside its calls, so nothing could run beside the
  // host's own computation anyway, and a caller that reads a result before
  // waiting for it sees stale data in every test. The NCCL communicator
  // overrides these with collectives queued on its own stream.
  virtual CollectiveTicket start_reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype);
  virtual CollectiveTicket start_all_gather(const void* send, void* recv, size_t count, DType dtype);
  virtual CollectiveTicket start_all_reduce_sum(void* data, size_t count, DType dtype);
  // The backend's work queued after this call sees the results of `ticket`
  // and of every collective started before it, and may reuse their buffers.
  virtual void wait(CollectiveTicket ticket);
  // Returns when `ticket` and every collective started before it have
  // finished, watching for failed or absent peers as the plain collectives
  // do; later ones may still run.
  virtual void wait_on_host(CollectiveTicket ticket);
  // Returns when every started collective has finished; the host may then
  // read their results.
  virtual void wait_all();

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}

  // Buffers of any element type, addressed in bytes.
  static const char* bytes_of(const void* p) { return static_cast<const char*>(p); }
  static char* bytes_of(void* p) { return static_cast<char*>(p); }

  // The part of all_reduce_sum every implementation shares: the first
  // count - count % size() elements, reduce-scattered and all-gathered in
  // place by the given operations (with reduce_scatter_sum's and
  // all_gather's arguments). Returns where the tail left to the
  // implementation begins.
  template <typename ReduceScatter, typename AllGather>
  size_t all_reduce_equal_chunks(void* data, size_t count, DType dtype, ReduceScatter&& reduce_scatter,
                                 AllGather&& gather) {
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t chunk = count / ranks;
    char* own_chunk = static_cast<char*>(data) + size_t(rank()) * chunk * element;
    if (chunk) {
      reduce_scatter(data, own_chunk, chunk, dtype);
      gather(own_chunk, data, chunk, dtype);
    }
    return chunk * ranks;
  }

 private:
  CollectiveTicket defer(std::function<void()> collective);

  int rank_, size_;
  std::deque<std::function<void()>> deferred_;  // started, not yet run; the oldest first
  CollectiveTicket started_ = 0, finished_ = 0;
};

struct CommunicatorOptions {
  // How long a collective may wait for the other ranks before it throws.
  // Generous by default: ranks legitimately wait for rank 0 to write a
  // checkpoint or run an evaluation.
  double timeout_s = 1800;
  // Large collectives are split into pieces whose staging buffers hold at
  // most this many bytes, so host/device scratch stays bounded and MPI's
  // int counts never overflow.
  size_t piece_bytes = size_t(64) << 20;
  // The defaults, with timeout_s from SRGPT_COMM_TIMEOUT_S (seconds, > 0)
  // when that is set; Error when it is not a positive number.
  static CommunicatorOptions from_environment();
};

// One process: every collective is a copy.
std::unique_ptr<Communicator> make_single_process_communicator(Backend& backend);

// True when this process was started by an MPI launcher (the environment
// of Open MPI, MPICH/PMI or Slurm's srun says so). Error when that
// environment is malformed, as launch_info_from_environment.
bool launched_under_mpi();
// Initialises MPI once per process (MPI_Init_thread; finalised at exit);
// the communicator uses MPI_COMM_WORLD. Collective: every rank calls it. Error without MPI support, or when
// MPI's world disagrees with the launcher's environment (for example srun
// without --mpi=pmix, which starts N one-rank worlds).
std::unique_ptr<Communicator> make_mpi_communicator(
    Backend& backend, const CommunicatorOptions& options = CommunicatorOptions::from_environment());
// The same over host memory whatever the backend: for host data such as
// configs and checkpoint metadata when the backend is on a GPU, and for
// bootstrapping NCCL.
std::unique_ptr<Communicator> make_mpi_host_communicator(
    const CommunicatorOptions& options = CommunicatorOptions::from_environment());
// NCCL over device buffers (cuda backend) on the current CUDA device;
// bootstrapped with MPI when launched under MPI, else one rank. Error
// without CUDA or NCCL support.
std::unique_ptr<Communicator> make_nccl_communicator(
    Backend& backend, const CommunicatorOptions& options = CommunicatorOptions::from_environment());

// Ends this process, and the whole MPI job when MPI is running, with exit
// code `code` after printing "srgpt: rank R: msg". Not collective: one rank
// that fails calls it and the launcher stops the others, so no rank is
// left waiting in a collective.
[[noreturn]] void abort_job(int code, const std::string& msg);

// Rank, world size and local rank from the MPI launcher's environment
// (Open MPI, MPICH/PMI, Slurm), read before any backend is made so each
// rank can pick its GPU; {0, 1, 0} when not launched by MPI. Error when the
// variables are not integers or are inconsistent (rank outside the world).
struct LaunchInfo {
  int rank = 0, size = 1, local_rank = 0;
  // Which launcher's variables were read ("Open MPI", "MPICH/PMI",
  // "Slurm"), or "none".
  std::string launcher = "none";
};
LaunchInfo launch_info_from_environment();

}  // namespace srgpt
