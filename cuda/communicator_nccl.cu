// The NCCL communicator: device buffers, its own CUDA stream, one NCCL
// communicator per rank bootstrapped by broadcasting rank 0's unique id over
// a host communicator (MPI).
//
// Determinism: NCCL's own reductions (ncclReduceScatter, ncclAllReduce) sum
// in an order set by the algorithm NCCL picks (ring or tree, the number of
// channels, the message size), and in bf16 they round after every partial
// sum. Their results are identical across ranks and repeat run to run only
// for a fixed world size and NCCL algorithm, and they differ from the MPI
// communicator. So srgpt does not use them: reduce_scatter_sum moves each
// chunk to its owner with grouped ncclSend/ncclRecv (an all-to-all, the same
// bytes on the wire per rank as a ring reduce-scatter) and the owner sums the
// size() contributions in rank order in fp32 (fp64 for f64) with one rounding
// to the dtype, on the GPU. bf16 gradients therefore travel as bf16 yet are
// accumulated in fp32, and the result is bit-identical to the MPI
// communicator's for the same inputs. all_gather and broadcast are exact data
// movement and use NCCL directly.
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "backend.cuh"
#include "communicator_nccl.cuh"
#include "cuda_check.cuh"
#include "stream.cuh"
#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#include "srgpt/error.h"
#include "srgpt/rank_order_sum.h"

namespace srgpt::gpu {
namespace {

template <typename T>
__global__ void sum_in_rank_order_kernel(const T* contributions, T* out, size_t length, int ranks) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < length; i += size_t(gridDim.x) * blockDim.x)
    sum_element_in_rank_order(contributions, out, length, size_t(ranks), i);
}

// Owns an ncclComm_t; abort() tears it down without waiting for peers (the
// way out of a collective that will never complete).
class OwnedNcclComm {
 public:
  explicit OwnedNcclComm(ncclComm_t comm) : comm_(comm) {}
  OwnedNcclComm(const OwnedNcclComm&) = delete;
  OwnedNcclComm& operator=(const OwnedNcclComm&) = delete;
  ~OwnedNcclComm() {
    if (!comm_) return;
    const ncclResult_t result = ncclCommDestroy(comm_);
    if (result != ncclSuccess)
      report_release_failure("NCCL", "ncclCommDestroy", __FILE__, __LINE__, ncclGetErrorString(result), "");
  }
  ncclComm_t get() const { return comm_; }
  void abort() noexcept {
    if (!comm_) return;
    const ncclResult_t result = ncclCommAbort(comm_);
    if (result != ncclSuccess)
      report_release_failure("NCCL", "ncclCommAbort", __FILE__, __LINE__, ncclGetErrorString(result), "");
    comm_ = nullptr;
  }

 private:
  ncclComm_t comm_;
};

[[noreturn]] void throw_nccl_error(ncclResult_t result, const char* call, int rank, ncclComm_t comm) {
  const char* detail = ncclGetLastError(comm);
  const bool has_detail = detail && *detail;
  fail("rank {}: {} failed: {}{}{}", rank, call, ncclGetErrorString(result), has_detail ? ": " : "",
       has_detail ? detail : "");
}

