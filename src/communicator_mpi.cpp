// The MPI communicator: host buffers (the cpu backend's transport), or
// device buffers staged through pinned host memory with the backend's
// download/upload (several ranks sharing one GPU, which NCCL refuses).
//
// Reductions never use MPI's own reduction algorithms, whose summation order
// depends on the implementation and the message size: chunks are exchanged
// with an all-to-all and each owner sums its chunk in rank order itself.
#include "srgpt/communicator.h"
#include "srgpt/error.h"
#include "srgpt/rank_order_sum.h"

#ifdef SRGPT_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef SRGPT_HAVE_CUDA
#include <cuda_runtime.h>

#include "cuda_check.cuh"
#endif

#include "srgpt/backend.h"
#include "srgpt/bf16.h"
#endif

namespace srgpt {

#ifdef SRGPT_HAVE_MPI
namespace {

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return fmt::format("MPI error code {}", code);
  return std::string(text, size_t(length));
}

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  // The error reporter names this rank already (see abort_job).
  fail("{} failed: {}", call, mpi_error_text(code));
}

// Releases run in destructors, which must not throw: a failing one is
// logged instead.
void report_mpi_release(int code, const char* call) noexcept {
  if (code == MPI_SUCCESS) return;
  try {
    std::fprintf(stderr, "srgpt: warning: %s failed: %s\n", call, mpi_error_text(code).c_str());
  } catch (...) {
    std::fprintf(stderr, "srgpt: warning: %s failed: MPI error code %d\n", call, code);
  }
}

// MPI_Init waits for every rank of the job to start MPI. In a mis-launched
// job a rank may exit without doing so (another subcommand, --help), and
// MPI_Init would then wait forever: while one is alive, the process ends
// with an error once the collective timeout has passed.
class InitWatchdog {
 public:
  InitWatchdog(double timeout_s, int rank) : thread_([this, timeout_s, rank] { watch(timeout_s, rank); }) {}
  ~InitWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_changed_.notify_one();
    thread_.join();
  }
  InitWatchdog(const InitWatchdog&) = delete;
  InitWatchdog& operator=(const InitWatchdog&) = delete;

 private:
  void watch(double timeout_s, int rank) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (done_changed_.wait_for(lock, std::chrono::duration<double>(timeout_s), [this] { return done_; })) return;
    std::fprintf(stderr,
                 "srgpt: rank %d: error: MPI_Init did not complete within %g s: another rank of the job exited or "
                 "never started MPI (every rank must run the same srgpt train command; SRGPT_COMM_TIMEOUT_S sets "
                 "this limit)\n",
                 rank, timeout_s);
    std::fflush(stderr);
    std::_Exit(1);
  }

  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members it uses exist
};

// MPI is initialised on first use and finalised at process exit, unless
// something else (a host program, a test runner) initialised it first, in
// which case that owner finalises it.
class MpiSession {
 public:
  static void ensure(double init_timeout_s) { static MpiSession session(init_timeout_s); }

 private:
  explicit MpiSession(double init_timeout_s) {
    int initialized = 0, finalized = 0;
    check_mpi(MPI_Initialized(&initialized), "MPI_Initialized");
    check_mpi(MPI_Finalized(&finalized), "MPI_Finalized");
    if (finalized) fail("MPI was already finalised in this process; it cannot be initialised again");
    if (!initialized) {
      int provided = 0;
      // Only the main thread calls MPI; OpenMP threads never do.
      {
        InitWatchdog watchdog(init_timeout_s, launch_info_from_environment().rank);
        check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      }
      owned_ = true;
      if (provided < MPI_THREAD_FUNNELED)
        fail("MPI_Init_thread provided thread level {}, srgpt needs at least MPI_THREAD_FUNNELED ({})", provided,
             int(MPI_THREAD_FUNNELED));
    }
    // Failures come back as return codes (turned into Errors naming the
    // call) instead of MPI's default of aborting without context.
    check_mpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  }
  ~MpiSession() {
    int finalized = 1;
    if (owned_ && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized)
      report_mpi_release(MPI_Finalize(), "MPI_Finalize");
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  bool owned_ = false;
};

class OwnedDatatype {
 public:
  OwnedDatatype() = default;
  OwnedDatatype(const OwnedDatatype&) = delete;
  OwnedDatatype& operator=(const OwnedDatatype&) = delete;
  ~OwnedDatatype() {
    if (type_ != MPI_DATATYPE_NULL) report_mpi_release(MPI_Type_free(&type_), "MPI_Type_free");
  }
  MPI_Datatype* out() { return &type_; }
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// `piece_bytes` contiguous bytes whose extent is `stride_bytes`: with count
// 1 per rank, an all-to-all or all-gather then addresses the same piece of
// every rank's chunk in a [size][chunk] buffer without packing it.
void make_strided_piece_type(OwnedDatatype& type, size_t piece_bytes, size_t stride_bytes) {
  OwnedDatatype contiguous;
  check_mpi(MPI_Type_contiguous(int(piece_bytes), MPI_BYTE, contiguous.out()), "MPI_Type_contiguous");
  check_mpi(MPI_Type_create_resized(contiguous.get(), 0, MPI_Aint(stride_bytes), type.out()),
            "MPI_Type_create_resized");
  check_mpi(MPI_Type_commit(type.out()), "MPI_Type_commit");
}

// A grow-only host buffer. When it stages device memory it is page-locked
// if CUDA can provide that, so the backend's downloads and uploads run at
// full bandwidth; otherwise (no GPU, pinned memory exhausted) it is
// ordinary memory, which only costs speed.
struct HostStagingRelease {
  bool pinned = false;
  void operator()(char* p) const noexcept {
#ifdef SRGPT_HAVE_CUDA
    if (pinned) {
      CUDA_RELEASE_CHECK(cudaFreeHost(p));
      return;
    }
#endif
    delete[] p;
  }
};

class HostStaging {
 public:
  explicit HostStaging(bool want_pinned) : want_pinned_(want_pinned) {}

