// CPU twin of the CUDA execution model, so the kernels' own source runs (and is tested, also
// under ASan/UBSan) on a machine without a GPU.
//
// One OS thread per CUDA thread of a block; the blocks of a grid run one after another, each
// thread of the pool looping over them, so `__shared__` (made a function-local `static`) is the
// running block's shared memory. `__syncthreads` is a `std::barrier` over the block's threads;
// warp shuffles, ballots and `mma.sync` exchange values through a per-warp mailbox between two
// arrivals at the warp's barrier. All launches are serialised by one mutex (the statics are
// shared by every launch of a kernel).
//
// What the twin cannot check: speed, data races between threads of a block that a barrier
// happens to order here, and whether tensor-core fragment layouts match the hardware (the
// `mma` here follows the PTX ISA's description; see common.cuh).
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace twin {

struct Warp {
  std::barrier<> bar{32};
  // Room for the widest exchange: an mma's A (4 words) and B (2 words) fragments.
  uint32_t mail[32][8];
};

struct Launch {
  dim3 grid, block;
  std::unique_ptr<std::barrier<>> block_bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local dim3 t_thread;
inline thread_local dim3 t_block;
inline thread_local Launch* t_launch = nullptr;

inline unsigned flat_tid() {
  const dim3& b = t_launch->block;
  return t_thread.x + b.x * (t_thread.y + b.y * t_thread.z);
}
inline unsigned lane() { return flat_tid() % 32; }
inline Warp& warp() { return *t_launch->warps[flat_tid() / 32]; }

inline std::mutex& launch_lock() {
  static std::mutex m;
  return m;
}

// Runs `body` as a grid of `grid` blocks of `block` threads (a multiple of 32).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  std::lock_guard<std::mutex> g(launch_lock());
  const unsigned n = block.x * block.y * block.z;
  Launch l;
  l.grid = grid;
  l.block = block;
  l.block_bar = std::make_unique<std::barrier<>>(n);
  for (unsigned w = 0; w < (n + 31) / 32; w++) l.warps.push_back(std::make_unique<Warp>());
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; t++) {
    threads.emplace_back([&l, &body, t, block, grid] {
      t_launch = &l;
      t_thread = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
          for (unsigned x = 0; x < grid.x; x++) {
            t_block = dim3{x, y, z};
            body();
            // The block's statics (its shared memory) are reused by the next block.
            l.block_bar->arrive_and_wait();
          }
      t_launch = nullptr;
    });
  }
  for (auto& th : threads) th.join();
}

// Every lane publishes `n` words, all read what they need, then the mailbox is free again.
template <class F>
inline void exchange(const uint32_t* mine, int n, F&& read) {
  Warp& w = warp();
  const unsigned l = lane();
  for (int i = 0; i < n; i++) w.mail[l][i] = mine[i];
  w.bar.arrive_and_wait();
  read(w.mail);
  w.bar.arrive_and_wait();
}

template <class T>
inline T shfl(T v, unsigned src) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  uint32_t mine[2] = {0, 0};
  std::memcpy(mine, &v, sizeof(T));
  T out;
  exchange(mine, 2, [&](uint32_t (&mail)[32][8]) { std::memcpy(&out, mail[src % 32], sizeof(T)); });
  return out;
}

}  // namespace twin

#define threadIdx (::twin::t_thread)
#define blockIdx (::twin::t_block)
#define blockDim (::twin::t_launch->block)
#define gridDim (::twin::t_launch->grid)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict

inline void __syncthreads() { ::twin::t_launch->block_bar->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  return ::twin::shfl(v, ::twin::lane() ^ unsigned(mask));
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
  return ::twin::shfl(v, unsigned(src));
}
inline unsigned __ballot_sync(unsigned, int pred) {
  uint32_t mine = pred ? 1u : 0u;
  unsigned out = 0;
  ::twin::exchange(&mine, 1, [&](uint32_t (&mail)[32][8]) {
    for (int i = 0; i < 32; i++) out |= (mail[i][0] & 1u) << i;
  });
  return out;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int atomicAdd(int* p, int v) {
  return std::atomic_ref<int>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_add(v, std::memory_order_relaxed);
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned cur = a.load(std::memory_order_relaxed);
  while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
  return cur;
}

namespace twin {
// Kernels by name (filled by SY_KERNEL at static initialisation).
struct Entry {
  const char* name;
  unsigned params_size;
  void (*run)(const void*);
};
inline std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
struct Registered {
  Registered(const char* name, unsigned size, void (*run)(const void*)) {
    registry().push_back(Entry{name, size, run});
  }
};
}  // namespace twin

namespace twin {
// `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32` (d += A·B) for the calling warp, each lane
// holding its fragments as the PTX ISA lays them out (group g = lane / 4, t = lane % 4):
//   A 16x32 s8, 4 words: word 0 = row g, cols 4t..4t+3; word 1 = row g+8, same cols;
//                        word 2 = row g, cols 16+4t..; word 3 = row g+8, cols 16+4t..
//   B 32x8 s8, 2 words:  word 0 = rows 4t..4t+3 of col g; word 1 = rows 16+4t.. of col g
//   D 16x8 s32, 4 words: d0, d1 = row g, cols 2t, 2t+1; d2, d3 = row g+8, same cols
inline void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const unsigned l = lane(), g = l / 4, t = l % 4;
  exchange(mine, 6, [&](uint32_t (&mail)[32][8]) {
    auto elem_a = [&](unsigned row, unsigned k) {
      const unsigned word = (row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
      const uint32_t w = mail[(row % 8) * 4 + (k % 16) / 4][word];
      return int(int8_t(w >> (8 * (k % 4))));
    };
    auto elem_b = [&](unsigned k, unsigned col) {
      const uint32_t w = mail[col * 4 + (k % 16) / 4][4 + (k >= 16 ? 1 : 0)];
      return int(int8_t(w >> (8 * (k % 4))));
    };
    for (unsigned i = 0; i < 4; i++) {
      const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      int s = 0;
      for (unsigned k = 0; k < 32; k++) s += elem_a(row, k) * elem_b(k, col);
      d[i] += s;
    }
  });
}
}  // namespace twin

namespace twin {
// A full-warp xor butterfly (`for m = 16, 8, 4, 2, 1: v = op(v, shfl_xor(v, m))`) in one
// exchange instead of five: every lane replays all 32 lanes' steps in the GPU's order, so the
// result is bit for bit the shuffle loop's.
template <class T, class Op>
inline T butterfly(T v, Op op) {
  static_assert(sizeof(T) <= 8, "at most 8 bytes");
  uint32_t mine[2] = {0, 0};
  std::memcpy(mine, &v, sizeof(T));
  T vals[32];
  exchange(mine, 2, [&](uint32_t (&mail)[32][8]) {
    for (int i = 0; i < 32; i++) std::memcpy(&vals[i], mail[i], sizeof(T));
  });
  for (int m = 16; m > 0; m >>= 1) {
    T next[32];
    for (int i = 0; i < 32; i++) next[i] = op(vals[i], vals[i ^ m]);
    for (int i = 0; i < 32; i++) vals[i] = next[i];
  }
  return vals[lane()];
}
}  // namespace twin
