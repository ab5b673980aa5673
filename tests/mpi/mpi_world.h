#pragma once
// For tests that ctest runs under mpiexec: the MPI world over host memory
// for the tests' own agreement checks, and a directory every rank shares.
#include <cstdint>
#include <memory>
#include <string>

#include "srgpt/backend.h"
#include "srgpt/communicator.h"
#include "unit/test_util.h"

namespace srgpt_test {

inline srgpt::Communicator& world() {
  static auto backend = srgpt::make_cpu_backend(srgpt::DType::f32);
  static auto comm = srgpt::make_mpi_communicator(*backend);
  return *comm;
}

inline bool same_on_all_ranks(double x) { return world().all_reduce_max(x) == -world().all_reduce_max(-x); }

// A directory every rank agrees on (rank 0 makes it), removed by rank 0.
class SharedDir {
 public:
  explicit SharedDir(const std::string& tag) {
    std::string p;
    if (world().rank() == 0) {
      dir_ = std::make_unique<TempDir>(tag);
      p = dir_->str();
    }
    uint64_t n = p.size();
    world().broadcast(&n, sizeof n, 0);
    p.resize(n);
    world().broadcast(p.data(), n, 0);
    path_ = p;
  }
  ~SharedDir() { world().barrier(); }
  const fs::path& path() const { return path_; }

 private:
  std::unique_ptr<TempDir> dir_;
  fs::path path_;
};

}  // namespace srgpt_test
