// bfloat16 linear layers of decode-sized batches, y = x W^T + b for x [M, K], on the AMX tiles of the
// CPUs that have them (Intel Sapphire Rapids and later; elsewhere tte_fast.runtime.cpu_linear keeps
// oneDNN). At a decode step's sizes oneDNN's prepacked inner product spends about 14 us a call outside
// the multiply (a primitive descriptor and a scratchpad made on every call) and reads the weights at
// a fraction of the memory's speed: a step's 121 matmuls of SmolLM2-135M took it 15-17 ms at M = 1-16
// and 23-25 ms at M = 64 on a 2-core Xeon VM, this kernel 10-12 ms and 19-20 ms.
//
// The weight is packed once into the tiles' layout: blocks of 16 output columns x 32 inputs, each the
// 16 x 32-element tile TDPBF16PS reads (input pairs interleaved: [N/16][K/32][16 pairs][16 columns][2]),
// a block's K tiles in a row so a task streams its columns in order. A task owns a run of 16-column
// blocks; for each it accumulates every 16-row tile of x (up to four, 64 rows a pass) over K in
// float32 tiles (exact products, float32 sums, as oneDNN's bfloat16 kernels), then adds the bias in
// float32 and rounds once to bfloat16 as torch does. Tasks run on torch's OpenMP team.
#include "amx_linear.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "avx512_math.h"
#include "openmp_team.h"

#define TTE_AMX __attribute__((target("avx512f,amx-tile,amx-bf16")))

// No fused multiply-adds where torch rounds between a product and a sum (silu16's exp, as decoder_ops).
#pragma GCC optimize("fp-contract=off")

namespace py = pybind11;