  // At least `bytes`; the contents are not kept when it grows.
  char* get(size_t bytes) {
    if (bytes <= bytes_ && data_) return data_.get();
    data_.reset();
    bytes_ = 0;
#ifdef SRGPT_HAVE_CUDA
    void* pinned = nullptr;
    if (want_pinned_ && cudaMallocHost(&pinned, bytes) == cudaSuccess)
      data_ = Buffer(static_cast<char*>(pinned), HostStagingRelease{true});
    else if (want_pinned_)
      cudaGetLastError();  // clear the failed allocation's error state
#endif
    if (!data_) data_ = Buffer(new char[bytes], HostStagingRelease{false});
    bytes_ = bytes;
    return data_.get();
  }

 private:
  using Buffer = std::unique_ptr<char[], HostStagingRelease>;

  bool want_pinned_;
  Buffer data_;
  size_t bytes_ = 0;
};

// Below this many elements a parallel region costs more than the sum.
constexpr size_t kParallelSumElements = size_t(1) << 16;

template <typename T>
void sum_typed(const void* contributions, void* out, size_t length, size_t ranks) {
  const std::ptrdiff_t n = std::ptrdiff_t(length);
#pragma omp parallel for schedule(static) if (length >= kParallelSumElements)
  for (std::ptrdiff_t i = 0; i < n; ++i)
    sum_element_in_rank_order(static_cast<const T*>(contributions), static_cast<T*>(out), length, ranks, size_t(i));
}

void sum_in_rank_order(const void* contributions, void* out, size_t length, size_t ranks, DType dtype) {
  switch (dtype) {
    case DType::bf16: return sum_typed<bf16>(contributions, out, length, ranks);
    case DType::f32: return sum_typed<float>(contributions, out, length, ranks);
    case DType::f64: return sum_typed<double>(contributions, out, length, ranks);
  }
}

class MpiCommunicator final : public Communicator {
 public:
  // `device` is the backend whose memory the buffers are, or null for host
  // memory.
  MpiCommunicator(Backend* device, int rank, int size, const CommunicatorOptions& options)
      : Communicator(rank, size),
        device_(device && !device->memory_on_host() ? device : nullptr),
        options_(options),
        outgoing_(device_ != nullptr),
        incoming_(device_ != nullptr) {
    // Every piece of a rank's exchange must fit MPI's int byte counts.
    options_.piece_bytes = std::clamp<size_t>(options_.piece_bytes, 1, size_t(INT_MAX));
  }

  std::string name() const override { return device_ ? "mpi-host-staged" : "mpi"; }

