// The Communicator base: started collectives deferred until waited for
// (communicator.h says why); NCCL replaces them with queued ones.
#include "srgpt/communicator.h"

namespace srgpt {

CollectiveTicket Communicator::defer(std::function<void()> collective) {
  deferred_.push_back(std::move(collective));
  return ++started_;
}

CollectiveTicket Communicator::start_reduce_scatter_sum(const void* send, void* recv, size_t count, DType dtype) {
  return defer([=] { reduce_scatter_sum(send, recv, count, dtype); });
}

CollectiveTicket Communicator::start_all_gather(const void* send, void* recv, size_t count, DType dtype) {
  return defer([=] { all_gather(send, recv, count, dtype); });
}

CollectiveTicket Communicator::start_all_reduce_sum(void* data, size_t count, DType dtype) {
  return defer([=] { all_reduce_sum(data, count, dtype); });
}

void Communicator::wait(CollectiveTicket ticket) {
  while (finished_ < ticket && !deferred_.empty()) {
    // Counted as finished before it runs: a collective that throws is not
    // run again by a later wait.
    std::function<void()> collective = std::move(deferred_.front());
    deferred_.pop_front();
    ++finished_;
    collective();
  }
}

void Communicator::wait_on_host(CollectiveTicket ticket) { wait(ticket); }

void Communicator::wait_all() { wait(started_); }

}  // namespace srgpt