namespace tte {
namespace {

constexpr int64_t kBlockColumns = 16;                     // output columns of a weight block
constexpr int64_t kTileK = 32;                            // inputs of a tile (64 bytes of bfloat16)
constexpr int64_t kTileElements = kBlockColumns * kTileK;  // one packed weight tile
constexpr int64_t kPassRows = 64;                         // rows of x a pass holds in C tiles 0..3

bool cpu_has_amx() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return ((d >> 22) & 1) && ((d >> 24) & 1);  // AMX-BF16, AMX-TILE
}

// Linux hands out the tiles' state only to a process that asks (once; every thread may then use it).
bool os_grants_amx() {
  constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

std::atomic<bool> g_amx_enabled{true};  // switched off by the tests to run oneDNN on an AMX CPU

bool amx_enabled() {
  static const bool supported = cpu_has_amx() && os_grants_amx();
  return supported && g_amx_enabled;
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// C tiles 0..tiles-1 (the pass's row tiles; the last has `tail` rows), A tile 4 (16 rows of x) and 6
// (the last row tile's `tail` rows: TDPBF16PS needs A's rows to be C's), B tile 5 (a weight tile).
TTE_AMX void configure(int64_t tiles, int64_t tail) {
  TileConfig config;
  for (int t = 0; t < 8; t++) {
    config.rows[t] = 16;
    config.bytes_per_row[t] = 64;
  }
  config.rows[tiles - 1] = static_cast<uint8_t>(tail);
  config.rows[6] = static_cast<uint8_t>(tail);
  _tile_loadconfig(&config);
}

// C tile t of this block += x's row tile t (at `x`, rows `row_bytes` apart) times weight tile 5.
TTE_AMX inline void accumulate(int64_t tiles, const uint16_t* x, int64_t row_bytes) {
  const int64_t step = 16 * row_bytes / 2;  // elements between row tiles
  switch (tiles) {  // tile numbers are immediates
    case 1:
      _tile_loadd(6, x, row_bytes);
      _tile_dpbf16ps(0, 6, 5);
      break;
    case 2:
      _tile_loadd(4, x, row_bytes);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, x + step, row_bytes);
      _tile_dpbf16ps(1, 6, 5);
      break;
    case 3:
      _tile_loadd(4, x, row_bytes);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(4, x + step, row_bytes);
      _tile_dpbf16ps(1, 4, 5);
      _tile_loadd(6, x + 2 * step, row_bytes);
      _tile_dpbf16ps(2, 6, 5);
      break;
    default:
      _tile_loadd(4, x, row_bytes);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(4, x + step, row_bytes);
      _tile_dpbf16ps(1, 4, 5);
      _tile_loadd(4, x + 2 * step, row_bytes);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, x + 3 * step, row_bytes);
      _tile_dpbf16ps(3, 6, 5);
  }
}

TTE_AMX inline void store_tile(int64_t t, float* c) {
  switch (t) {
    case 0: _tile_stored(0, c, 64); break;
    case 1: _tile_stored(1, c, 64); break;
    case 2: _tile_stored(2, c, 64); break;
    default: _tile_stored(3, c, 64);
  }
}

struct LinearArgs {
  const uint16_t* x;       // [rows, k], contiguous
  const uint16_t* packed;  // pack_weight's layout of W [n, k]
  const uint16_t* bias;    // [n] or nullptr
  uint16_t* out;           // [rows, n] (gated: [rows, n / 2]), contiguous
  int64_t rows, n, k;
  // SwiGLU's silu(gate) * up straight from the tiles: W's 16-row blocks alternate gate and up (the
  // caller interleaves them), each pair gives 16 output columns.
  bool gated;
};

// C tiles 0..tiles-1 = this pass's row tiles of x times weight block `block`, over all of K.
TTE_AMX void multiply(const LinearArgs& a, const uint16_t* x, int64_t tiles, int64_t block) {
  const int64_t k_tiles = a.k / kTileK;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const uint16_t* w = a.packed + block * k_tiles * kTileElements;
  for (int64_t kt = 0; kt < k_tiles; kt++) {
    _tile_loadd(5, w + kt * kTileElements, 64);
    accumulate(tiles, x + kt * kTileK, a.k * 2);
  }
}

TTE_AMX inline __m512 block_bias(const LinearArgs& a, int64_t block) {
  return a.bias == nullptr ? _mm512_setzero_ps() : load16(a.bias + block * kBlockColumns);
}

// Output units [first, last) of every row of x: weight blocks, or (gated) pairs of gate / up blocks.
TTE_AMX void run_blocks(const LinearArgs& a, int64_t first, int64_t last) {
  alignas(64) float c[16 * 16];
  alignas(64) float gate[4][16 * 16];  // a gated pass's gate tiles, until their up tiles are done
  const int64_t width = a.gated ? a.n / 2 : a.n;  // of the output
  for (int64_t start = 0; start < a.rows; start += kPassRows) {
    const int64_t pass = std::min(kPassRows, a.rows - start);
    const int64_t tiles = (pass + 15) / 16, tail = pass - 16 * (tiles - 1);
    configure(tiles, tail);
    const uint16_t* x = a.x + start * a.k;
    for (int64_t unit = first; unit < last; unit++) {
      const int64_t block = a.gated ? 2 * unit + 1 : unit;  // gated: the up block (the gate's is first)
      if (a.gated) {
        multiply(a, x, tiles, block - 1);
        for (int64_t t = 0; t < tiles; t++) store_tile(t, gate[t]);
      }
      multiply(a, x, tiles, block);
      const __m512 bias = block_bias(a, block), gate_bias = a.gated ? block_bias(a, block - 1) : bias;
      for (int64_t t = 0; t < tiles; t++) {
        store_tile(t, c);
        uint16_t* out = a.out + (start + 16 * t) * width + unit * kBlockColumns;
        const int64_t rows = t == tiles - 1 ? tail : 16;
        for (int64_t r = 0; r < rows; r++) {
          __m512 y = _mm512_add_ps(_mm512_load_ps(c + 16 * r), bias);
          if (a.gated) {  // each value rounded where torch's linear and silu_mul round it
            const __m512 g = round_bf16x16(_mm512_add_ps(_mm512_load_ps(gate[t] + 16 * r), gate_bias));
            y = _mm512_mul_ps(round_bf16x16(silu16(g)), round_bf16x16(y));
          }
          store16(out + r * width, y);
        }
      }
    }
  }
  _tile_release();
}

void pack_weight(const uint16_t* weight, uint16_t* packed, int64_t n, int64_t k) {
  const int64_t k_tiles = k / kTileK;
  for (int64_t block = 0; block < n / kBlockColumns; block++)
    for (int64_t kt = 0; kt < k_tiles; kt++) {
      uint16_t* tile = packed + (block * k_tiles + kt) * kTileElements;
      for (int64_t pair = 0; pair < kTileK / 2; pair++)
        for (int64_t column = 0; column < kBlockColumns; column++)
          for (int64_t i = 0; i < 2; i++)
            tile[pair * 2 * kBlockColumns + column * 2 + i] =
                weight[(block * kBlockColumns + column) * k + kt * kTileK + pair * 2 + i];
    }
}

void check_sizes(const char* what, int64_t n, int64_t k) {
  if (n <= 0 || k <= 0 || n % kBlockColumns != 0 || k % kTileK != 0)
    throw std::invalid_argument(std::string(what) + ": out features must be a positive multiple of 16 and in " +
                                "features of 32, got " + std::to_string(n) + " x " + std::to_string(k));
}

}  // namespace

