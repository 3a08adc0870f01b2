// Running a loop on the OpenMP team of the runtime torch already loaded (libgomp.so.1, or the
// LLVM / Intel runtimes' GOMP entry points), found at run time: its workers spin between torch's
// ops on the other cores, so threads of our own would fight them for those cores (a decode step ran
// 1.2-1.3x slower with a second thread of ours), while work handed to that team runs beside them.
#pragma once
#include <cstdint>
#include <functional>

namespace tte {

// Whether a loaded OpenMP runtime with GOMP_parallel was found (looked up once).
bool openmp_team_available();

// fn(i) for i in [0, n) on up to `threads` threads of that team, indices pulled from a shared
// counter; returns false (nothing run) where no runtime was found. fn must not throw.
bool run_on_openmp_team(int64_t n, int64_t threads, const std::function<void(int64_t)>& fn);

}  // namespace tte