ncclComm_t init_nccl_comm(Communicator& host) {
  ncclUniqueId id{};
  if (host.rank() == 0) {
    ncclResult_t result = ncclGetUniqueId(&id);
    if (result != ncclSuccess) throw_nccl_error(result, "ncclGetUniqueId", host.rank(), nullptr);
  }
  host.broadcast(&id, sizeof id, 0);
  ncclComm_t comm = nullptr;
  ncclResult_t result = ncclCommInitRank(&comm, host.size(), id, host.rank());
  if (result == ncclInvalidUsage) {
    int device = -1;
    const std::string device_name =
        cudaGetDevice(&device) == cudaSuccess ? std::to_string(device) : "(unknown: cudaGetDevice failed)";
    const char* detail = ncclGetLastError(nullptr);
    fail("rank {}: ncclCommInitRank on CUDA device {} failed: {} ({}). NCCL needs one GPU per rank: check that each "
         "rank selects its GPU by local rank and that there are as many GPUs as ranks per node; to share a GPU "
         "between ranks use the MPI communicator",
         host.rank(), device_name, ncclGetErrorString(result), detail ? detail : "");
  }
  if (result != ncclSuccess) throw_nccl_error(result, "ncclCommInitRank", host.rank(), nullptr);
  return comm;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Backend& backend, std::unique_ptr<Communicator> host, const CommunicatorOptions& options)
      : Communicator(host->rank(), host->size()),
        backend_(backend),
        backend_stream_(stream_of(backend)),
        host_(std::move(host)),
        options_(options),
        comm_(init_nccl_comm(*host_)) {}

  std::string name() const override { return "nccl"; }

  void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    begin_collective();
    enqueue_reduce_scatter(send, recv, count, dtype);
    finish("reduce_scatter_sum");
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    begin_collective();
    enqueue_all_gather(send, recv, count, dtype);
    finish("all_gather");
  }
  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    begin_collective();
    enqueue_all_reduce(data, count, dtype);
    finish("all_reduce_sum");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= size()) fail("broadcast from rank {}: the world has ranks 0..{}", root, size() - 1);
    if (bytes == 0) return;
    begin_collective();
    check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_.get(), stream_.get()), "ncclBroadcast");
    finish("broadcast");
  }

  void barrier() override {
    backend_.synchronize();
    host_->barrier();
  }
  double all_reduce_sum(double x) override { return host_->all_reduce_sum(x); }
  double all_reduce_max(double x) override { return host_->all_reduce_max(x); }
  // Started collectives are queued on this communicator's stream behind an
  // event of the backend's stream, and waited for by the backend's stream
  // through an event of this one: the host never waits, so the backend's
  // next kernels run beside the transfer.
  CollectiveTicket start_reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    follow_backend();
    enqueue_reduce_scatter(send, recv, count, dtype);
    return record_ticket();
  }
  CollectiveTicket start_all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    follow_backend();
    enqueue_all_gather(send, recv, count, dtype);
    return record_ticket();
  }
  CollectiveTicket start_all_reduce_sum(void* data, size_t count, DType dtype) override {
    follow_backend();
    enqueue_all_reduce(data, count, dtype);
    return record_ticket();
  }
  void wait(CollectiveTicket ticket) override {
    if (ticket_done(ticket)) return;
    CUDA_CHECK(cudaStreamWaitEvent(backend_stream_, done_event(ticket), 0));
  }
  void wait_on_host(CollectiveTicket ticket) override {
    if (ticket_done(ticket)) return;
    cudaEvent_t done = done_event(ticket);
    watch("started collectives", "cudaEventQuery", [done] { return cudaEventQuery(done); });
  }
  void wait_all() override {
    if (issued_ > completed_) finish("started collectives");
  }

 private:
  static cudaStream_t stream_of(Backend& backend) {
    auto* cuda = dynamic_cast<CudaBackend*>(&backend);
    if (!cuda) fail("internal: the NCCL communicator needs the cuda backend, not {}", backend.name());
    return cuda->stream();
  }

  void check(ncclResult_t result, const char* call) {
    if (result != ncclSuccess) throw_nccl_error(result, call, rank(), comm_.get());
  }

  void require_alive() const {
    if (!comm_.get())
      fail("rank {}: the NCCL communicator was shut down after an earlier collective failed; the job must end",
           rank());
  }

  // The backend's queued work produced the inputs (and may still read
  // buffers the collective writes). A synchronous collective waits for it
  // on the host; a started one makes this stream wait for it.
  void begin_collective() {
    require_alive();
    backend_.synchronize();
  }
  void follow_backend() {
    require_alive();
    CUDA_CHECK(cudaEventRecord(backend_ready_.get(), backend_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(stream_.get(), backend_ready_.get(), 0));
  }

  // True when finish() has seen `ticket` complete; otherwise the
  // communicator must still be usable.
  bool ticket_done(CollectiveTicket ticket) const {
    if (ticket > issued_) fail("internal: wait for collective ticket {}, but only {} were started", ticket, issued_);
    if (ticket <= completed_) return true;
    require_alive();
    return false;
  }
  cudaEvent_t done_event(CollectiveTicket ticket) const { return done_[ticket - completed_ - 1].get(); }

  // An event after the work just queued; done_[i] belongs to ticket
  // completed_ + 1 + i, and the events are reused once finish() has seen
  // them all complete.
  CollectiveTicket record_ticket() {
    const size_t open = size_t(issued_ - completed_);
    if (open == done_.size()) done_.push_back(make_event());
    CUDA_CHECK(cudaEventRecord(done_[open].get(), stream_.get()));
    return ++issued_;
  }

  void enqueue_reduce_scatter(const void* send, void* recv, size_t count, DType dtype) {
    if (count == 0) return;
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t piece_elements = std::min(count, std::max<size_t>(1, options_.piece_bytes / (ranks * element)));
    char* incoming = scratch(ranks * piece_elements * element);
    for (size_t begin = 0; begin < count; begin += piece_elements) {
      const size_t length = std::min(piece_elements, count - begin), piece = length * element;
      check(ncclGroupStart(), "ncclGroupStart");
      for (int peer = 0; peer < size(); ++peer) {
        check(ncclSend(bytes_of(send) + (size_t(peer) * count + begin) * element, piece, ncclUint8, peer, comm_.get(),
                       stream_.get()),
              "ncclSend");
        check(ncclRecv(incoming + size_t(peer) * piece, piece, ncclUint8, peer, comm_.get(), stream_.get()),
              "ncclRecv");
      }
      check(ncclGroupEnd(), "ncclGroupEnd");
      sum_in_rank_order(incoming, bytes_of(recv) + begin * element, length, dtype);
    }
  }

  void enqueue_all_gather(const void* send, void* recv, size_t count, DType dtype) {
    if (count == 0) return;
    check(ncclAllGather(send, recv, count * dtype_size(dtype), ncclUint8, comm_.get(), stream_.get()),
          "ncclAllGather");
  }

  void enqueue_all_reduce(void* data, size_t count, DType dtype) {
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t head = all_reduce_equal_chunks(
        data, count, dtype,
        [this](const void* send, void* recv, size_t n, DType t) { enqueue_reduce_scatter(send, recv, n, t); },
        [this](const void* send, void* recv, size_t n, DType t) { enqueue_all_gather(send, recv, n, t); });
    if (head == count) return;
    // The count % size() elements left over: every rank gathers all ranks'
    // tails and sums them in rank order, the same bits on every rank.
    const size_t length = count - head;
    char* tail = bytes_of(data) + head * element;
    char* gathered = scratch(ranks * length * element);
    check(ncclAllGather(tail, gathered, length * element, ncclUint8, comm_.get(), stream_.get()), "ncclAllGather");
    sum_in_rank_order(gathered, tail, length, dtype);
  }

  // Waits for the stream, watching NCCL's asynchronous errors and the
  // timeout: a peer that died or never joins makes NCCL kernels spin
  // forever, and aborting the NCCL communicator is what releases them.
  void finish(const char* what) {
    watch(what, "cudaStreamQuery", [this] { return cudaStreamQuery(stream_.get()); });
    completed_ = issued_;
  }

  // Polls `query` (a CUDA query of this stream's work) until it succeeds.
  template <typename Query>
  void watch(const char* what, const char* query_name, Query query) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t state = query();
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady)
        throw_cuda_error(state, fmt::format("{} waiting for NCCL {}", query_name, what).c_str(), __FILE__, __LINE__);
      ncclResult_t async_error = ncclSuccess;
      check(ncclCommGetAsyncError(comm_.get(), &async_error), "ncclCommGetAsyncError");
      if (async_error != ncclSuccess) {
        const char* last_error = ncclGetLastError(comm_.get());
        const std::string detail = last_error ? last_error : "";
        comm_.abort();
        fail("rank {}: NCCL {} failed: {}{}{}", rank(), what, ncclGetErrorString(async_error),
             detail.empty() ? "" : ": ", detail);
      }
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      if (waited.count() > options_.timeout_s) {
        comm_.abort();
        fail("rank {}: NCCL {} did not complete within {} s: another rank failed, was killed or is stuck before "
             "reaching it (SRGPT_COMM_TIMEOUT_S sets this limit)",
             rank(), what, options_.timeout_s);
      }
      std::this_thread::yield();
    }
  }

  // Device scratch from the backend (so it shows in its memory accounting).
  // Queued collectives share it in stream order; it grows only once no
  // queued work can still be using it.
  char* scratch(size_t bytes) {
    if (bytes > scratch_.bytes()) {
      finish("collectives queued before the scratch grows");
      scratch_ = DeviceBuffer(backend_, bytes, "NCCL communicator scratch");
    }
    return scratch_.as<char>();
  }

  void sum_in_rank_order(const void* contributions, void* out, size_t length, DType dtype) {
    switch (dtype) {
      case DType::bf16: return sum_in_rank_order_of<bf16>(contributions, out, length);
      case DType::f32: return sum_in_rank_order_of<float>(contributions, out, length);
      case DType::f64: return sum_in_rank_order_of<double>(contributions, out, length);
    }
  }
  template <typename T>
  void sum_in_rank_order_of(const void* contributions, void* out, size_t length) {
    constexpr int kThreads = 256;
    const unsigned blocks = unsigned(std::min<size_t>((length + kThreads - 1) / kThreads, 8192));
    sum_in_rank_order_kernel<T><<<blocks, kThreads, 0, stream_.get()>>>(static_cast<const T*>(contributions),
                                                                      static_cast<T*>(out), length, size());
    CUDA_CHECK_LAUNCH("sum_in_rank_order_kernel");
  }

  Backend& backend_;
  cudaStream_t backend_stream_;
  std::unique_ptr<Communicator> host_;
  CommunicatorOptions options_;
  StreamHandle stream_ = make_stream();
  OwnedNcclComm comm_;
  DeviceBuffer scratch_;
  EventHandle backend_ready_ = make_event();
  std::vector<EventHandle> done_;
  CollectiveTicket issued_ = 0;     // tickets handed out
  CollectiveTicket completed_ = 0;  // tickets finish() has seen complete
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator_over(Backend& backend, std::unique_ptr<Communicator> host,
                                                          const CommunicatorOptions& options) {
  return std::make_unique<NcclCommunicator>(backend, std::move(host), options);
}

}  // namespace srgpt::gpu
