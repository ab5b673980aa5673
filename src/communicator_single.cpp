// The communicator of a run with one process: every collective is a copy
// (a sum over one rank is the value itself, so no rounding happens).
#include <cstdio>
#include <cstdlib>

#include "communicator_detail.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace srgpt {
namespace {

class SingleProcessCommunicator final : public Communicator {
 public:
  explicit SingleProcessCommunicator(Backend& backend) : Communicator(0, 1, 0), backend_(backend) {}

  std::string name() const override { return "single-process"; }

  void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    comm_detail::copy_backend_memory(backend_, recv, send, count * dtype_size(dtype));
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    comm_detail::copy_backend_memory(backend_, recv, send, count * dtype_size(dtype));
  }
  void all_reduce_sum(void*, size_t, DType) override {}
  void broadcast(void*, size_t, int root) override {
    if (root != 0) fail("broadcast from rank {}: a single-process run has only rank 0", root);
  }
  void barrier() override {}
  double all_reduce_sum(double x) override { return x; }
  double all_reduce_max(double x) override { return x; }
  [[noreturn]] void abort(int code, const std::string& msg) override {
    std::fprintf(stderr, "srgpt: rank 0: %s\n", msg.c_str());
    std::fflush(stderr);
    std::exit(code);
  }

 private:
  Backend& backend_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator(Backend& backend) {
  return std::make_unique<SingleProcessCommunicator>(backend);
}

}  // namespace srgpt
