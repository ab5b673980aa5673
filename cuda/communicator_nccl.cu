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
#include <thread>

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

const char* bytes_of(const void* p) { return static_cast<const char*>(p); }
char* bytes_of(void* p) { return static_cast<char*>(p); }

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
    if (comm_) ncclCommAbort(comm_);
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
    cudaGetDevice(&device);
    const char* detail = ncclGetLastError(nullptr);
    fail("rank {}: ncclCommInitRank on CUDA device {} failed: {} ({}). NCCL needs one GPU per rank: check that each "
         "rank selects its GPU by local rank and that there are as many GPUs as ranks per node; to share a GPU "
         "between ranks use the MPI communicator",
         host.rank(), device, ncclGetErrorString(result), detail ? detail : "");
  }
  if (result != ncclSuccess) throw_nccl_error(result, "ncclCommInitRank", host.rank(), nullptr);
  return comm;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Backend& backend, std::unique_ptr<Communicator> host, const CommunicatorOptions& options)
      : Communicator(host->rank(), host->size(), host->local_rank()),
        backend_(backend),
        host_(std::move(host)),
        options_(options),
        comm_(init_nccl_comm(*host_)) {}

  std::string name() const override { return "nccl"; }

  void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t piece_elements = std::min(count, std::max<size_t>(1, options_.piece_bytes / (ranks * element)));
    begin_collective();
    // Sized once, before anything is queued: growing later would free a
    // buffer that queued work still uses.
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
    finish("reduce_scatter_sum");
  }

  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    if (count == 0) return;
    begin_collective();
    check(ncclAllGather(send, recv, count * dtype_size(dtype), ncclUint8, comm_.get(), stream_.get()),
          "ncclAllGather");
    finish("all_gather");
  }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t head = all_reduce_equal_chunks(data, count, dtype);
    if (head == count) return;
    // The count % size() elements left over: every rank gathers all ranks'
    // tails and sums them in rank order, the same bits on every rank.
    const size_t length = count - head;
    char* tail = bytes_of(data) + head * element;
    begin_collective();
    char* gathered = scratch(ranks * length * element);
    check(ncclAllGather(tail, gathered, length * element, ncclUint8, comm_.get(), stream_.get()), "ncclAllGather");
    sum_in_rank_order(gathered, tail, length, dtype);
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
  [[noreturn]] void abort(int code, const std::string& msg) override {
    host_->abort(code, msg);
    std::_Exit(code);  // host_->abort does not return; this is for the compiler
  }

 private:
  void check(ncclResult_t result, const char* call) {
    if (result != ncclSuccess) throw_nccl_error(result, call, rank(), comm_.get());
  }

  // The backend's queued work produced the inputs; NCCL runs on its own
  // stream, so wait for that work first.
  void begin_collective() {
    if (!comm_.get())
      fail("rank {}: the NCCL communicator was shut down after an earlier collective failed; the job must end",
           rank());
    backend_.synchronize();
  }

  // Waits for the stream, watching NCCL's asynchronous errors and the
  // timeout: a peer that died or never joins makes NCCL kernels spin
  // forever, and aborting the NCCL communicator is what releases them.
  void finish(const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t state = cudaStreamQuery(stream_.get());
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady)
        throw_cuda_error(state, fmt::format("cudaStreamQuery waiting for NCCL {}", what).c_str(), __FILE__, __LINE__);
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

  // Device scratch from the backend (so it shows in its memory accounting),
  // grown only when no queued work can still be using it.
  char* scratch(size_t bytes) {
    if (bytes > scratch_.bytes()) scratch_ = DeviceBuffer(backend_, bytes, "NCCL communicator scratch");
    return scratch_.as<char>();
  }

  void sum_in_rank_order(const void* contributions, void* out, size_t length, DType dtype) {
    constexpr int kThreads = 256;
    const unsigned blocks = unsigned(std::min<size_t>((length + kThreads - 1) / kThreads, 8192));
    switch (dtype) {
      case DType::bf16:
        sum_in_rank_order_kernel<<<blocks, kThreads, 0, stream_.get()>>>(static_cast<const bf16*>(contributions),
                                                                          static_cast<bf16*>(out), length, size());
        break;
      case DType::f32:
        sum_in_rank_order_kernel<<<blocks, kThreads, 0, stream_.get()>>>(static_cast<const float*>(contributions),
                                                                          static_cast<float*>(out), length, size());
        break;
      case DType::f64:
        sum_in_rank_order_kernel<<<blocks, kThreads, 0, stream_.get()>>>(static_cast<const double*>(contributions),
                                                                          static_cast<double*>(out), length, size());
        break;
    }
    CUDA_CHECK_LAUNCH("sum_in_rank_order_kernel");
  }

  Backend& backend_;
  std::unique_ptr<Communicator> host_;
  CommunicatorOptions options_;
  StreamHandle stream_ = make_stream();
  OwnedNcclComm comm_;
  DeviceBuffer scratch_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator_over(Backend& backend, std::unique_ptr<Communicator> host,
                                                          const CommunicatorOptions& options) {
  return std::make_unique<NcclCommunicator>(backend, std::move(host), options);
}

}  // namespace srgpt::gpu
