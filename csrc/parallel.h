// Run fn(i) for i in [0, n) on up to num_threads threads, pulling indices from a shared counter
// (images differ in size, so static splits would leave threads idle). An exception thrown for index
// i is kept; the one with the lowest index is returned to the caller after all threads have joined.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace tte {

struct TaskFailure {
  int64_t index = -1;  // -1: no failure
  std::exception_ptr error;
};

template <typename Fn>
TaskFailure parallel_for(int64_t n, int64_t num_threads, Fn&& fn) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      try {
        fn(i);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    }
  };
  const int64_t threads = std::max<int64_t>(1, std::min(num_threads, n));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  try {
    for (int64_t t = 1; t < threads; t++) pool.emplace_back(worker);
  } catch (...) {
    // Could not start more threads (resource limits): the threads we have, and this one, finish the work.
  }
  worker();
  for (auto& t : pool) t.join();
  for (int64_t i = 0; i < n; i++) {
    if (errors[static_cast<size_t>(i)]) return {i, errors[static_cast<size_t>(i)]};
  }
  return {};
}

}  // namespace tte
