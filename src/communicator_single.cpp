// The communicator of a run with one process: every collective is a copy
// (a sum over one rank is the value itself, so no rounding happens).
#include <cstring>
#include <vector>

#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "srgpt/error.h"

namespace srgpt {
namespace {

// dst = src for `bytes` of backend memory (regions may not overlap). The
// Backend interface has no device-to-device copy, so device memory goes
// through a host bounce buffer.
void copy_backend_memory(Backend& backend, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (backend.memory_on_host()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  std::vector<char> bounce(bytes);
  backend.download(bounce.data(), src, bytes);
  backend.upload(dst, bounce.data(), bytes);
}

class SingleProcessCommunicator final : public Communicator {
 public:
  explicit SingleProcessCommunicator(Backend& backend) : Communicator(0, 1), backend_(backend) {}

  std::string name() const override { return "single-process"; }

  void reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) override {
    copy_backend_memory(backend_, recv, send, count * dtype_size(dtype));
  }
  void all_gather(const void* send, void* recv, size_t count, DType dtype) override {
    copy_backend_memory(backend_, recv, send, count * dtype_size(dtype));
  }
  void all_reduce_sum(void*, size_t, DType) override {}
  void broadcast(void*, size_t, int root) override {
    if (root != 0) fail("broadcast from rank {}: a single-process run has only rank 0", root);
  }
  void barrier() override {}
  double all_reduce_sum(double x) override { return x; }
  double all_reduce_max(double x) override { return x; }

 private:
  Backend& backend_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator(Backend& backend) {
  return std::make_unique<SingleProcessCommunicator>(backend);
}

}  // namespace srgpt
