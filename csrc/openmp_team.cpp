#include "openmp_team.h"

#include <dlfcn.h>

#include <atomic>

namespace tte {
namespace {

using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);

struct Job {
  const std::function<void(int64_t)>* fn;
  int64_t n;
  std::atomic<int64_t> next{0};
};

void work(void* data) {
  Job* job = static_cast<Job*>(data);
  for (int64_t i = job->next.fetch_add(1); i < job->n; i = job->next.fetch_add(1)) (*job->fn)(i);
}

ParallelFn find_parallel() {
  for (const char* name : {"libgomp.so.1", "libiomp5.so", "libomp.so"}) {
    void* handle = dlopen(name, RTLD_NOLOAD | RTLD_LAZY);  // only a runtime already in the process
    if (handle == nullptr) continue;
    if (void* symbol = dlsym(handle, "GOMP_parallel")) return reinterpret_cast<ParallelFn>(symbol);
  }
  return nullptr;
}

ParallelFn parallel() {
  static const ParallelFn found = find_parallel();
  return found;
}

}  // namespace

bool openmp_team_available() { return parallel() != nullptr; }

bool run_on_openmp_team(int64_t n, int64_t threads, const std::function<void(int64_t)>& fn) {
  const ParallelFn run = parallel();
  if (run == nullptr) return false;
  Job job{&fn, n};
  run(work, &job, static_cast<unsigned>(threads), 0);
  return true;
}

}  // namespace tte