void register_amx_linear(py::module_& m) {
  m.def("amx_available", &amx_enabled,
        "Whether the AMX linear runs: the CPU has AMX-BF16 tiles, the OS granted them, not switched off.");
  m.def(
      "set_amx_enabled", [](bool enabled) { g_amx_enabled = enabled; }, py::arg("enabled"),
      "Switch the AMX linear on or off (off: tte_fast.runtime.cpu_linear uses oneDNN).");
  m.def(
      "pack_amx_weight",
      [](uintptr_t weight, uintptr_t packed, int64_t n, int64_t k) {
        check_sizes("pack_amx_weight", n, k);
        py::gil_scoped_release release;
        pack_weight(reinterpret_cast<const uint16_t*>(weight), reinterpret_cast<uint16_t*>(packed), n, k);
      },
      py::arg("weight"), py::arg("packed"), py::arg("n"), py::arg("k"),
      "Pack a contiguous bfloat16 weight [n, k] into the AMX linear's layout (n * k elements).");
  m.def(
      "amx_linear",
      [](uintptr_t x, uintptr_t packed, uintptr_t bias, uintptr_t out, int64_t rows, int64_t n, int64_t k,
         int64_t threads, bool gated) {
        if (!amx_enabled()) throw std::runtime_error("amx_linear: AMX tiles are not available here");
        check_sizes("amx_linear", n, k);
        if (rows <= 0) throw std::invalid_argument("amx_linear: rows must be positive, got " + std::to_string(rows));
        if (gated && n % (2 * kBlockColumns) != 0)
          throw std::invalid_argument("amx_linear: a gated weight needs a multiple of 32 rows, got " + std::to_string(n));
        const LinearArgs args{reinterpret_cast<const uint16_t*>(x), reinterpret_cast<const uint16_t*>(packed),
                              reinterpret_cast<const uint16_t*>(bias), reinterpret_cast<uint16_t*>(out), rows, n, k,
                              gated};
        const int64_t units = n / kBlockColumns / (gated ? 2 : 1);
        const int64_t tasks = std::max<int64_t>(1, std::min(threads, units));
        py::gil_scoped_release release;
        auto task = [&](int64_t t) { run_blocks(args, units * t / tasks, units * (t + 1) / tasks); };
        if (tasks == 1 || !run_on_openmp_team(tasks, tasks, task)) {
          for (int64_t t = 0; t < tasks; t++) task(t);
        }
      },
      py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("out"), py::arg("rows"), py::arg("n"), py::arg("k"),
      py::arg("threads") = 1, py::arg("gated") = false,
      "out [rows, n] = x [rows, k] W^T + bias (0: none) in bfloat16, W packed by pack_amx_weight (see "
      "tte_fast.runtime.cpu_linear); gated: out [rows, n / 2] = silu(gate) * up, W's 16-row blocks "
      "alternating gate and up.");
}

}  // namespace tte
