#pragma once
// CUB's stable radix sort of (key, value) pairs, for the CPU device
// emulator (tests/emulation): the same contract (ascending by bits
// [begin_bit, end_bit) of the key, equal keys keep their input order, a
// size query when temp_storage is null) over host memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

namespace cub {

struct DeviceRadixSort {
  template <typename Key, typename Value>
  static cudaError_t SortPairs(void* temp_storage, size_t& temp_storage_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, int num_items, int begin_bit = 0,
                               int end_bit = int(sizeof(Key) * 8), cudaStream_t stream = nullptr) {
    if (!temp_storage) {
      temp_storage_bytes = 16;
      return cudaSuccess;
    }
    ::srgpt::emulation::enqueue(stream, [=] {
      const int bits = end_bit - begin_bit;
      const auto mask = bits >= int(sizeof(Key) * 8) ? ~Key(0) : Key((Key(1) << bits) - 1);
      auto digit = [&](int i) { return Key(keys_in[i] >> begin_bit) & mask; };
      std::vector<int> order(size_t(std::max(num_items, 0)));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return digit(a) < digit(b); });
      for (int i = 0; i < num_items; ++i) {
        keys_out[i] = keys_in[order[i]];
        values_out[i] = values_in[order[i]];
      }
    }, "cub::DeviceRadixSort::SortPairs");
    return cudaSuccess;
  }
};

}  // namespace cub