  void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const size_t piece_elements = std::max<size_t>(1, options_.piece_bytes / (ranks * element));
    for (size_t begin = 0; begin < count; begin += piece_elements) {
      const size_t length = std::min(piece_elements, count - begin), piece = length * element;
      char* incoming = incoming_.get(ranks * piece);
      OwnedDatatype outgoing_type;
      MPI_Request request;
      if (device_) {
        char* outgoing = outgoing_.get(ranks * piece);
        for (size_t r = 0; r < ranks; ++r)
          device_->download(outgoing + r * piece, bytes_of(send) + (r * count + begin) * element, piece);
        check_mpi(MPI_Ialltoall(outgoing, int(piece), MPI_BYTE, incoming, int(piece), MPI_BYTE, MPI_COMM_WORLD,
                                &request),
                  "MPI_Ialltoall");
      } else {
        make_strided_piece_type(outgoing_type, piece, count * element);
        check_mpi(MPI_Ialltoall(bytes_of(send) + begin * element, 1, outgoing_type.get(), incoming, int(piece),
                                MPI_BYTE, MPI_COMM_WORLD, &request),
                  "MPI_Ialltoall");
      }
      complete(request, "MPI_Ialltoall in reduce_scatter_sum");
      char* destination = bytes_of(recv) + begin * element;
      char* reduced = device_ ? outgoing_.get(piece) : destination;
      sum_in_rank_order(incoming, reduced, length, ranks, dtype);
      if (device_) device_->upload(destination, reduced, piece);
    }
  }

  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    const size_t element = dtype_size(dtype), ranks = size_t(size());
    const bool in_place = send == bytes_of(recv) + size_t(rank()) * count * element;
    const size_t piece_elements = std::max<size_t>(1, options_.piece_bytes / (ranks * element));
    for (size_t begin = 0; begin < count; begin += piece_elements) {
      const size_t length = std::min(piece_elements, count - begin), piece = length * element;
      MPI_Request request;
      if (device_) {
        char* outgoing = outgoing_.get(piece);
        char* incoming = incoming_.get(ranks * piece);
        device_->download(outgoing, bytes_of(send) + begin * element, piece);
        check_mpi(MPI_Iallgather(outgoing, int(piece), MPI_BYTE, incoming, int(piece), MPI_BYTE, MPI_COMM_WORLD,
                                 &request),
                  "MPI_Iallgather");
        complete(request, "MPI_Iallgather in all_gather");
        for (size_t r = 0; r < ranks; ++r)
          device_->upload(bytes_of(recv) + (r * count + begin) * element, incoming + r * piece, piece);
      } else {
        OwnedDatatype incoming_type;
        make_strided_piece_type(incoming_type, piece, count * element);
        const void* source = in_place ? MPI_IN_PLACE : bytes_of(send) + begin * element;
        check_mpi(MPI_Iallgather(source, int(piece), MPI_BYTE, bytes_of(recv) + begin * element, 1,
                                 incoming_type.get(), MPI_COMM_WORLD, &request),
                  "MPI_Iallgather");
        complete(request, "MPI_Iallgather in all_gather");
      }
    }
  }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    const size_t head = all_reduce_equal_chunks(
        data, count, dtype,
        [this](const void* send, void* recv, size_t n, DType t) { reduce_scatter_sum(send, recv, n, t); },
        [this](const void* send, void* recv, size_t n, DType t) { all_gather(send, recv, n, t); });
    if (head < count) all_reduce_tail(bytes_of(data) + head * dtype_size(dtype), count - head, dtype);
  }

  void broadcast(void* data, size_t bytes, int root) override {
    if (root < 0 || root >= size()) fail("broadcast from rank {}: the world has ranks 0..{}", root, size() - 1);
    for (size_t begin = 0; begin < bytes; begin += options_.piece_bytes) {
      const size_t piece = std::min(options_.piece_bytes, bytes - begin);
      char* target = bytes_of(data) + begin;
      char* buffer = device_ ? outgoing_.get(piece) : target;
      if (device_ && rank() == root) device_->download(buffer, target, piece);
      MPI_Request request;
      check_mpi(MPI_Ibcast(buffer, int(piece), MPI_BYTE, root, MPI_COMM_WORLD, &request), "MPI_Ibcast");
      complete(request, "MPI_Ibcast in broadcast");
      if (device_ && rank() != root) device_->upload(target, buffer, piece);
    }
  }

  void barrier() override {
    MPI_Request request;
    check_mpi(MPI_Ibarrier(MPI_COMM_WORLD, &request), "MPI_Ibarrier");
    complete(request, "MPI_Ibarrier in barrier");
  }

  double all_reduce_sum(double x) override {
    std::vector<double> values = gather_scalar(x);
    double sum = values[0];
    for (size_t r = 1; r < values.size(); ++r) sum += values[r];
    return sum;
  }

  double all_reduce_max(double x) override {
    std::vector<double> values = gather_scalar(x);
    double largest = values[0];
    for (double v : values)
      if (std::isnan(v) || v > largest) largest = v;
    return largest;
  }

 private:
  // Polls instead of blocking so that a rank that never joins turns into an
  // Error here (and, through the caller's abort, the end of the job) rather
  // than a hang. The timed-out request stays pending: MPI cannot cancel a
  // collective (MPI_Cancel is for point-to-point requests), which is why
  // the job must end rather than go on reusing this communicator's buffers.
  void complete(MPI_Request& request, const char* what) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      int done = 0;
      check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      if (waited.count() > options_.timeout_s)
        fail("{} did not complete within {} s: another rank failed, was killed or is stuck before reaching it "
             "(SRGPT_COMM_TIMEOUT_S sets this limit)",
             what, options_.timeout_s);
      // Spin briefly for low latency, then back off so that ranks sharing
      // cores (oversubscribed test runs) leave them to the ranks working.
      if (waited.count() < 1e-3) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // The count % size() elements that do not split evenly: every rank
  // gathers all ranks' tails and sums them in rank order itself; the same
  // inputs in the same order give the same bits on every rank.
  void all_reduce_tail(char* data, size_t length, DType dtype) {
    const size_t piece = length * dtype_size(dtype), ranks = size_t(size());
    char* local = data;
    if (device_) {
      local = outgoing_.get(piece);
      device_->download(local, data, piece);
    }
    char* gathered = incoming_.get(ranks * piece);
    MPI_Request request;
    check_mpi(MPI_Iallgather(local, int(piece), MPI_BYTE, gathered, int(piece), MPI_BYTE, MPI_COMM_WORLD, &request),
              "MPI_Iallgather");
    complete(request, "MPI_Iallgather in all_reduce_sum");
    sum_in_rank_order(gathered, local, length, ranks, dtype);
    if (device_) device_->upload(data, local, piece);
  }

  std::vector<double> gather_scalar(double x) {
    std::vector<double> values(static_cast<size_t>(size()));
    MPI_Request request;
    check_mpi(MPI_Iallgather(&x, 1, MPI_DOUBLE, values.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD, &request),
              "MPI_Iallgather");
    complete(request, "MPI_Iallgather of a scalar");
    return values;
  }

  Backend* device_;
  CommunicatorOptions options_;
  HostStaging outgoing_, incoming_;
};

std::unique_ptr<Communicator> make_mpi(Backend* backend, const CommunicatorOptions& options) {
  MpiSession::ensure(options.timeout_s);
  int rank = 0, size = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  const LaunchInfo launch = launch_info_from_environment();
  if (launch.launcher != "none" && (launch.rank != rank || launch.size != size))
    fail("the {} launcher started this process as rank {} of {}, but MPI_COMM_WORLD has rank {} of {}: MPI did not "
         "join the launcher's job (under Slurm launch with srun --mpi=pmix, or with mpirun inside the allocation)",
         launch.launcher, launch.rank, launch.size, rank, size);
  return std::make_unique<MpiCommunicator>(backend, rank, size, options);
}

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(Backend& backend, const CommunicatorOptions& options) {
  return make_mpi(&backend, options);
}

std::unique_ptr<Communicator> make_mpi_host_communicator(const CommunicatorOptions& options) {
  return make_mpi(nullptr, options);
}

void abort_job(int code, const std::string& msg) {
  int initialized = 0, finalized = 0, rank = 0;
  // A failed query counts as MPI not running: the rank then comes from the
  // launcher, and MPI_Abort is not tried.
  const bool live = MPI_Initialized(&initialized) == MPI_SUCCESS && initialized &&
                    MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized;
  if (!live || MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS)
    rank = launched_under_mpi() ? launch_info_from_environment().rank : 0;
  std::fprintf(stderr, "srgpt: rank %d: %s\n", rank, msg.c_str());
  std::fflush(stderr);
  if (live) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

#else

namespace {
[[noreturn]] void fail_without_mpi() {
  fail("srgpt was built without MPI, so it cannot run as one rank of an MPI job; reconfigure with -DSRGPT_MPI=ON "
       "on a machine with an MPI library (for example apt install libopenmpi-dev)");
}
}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(Backend&, const CommunicatorOptions&) { fail_without_mpi(); }
std::unique_ptr<Communicator> make_mpi_host_communicator(const CommunicatorOptions&) { fail_without_mpi(); }

void abort_job(int code, const std::string& msg) {
  std::fprintf(stderr, "srgpt: %s\n", msg.c_str());
  std::fflush(stderr);
  std::_Exit(code);
}

#endif

}  // namespace srgpt
