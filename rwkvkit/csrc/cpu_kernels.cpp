// CPU kernels for one-token decode: matrix-vector products for every weight format rwkvkit stores,
// and the WKV state updates, each in one pass over memory.
//
// Why this file exists (measured on the project's 2-core Xeon, AVX-512 with BF16 and VNNI; see
// rwkvkit/ops/native.py and BENCHMARKS.md): decoding streams every weight once per token, and the
// ATen kernels do not stream 16-bit or 8-bit weights at memory speed for one row: torch.mv in bf16
// reads ~16 GB/s where fp32 F.linear reads ~25, fp16 F.linear ~15, _weight_int8pack_mm ~14 GB/s
// of int8. The loops below reach 22-24 GB/s for bf16/fp16 and ~35 GB/s of int8, so 16-bit weights
// decode faster than fp32 and int8 faster than 16-bit, as their sizes promise. torch.compile
// (inductor, default and max-autotune modes) did not close the gap for 16-bit weights.
//
// Every op has a plain PyTorch sibling in rwkvkit/ops/linear.py or rwkvkit/ops/wkv*.py, and the
// tests compare them. Ops are registered with the dispatcher (namespace "rwkvkit") so that
// torch.compile can trace through them; rwkvkit/ops/native.py registers their shapes for tracing.
//
// Threads: the row loops run on a small pool of our own (see Pool) sized by at::get_num_threads(),
// in which the calling thread never waits for a helper that has not started: when another process
// takes a core, OpenMP's barriers make every parallel region wait for the descheduled thread
// (decode fell from 118 to 2 tokens/s); here the caller simply does the remaining rows itself, and
// after waiting long for a helper that was descheduled mid-chunk it works alone for a while.
//
// Built with -O3 -march=native by rwkvkit/ops/native.py, only on CPUs with AVX-512 F/BW/VL, VNNI
// and BF16; elsewhere the PyTorch paths run.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// The thread pool.
//
// A job is n chunks. The state of the current job lives in one 64-bit atomic: epoch (16 bits),
// number of chunks (24 bits), next chunk to claim (24 bits). Claiming is one fetch_add, so a
// claim is valid exactly when the returned index is below the returned count, whatever else
// happened meanwhile; the caller does not return (and so does not change the job) until every
// claimed chunk is done. Helpers spin for kSpinTime after a job, then sleep on a condition variable.

using ChunkFn = void (*)(const void* ctx, int64_t chunk);

constexpr int kIndexBits = 24;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
// How long a helper spins for the next job before it sleeps: longer than the gaps between a
// step's products (tens of microseconds), since waking a sleeper costs more (a futex call, then
// ~50 us until it runs). Timed, not counted: a pause takes 11 ns on the project's Xeon, 140 on others.
constexpr std::chrono::microseconds kSpinTime{100};
// Waiting longer than this, and than three of the caller's own chunks, for a helper's last chunk
// means it was descheduled: the next kSoloJobs jobs (a few tokens' worth) then run on the calling
// thread alone before helpers are tried again.
constexpr std::chrono::microseconds kDescheduled{200};
constexpr int kSoloJobs = 256;

inline uint64_t pack(uint64_t epoch, uint64_t n, uint64_t index) {
  return (epoch << (2 * kIndexBits)) | (n << kIndexBits) | index;
}
inline uint64_t epoch_of(uint64_t v) { return v >> (2 * kIndexBits); }
inline int64_t count_of(uint64_t v) { return int64_t((v >> kIndexBits) & kIndexMask); }
inline int64_t index_of(uint64_t v) { return int64_t(v & kIndexMask); }

class Pool {
 public:
  // Run fn(ctx, i) for i in [0, n) on up to `threads` threads (the caller is one of them).
  void run(int threads, int64_t n, ChunkFn fn, const void* ctx) {
    if (threads <= 1 || n <= 1 || n > int64_t(kIndexMask) / 2 || solo_left_.load(std::memory_order_relaxed) > 0) {
      if (threads > 1 && n > 1) solo_left_.fetch_sub(1, std::memory_order_relaxed);
      for (int64_t i = 0; i < n; i++) fn(ctx, i);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);  // one job at a time across caller threads
    ensure_helpers(threads - 1);
    fn_ = fn;
    ctx_ = ctx;
    wanted_.store(threads - 1, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t epoch = (epoch_of(state_.load(std::memory_order_relaxed)) + 1) & 0xFFFF;
    state_.store(pack(epoch, uint64_t(n), 0), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lk(sleep_mutex_);
      wake_.notify_all();
    }
    const auto begin = std::chrono::steady_clock::now();
    const int64_t mine = work();
    if (done_.load(std::memory_order_acquire) < n) {
      // A helper still holds a chunk: waiting for it is normal for up to about one chunk's time
      // (a chunk of the head's product takes most of a millisecond). A wait far longer than the
      // chunks this thread did means the helper was descheduled (another process wants the core):
      // then the next jobs run on this thread alone.
      const auto start = std::chrono::steady_clock::now();
      const auto per_chunk = (start - begin) / std::max<int64_t>(mine, 1);
      while (done_.load(std::memory_order_acquire) < n) _mm_pause();
      const auto waited = std::chrono::steady_clock::now() - start;
      if (waited > kDescheduled && waited > 3 * per_chunk) solo_left_.store(kSoloJobs, std::memory_order_relaxed);
    }
  }

  // After fork() only the calling thread exists in the child: forget the helpers.
  void forget_helpers() {
    new (&run_mutex_) std::mutex();
    new (&sleep_mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    helpers_ = 0;
    sleepers_.store(0);
  }

 private:
  void ensure_helpers(int k) {
    while (helpers_ < k) {
      const int id = helpers_++;
      std::thread([this, id] { helper_loop(id); }).detach();
    }
  }

  // Claims and runs chunks until none is left; returns how many this thread ran.
  int64_t work() {
    for (int64_t ran = 0;; ran++) {
      const uint64_t v = state_.fetch_add(1, std::memory_order_acq_rel);
      const int64_t i = index_of(v);
      if (i >= count_of(v)) return ran;
      fn_(ctx_, i);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void helper_loop(int id) {
    uint64_t seen = epoch_of(state_.load(std::memory_order_acquire));
    for (;;) {
      uint64_t v;
      int spins = 0;
      auto spin_start = std::chrono::steady_clock::now();
      while (epoch_of(v = state_.load(std::memory_order_acquire)) == seen) {
        _mm_pause();
        if (++spins % 64 || std::chrono::steady_clock::now() - spin_start < kSpinTime) continue;
        std::unique_lock<std::mutex> lk(sleep_mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lk, [&] { return epoch_of(state_.load(std::memory_order_seq_cst)) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        spin_start = std::chrono::steady_clock::now();
      }
      seen = epoch_of(v);
      if (id < wanted_.load(std::memory_order_relaxed)) work();
    }
  }

  std::atomic<uint64_t> state_{pack(0, 0, 0)};
  std::atomic<int64_t> done_{0};
  std::atomic<int> wanted_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> solo_left_{0};
  ChunkFn fn_ = nullptr;
  const void* ctx_ = nullptr;
  int helpers_ = 0;
  std::mutex run_mutex_;
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
};

Pool& pool() {
  static Pool* p = [] {
    auto* created = new Pool();  // never destroyed: helpers may still wait on it at exit
    pthread_atfork(nullptr, nullptr, [] { pool().forget_helpers(); });
    return created;
  }();
  return *p;
}

// Split `rows` into chunks of whole tiles for the pool: enough chunks to balance two to a few
// threads, none smaller than `min_rows`.
template <typename F>
void parallel_rows(int64_t rows, int64_t min_rows, int64_t work_per_row, const F& body) {
  const int threads = at::get_num_threads();
  // Below ~256k multiply-adds (a 512 x 512 product) a parallel region costs more than it saves.
  const bool parallel = threads > 1 && rows * work_per_row >= (1 << 18);
  int64_t chunk = rows;
  if (parallel) {
    chunk = std::max<int64_t>(min_rows, (rows + 8 * threads - 1) / (8 * threads));
    chunk = (chunk + min_rows - 1) / min_rows * min_rows;
  }
  const int64_t n = (rows + chunk - 1) / chunk;
  struct Ctx {
    const F* body;
    int64_t chunk, rows;
  } ctx{&body, chunk, rows};
  pool().run(parallel ? threads : 1, n, [](const void* c, int64_t i) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    const int64_t lo = i * x.chunk;
    (*x.body)(lo, std::min(x.rows, lo + x.chunk));
  }, &ctx);
}

// ---------------------------------------------------------------------------------------------
// Matrix-vector (few rows) products: y (M, N) = x (M, K) @ W^T, W (N, K) row-major.
//
// A tile is R weight rows times up to 4 input rows: each weight vector is loaded once and used
// for every input row, so B sequences decoding together read the weights once.

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Several input rows make a product's loop busy enough between its weight loads that the
// hardware prefetchers fall behind the memory (8 rows streamed fp32 weights at 7.5 GB/s, bf16 at 4,
// where one row streams 13 and 10): the batched tiles ask for each weight line 2 KB ahead (then
// 8.5 and 7; 1 KB gave 8.5 and 5.5).
template <typename T>
inline void prefetch_ahead(const T* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + 2048, _MM_HINT_T0);
}

constexpr int kTileRows = 4;
constexpr int kTileInputs = 4;
// From 5 input rows on (batched decode) a tile is 2 weight rows by up to 8 inputs, so 8 sequences
// read each weight once (4 x 8 accumulators would not fit the 32 vector registers).
constexpr int kWideRows = 2;
constexpr int kWideInputs = 8;

// Where a product's rows go: an (M, ld) output of the input's dtype (float32, bfloat16 or
// float16), written as the sums come out, so no float32 copy is made and converted afterwards.
struct OutRows {
  void* base;
  at::ScalarType dtype;
  int64_t ld;

  static uint16_t to_bf16(float v) {  // round to nearest even, as at::BFloat16 does
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (std::isnan(v)) return 0x7FC0;
    return uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
  }
  void put(int64_t m, int64_t n, float v) const {
    const int64_t i = m * ld + n;
    if (dtype == at::kFloat) static_cast<float*>(base)[i] = v;
    else if (dtype == at::kBFloat16) static_cast<uint16_t*>(base)[i] = to_bf16(v);
    else static_cast<uint16_t*>(base)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
  }
  // 16 consecutive outputs n..n+15 of row m, the first `count` of them kept.
  void put16(int64_t m, int64_t n, __m512 v, int count) const {
    const __mmask16 mask = count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
    const int64_t i = m * ld + n;
    if (dtype == at::kFloat) {
      _mm512_mask_storeu_ps(static_cast<float*>(base) + i, mask, v);
    } else {
      const __m256i h = dtype == at::kBFloat16 ? (__m256i)_mm512_cvtneps_pbh(v)
                                               : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask, h);
    }
  }
};

at::Tensor output_for(const at::Tensor& x, int64_t M, int64_t N, OutRows* out) {
  at::Tensor y = at::empty({M, N}, x.options());
  *out = OutRows{y.data_ptr(), y.scalar_type(), N};
  return y;
}

// float32 weights.
template <int R, int MT>
inline void tile_f32(const float* x, int64_t K, const float* w, const OutRows& out, int64_t m0, int64_t n0) {
  __m512 acc[MT][R];
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; r++) {
      if constexpr (MT > 1) prefetch_ahead(w + r * K + k);
      wv[r] = _mm512_loadu_ps(w + r * K + k);
    }
    for (int m = 0; m < MT; m++) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mask = __mmask16((1u << (K - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; r++) wv[r] = _mm512_maskz_loadu_ps(mask, w + r * K + k);
    for (int m = 0; m < MT; m++) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) out.put(m0 + m, n0 + r, _mm512_reduce_add_ps(acc[m][r]));
}

// bfloat16 weights, one input row (bf16): vdpbf16ps multiplies pairs exactly and sums in float32.
// R weight rows, each read start to end with four accumulators and a software prefetch 1 KB
// ahead: streams bf16 weights from memory at 12-13 GB/s on one core of the project's Xeon where
// reading R rows side by side (as tile_f32 does) reached 9-11 (fp32 weights: 13-15).
template <int R>
inline void rows_bf16(const uint16_t* x, int64_t K, const uint16_t* w, const OutRows& out, int64_t m0, int64_t n0) {
  for (int r = 0; r < R; r++) {
    const uint16_t* wr = w + r * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      const char* ahead = reinterpret_cast<const char*>(wr + k) + 1024;
      for (int line = 0; line < 256; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(wr + k));
      a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(x + k + 32), (__m512bh)_mm512_loadu_si512(wr + k + 32));
      a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(x + k + 64), (__m512bh)_mm512_loadu_si512(wr + k + 64));
      a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(x + k + 96), (__m512bh)_mm512_loadu_si512(wr + k + 96));
    }
    for (; k + 32 <= K; k += 32)
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(wr + k));
    if (k < K) {
      const __mmask32 mask = __mmask32((uint64_t(1) << (K - k)) - 1);
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_loadu_epi16(mask, x + k), (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + k));
    }
    out.put(m0, n0 + r, _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))));
  }
}

// Several input rows (batched decode): vdpbf16ps then limits (measured 3-4 GB/s of weights for 4 to
// 8 rows on the project's Xeon), so each 64-byte load of 32 bf16 weights is widened in registers
// to its 16 even and 16 odd elements as float32 (exact: a shift and a mask) and multiplied by the
// inputs' even and odd elements with FMAs. `xe`, `xo`: (MT, half) float32, the inputs' even and
// odd elements after rounding to bf16 (as vdpbf16ps would read them), zero-padded.
template <int R, int MT>
inline void tile_bf16_wide(const float* xe, const float* xo, int64_t half, int64_t K, const uint16_t* w,
                           const OutRows& out, int64_t m0, int64_t n0) {
  __m512 acc[MT][R];
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << (K - k)) - 1);
    __m512 we[R], wo[R];
    for (int r = 0; r < R; r++) {
      prefetch_ahead(w + r * K + k);
      const __m512i v = _mm512_maskz_loadu_epi16(mask, w + r * K + k);
      we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, high));
    }
    for (int m = 0; m < MT; m++) {
      const __m512 e = _mm512_loadu_ps(xe + (m0 + m) * half + k / 2), o = _mm512_loadu_ps(xo + (m0 + m) * half + k / 2);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(o, wo[r], _mm512_fmadd_ps(e, we[r], acc[m][r]));
    }
  }
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) out.put(m0 + m, n0 + r, _mm512_reduce_add_ps(acc[m][r]));
}

// float16 weights widened to float32 in registers; float32 inputs.
template <int R, int MT>
inline void tile_f16(const float* x, int64_t K, const uint16_t* w, const OutRows& out, int64_t m0, int64_t n0) {
  __m512 acc[MT][R];
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; r++)
      wv[r] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k)));
    for (int m = 0; m < MT; m++) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mask = __mmask16((1u << (K - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; r++) wv[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + r * K + k));
    for (int m = 0; m < MT; m++) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MT; m++)
    for (int r = 0; r < R; r++) out.put(m0 + m, n0 + r, _mm512_reduce_add_ps(acc[m][r]));
}

// Activations quantized for the integer kernels: per block of 64 inputs, a scale (absmax / 127),
// the int8 values, and their sum (for the unsigned-offset correction of vpdpbusd).
constexpr int64_t kQBlock = 64;

struct QuantizedRows {
  std::vector<int8_t> q;     // (M, K)
  std::vector<float> scale;  // (M, K / 64)
  std::vector<int32_t> sum;  // (M, K / 64): sum of q over the block
};

QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K) {
  const int64_t nb = K / kQBlock;
  QuantizedRows out{std::vector<int8_t>(M * K), std::vector<float>(M * nb), std::vector<int32_t>(M * nb)};
  for (int64_t m = 0; m < M; m++) {
    for (int64_t b = 0; b < nb; b++) {
      const float* src = x + m * K + b * kQBlock;
      __m512 amax = _mm512_setzero_ps();
      for (int j = 0; j < kQBlock; j += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(src + j)));
      const float absmax = _mm512_reduce_max_ps(amax);
      const float scale = absmax / 127.0f;
      const __m512 inv = _mm512_set1_ps(scale > 0 ? 1.0f / scale : 0.0f);
      int8_t* dst = out.q.data() + m * K + b * kQBlock;
      __m512i total = _mm512_setzero_si512();
      for (int j = 0; j < kQBlock; j += 16) {
        const __m512i qi = _mm512_cvtps_epi32(_mm512_roundscale_ps(
            _mm512_mul_ps(_mm512_loadu_ps(src + j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        total = _mm512_add_epi32(total, qi);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), _mm512_cvtsepi32_epi8(qi));
      }
      out.scale[m * nb + b] = scale;
      out.sum[m * nb + b] = _mm512_reduce_add_epi32(total);
    }
  }
  return out;
}

// The integer kernels read weights interleaved by tiles of 16 output rows, so that one 64-byte
// load holds 4 consecutive inputs' weights for each of 16 rows: vpdpbusd then accumulates 16 rows
// at once against one broadcast group of 4 activations, with no horizontal sums and the scales
// applied as vectors (1.1-1.6x the row-major loops here). See rwkvkit/ops/linear.py for the
// layouts: int8 (N/16, K/4, 16, 4); int4 (N/16, K/8, 16, 4) bytes, the low nibble for input
// k0 + j and the high one for k0 + 4 + j, with per-64-input-group (scale, min) pairs as bf16
// (N/16, K/64, 2, 16).
constexpr int64_t kRowTile = 16;

inline __m512 bf16x16_to_float(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// int8 weights (per-row scale) against int8 activations (per-block scales). vpdpbusd wants one
// unsigned operand: the weights are offset by 128 (an XOR of the sign bit) and the offset's
// contribution, 128 * sum(x_q) per block, is taken off at the end (the same for every row).
template <int MT>
inline void tile16_q8(const QuantizedRows& xq, int64_t m0, int64_t K, const int8_t* w, const float* scale,
                      const OutRows& out, int64_t n0, int count) {
  const int64_t nb = K / kQBlock;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512 acc[MT];
  float offset[MT];
  for (int m = 0; m < MT; m++) {
    acc[m] = _mm512_setzero_ps();
    offset[m] = 0;
  }
  for (int64_t b = 0; b < nb; b++) {
    __m512i d[MT];
    for (int m = 0; m < MT; m++) d[m] = _mm512_setzero_si512();
    const int8_t* wb = w + b * kQBlock * kRowTile;
#pragma GCC unroll 16
    for (int q = 0; q < 16; q++) {
      if constexpr (MT > 1) prefetch_ahead(wb + q * 64);
      const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(wb + q * 64), flip);
      for (int m = 0; m < MT; m++) {
        const int32_t* xr = reinterpret_cast<const int32_t*>(xq.q.data() + (m0 + m) * K + b * kQBlock);
        d[m] = _mm512_dpbusd_epi32(d[m], wv, _mm512_set1_epi32(xr[q]));
      }
    }
    for (int m = 0; m < MT; m++) {
      const float s = xq.scale[(m0 + m) * nb + b];
      offset[m] += s * float(xq.sum[(m0 + m) * nb + b]);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[m]), _mm512_set1_ps(s), acc[m]);
    }
  }
  const __m512 sv = _mm512_loadu_ps(scale);
  for (int m = 0; m < MT; m++)
    out.put16(m0 + m, n0, _mm512_mul_ps(_mm512_sub_ps(acc[m], _mm512_set1_ps(128.0f * offset[m])), sv), count);
}

// int4 weights, groups of 64 inputs with a scale s and a minimum mn each: w = s q + mn, q in
// [0, 15]. Per group: sum_k x_k w_k = xs (s sum q x_q) + mn (xs sum x_q).
template <int MT>
inline void tile16_q4(const QuantizedRows& xq, int64_t m0, int64_t K, const uint8_t* w, const uint16_t* sm,
                      const OutRows& out, int64_t n0, int count) {
  const int64_t nb = K / kQBlock;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[MT];
  for (int m = 0; m < MT; m++) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    __m512i d[MT];
    for (int m = 0; m < MT; m++) d[m] = _mm512_setzero_si512();
    const uint8_t* wb = w + b * (kQBlock / 2) * kRowTile;
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++) {
      if constexpr (MT > 1) prefetch_ahead(wb + q * 64);
      const __m512i v = _mm512_loadu_si512(wb + q * 64);
      const __m512i lo = _mm512_and_si512(v, low);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      for (int m = 0; m < MT; m++) {
        const int32_t* xr = reinterpret_cast<const int32_t*>(xq.q.data() + (m0 + m) * K + b * kQBlock);
        d[m] = _mm512_dpbusd_epi32(d[m], lo, _mm512_set1_epi32(xr[2 * q]));
        d[m] = _mm512_dpbusd_epi32(d[m], hi, _mm512_set1_epi32(xr[2 * q + 1]));
      }
    }
    const __m512 s = bf16x16_to_float(sm + b * 2 * kRowTile);
    const __m512 mn = bf16x16_to_float(sm + b * 2 * kRowTile + kRowTile);
    for (int m = 0; m < MT; m++) {
      const float xs = xq.scale[(m0 + m) * nb + b];
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[m]), _mm512_mul_ps(s, _mm512_set1_ps(xs)), acc[m]);
      acc[m] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xs * float(xq.sum[(m0 + m) * nb + b])), acc[m]);
    }
  }
  for (int m = 0; m < MT; m++) out.put16(m0 + m, n0, acc[m], count);
}

#define RWKVKIT_DISPATCH_INPUTS(MT, CALL)                    \
  do {                                                       \
    switch (MT) {                                            \
      case 1: { constexpr int MT_ = 1; CALL; } break;        \
      case 2: { constexpr int MT_ = 2; CALL; } break;        \
      case 3: { constexpr int MT_ = 3; CALL; } break;        \
      case 4: { constexpr int MT_ = 4; CALL; } break;        \
      case 5: { constexpr int MT_ = 5; CALL; } break;        \
      case 6: { constexpr int MT_ = 6; CALL; } break;        \
      case 7: { constexpr int MT_ = 7; CALL; } break;        \
      case 8: { constexpr int MT_ = 8; CALL; } break;        \
    }                                                        \
  } while (0)

// Run a tile function over all (row tile, input group) pairs of an (M, N) output, in parallel over
// rows: tile(R, MT, n0, m0) computes rows n0..n0+R of inputs m0..m0+MT.
template <typename Tile>
void for_tiles(int64_t M, int64_t N, int64_t K, const Tile& tile) {
  const bool wide = M > kTileInputs;
  const int64_t rows = wide ? kWideRows : kTileRows, inputs = wide ? kWideInputs : kTileInputs;
  parallel_rows(N, 16, K * M, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; n += rows) {
      const int64_t R = std::min<int64_t>(rows, hi - n);
      for (int64_t m = 0; m < M; m += inputs) tile(R, std::min<int64_t>(inputs, M - m), n, m);
    }
  });
}

// Expands a runtime (R, MT) into the template instances.
#define RWKVKIT_DISPATCH_TILE(R, MT, CALL)                     \
  do {                                                         \
    switch ((R) * 16 + (MT)) {                                 \
      case 4 * 16 + 1: { constexpr int R_ = 4, MT_ = 1; CALL; } break; \
      case 4 * 16 + 2: { constexpr int R_ = 4, MT_ = 2; CALL; } break; \
      case 4 * 16 + 3: { constexpr int R_ = 4, MT_ = 3; CALL; } break; \
      case 4 * 16 + 4: { constexpr int R_ = 4, MT_ = 4; CALL; } break; \
      case 3 * 16 + 1: { constexpr int R_ = 3, MT_ = 1; CALL; } break; \
      case 3 * 16 + 2: { constexpr int R_ = 3, MT_ = 2; CALL; } break; \
      case 3 * 16 + 3: { constexpr int R_ = 3, MT_ = 3; CALL; } break; \
      case 3 * 16 + 4: { constexpr int R_ = 3, MT_ = 4; CALL; } break; \
      case 2 * 16 + 1: { constexpr int R_ = 2, MT_ = 1; CALL; } break; \
      case 2 * 16 + 2: { constexpr int R_ = 2, MT_ = 2; CALL; } break; \
      case 2 * 16 + 3: { constexpr int R_ = 2, MT_ = 3; CALL; } break; \
      case 2 * 16 + 4: { constexpr int R_ = 2, MT_ = 4; CALL; } break; \
      case 1 * 16 + 1: { constexpr int R_ = 1, MT_ = 1; CALL; } break; \
      case 1 * 16 + 2: { constexpr int R_ = 1, MT_ = 2; CALL; } break; \
      case 1 * 16 + 3: { constexpr int R_ = 1, MT_ = 3; CALL; } break; \
      case 1 * 16 + 4: { constexpr int R_ = 1, MT_ = 4; CALL; } break; \
      case 2 * 16 + 5: { constexpr int R_ = 2, MT_ = 5; CALL; } break; \
      case 2 * 16 + 6: { constexpr int R_ = 2, MT_ = 6; CALL; } break; \
      case 2 * 16 + 7: { constexpr int R_ = 2, MT_ = 7; CALL; } break; \
      case 2 * 16 + 8: { constexpr int R_ = 2, MT_ = 8; CALL; } break; \
      case 1 * 16 + 5: { constexpr int R_ = 1, MT_ = 5; CALL; } break; \
      case 1 * 16 + 6: { constexpr int R_ = 1, MT_ = 6; CALL; } break; \
      case 1 * 16 + 7: { constexpr int R_ = 1, MT_ = 7; CALL; } break; \
      case 1 * 16 + 8: { constexpr int R_ = 1, MT_ = 8; CALL; } break; \
    }                                                          \
  } while (0)

// A weight in any of the stored formats, as the products read it. Float weights are (N, K) row
// major; quantized ones are packed in tiles of 16 rows (see above), `n` saying how many are real.
enum class Format { f32, bf16, f16, q8, q4 };

struct Weight {
  Format format;
  const void* data;
  const void* params;  // q8: float32 scale per (padded) row; q4: bfloat16 (scale, min) pairs
  int64_t n, k;
};

// Reads (and checks) a weight: a 2-D float32/bfloat16/float16 matrix, or an int8 (q8) / uint8 (q4)
// packed one with its scales. `n_out` is the number of output rows a packed weight holds.
Weight weight_of(const at::Tensor& w, const at::Tensor& params, int64_t n_out, const char* op) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous(), op, ": the weight must be a contiguous CPU tensor");
  const auto t = w.scalar_type();
  if (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) {
    TORCH_CHECK(w.dim() == 2, op, ": a float weight must be (N, K)");
    const Format f = t == at::kFloat ? Format::f32 : t == at::kBFloat16 ? Format::bf16 : Format::f16;
    return Weight{f, w.data_ptr(), nullptr, w.size(0), w.size(1)};
  }
  TORCH_CHECK(w.dim() == 4 && w.size(2) == kRowTile && w.size(3) == 4 && (t == at::kChar || t == at::kByte), op,
              ": a quantized weight must be packed int8 (N / 16, K / 4, 16, 4) or uint8 (N / 16, K / 8, 16, 4)");
  const int64_t tiles = w.size(0), K = w.size(1) * (t == at::kChar ? 4 : 8);
  TORCH_CHECK(K % kQBlock == 0, op, ": K must be a multiple of 64");
  TORCH_CHECK(n_out > (tiles - 1) * kRowTile && n_out <= tiles * kRowTile, op, ": n_out does not fit the tiles");
  TORCH_CHECK(params.is_contiguous() && params.device().is_cpu(), op, ": the scales must be contiguous CPU tensors");
  if (t == at::kChar) {
    TORCH_CHECK(params.scalar_type() == at::kFloat && params.numel() == tiles * kRowTile, op,
                ": int8 weights take a float32 scale per (padded) row");
    return Weight{Format::q8, w.data_ptr(), params.data_ptr(), n_out, K};
  }
  TORCH_CHECK(params.scalar_type() == at::kBFloat16 && params.numel() == tiles * kRowTile * (K / kQBlock) * 2, op,
              ": int4 weights take bfloat16 scale_min (N / 16, K / 64, 2, 16)");
  return Weight{Format::q4, w.data_ptr(), params.data_ptr(), n_out, K};
}

// y (M, N) = x (M, K) @ W^T for float32 rows x, written through `out`. bf16 weights get x rounded
// to bf16 (what vdpbf16ps multiplies); int8/int4 ones get it quantized per block of 64.
void product(const Weight& W, const float* x, int64_t M, const OutRows& out) {
  const int64_t K = W.k, N = W.n;
  switch (W.format) {
    case Format::f32: {
      const auto* wp = static_cast<const float*>(W.data);
      for_tiles(M, N, K, [&](int64_t R, int64_t MT, int64_t n, int64_t m) {
        RWKVKIT_DISPATCH_TILE(R, MT, (tile_f32<R_, MT_>(x + m * K, K, wp + n * K, out, m, n)));
      });
      break;
    }
    case Format::bf16: {
      const auto* wp = static_cast<const uint16_t*>(W.data);
      if (M > 1) {  // even and odd input elements, rounded to bf16, padded to whole loads
        const int64_t half = (K + 31) / 32 * 16;
        std::vector<float> xe(M * half + 16, 0.0f), xo(M * half + 16, 0.0f);
        for (int64_t m = 0; m < M; m++)
          for (int64_t k = 0; k < K; k++)
            (k % 2 ? xo : xe)[m * half + k / 2] = bf16_to_float(OutRows::to_bf16(x[m * K + k]));
        const float *ep = xe.data(), *op = xo.data();
        for_tiles(M, N, K, [&](int64_t R, int64_t MT, int64_t n, int64_t m) {
          RWKVKIT_DISPATCH_TILE(R, MT, (tile_bf16_wide<R_, MT_>(ep, op, half, K, wp + n * K, out, m, n)));
        });
        break;
      }
      std::vector<uint16_t> xb(K);
      for (int64_t i = 0; i < K; i++) xb[i] = OutRows::to_bf16(x[i]);
      const uint16_t* xp = xb.data();
      for_tiles(1, N, K, [&](int64_t R, int64_t MT, int64_t n, int64_t) {
        RWKVKIT_DISPATCH_TILE(R, MT, (rows_bf16<R_>(xp, K, wp + n * K, out, 0, n)));
      });
      break;
    }
    case Format::f16: {
      const auto* wp = static_cast<const uint16_t*>(W.data);
      for_tiles(M, N, K, [&](int64_t R, int64_t MT, int64_t n, int64_t m) {
        RWKVKIT_DISPATCH_TILE(R, MT, (tile_f16<R_, MT_>(x + m * K, K, wp + n * K, out, m, n)));
      });
      break;
    }
    case Format::q8: {
      const QuantizedRows xq = quantize_rows(x, M, K);
      const auto* wp = static_cast<const int8_t*>(W.data);
      const auto* sp = static_cast<const float*>(W.params);
      parallel_rows((N + kRowTile - 1) / kRowTile, 1, K * M * kRowTile, [&](int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; t++) {
          const int count = int(std::min<int64_t>(kRowTile, N - t * kRowTile));
          for (int64_t m = 0; m < M; m += kWideInputs)
            RWKVKIT_DISPATCH_INPUTS(std::min<int64_t>(kWideInputs, M - m),
                                    (tile16_q8<MT_>(xq, m, K, wp + t * kRowTile * K, sp + t * kRowTile, out,
                                                    t * kRowTile, count)));
        }
      });
      break;
    }
    case Format::q4: {
      const QuantizedRows xq = quantize_rows(x, M, K);
      const int64_t nb = K / kQBlock;
      const auto* wp = static_cast<const uint8_t*>(W.data);
      const auto* smp = static_cast<const uint16_t*>(W.params);
      parallel_rows((N + kRowTile - 1) / kRowTile, 1, K * M * kRowTile / 2, [&](int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; t++) {
          const int count = int(std::min<int64_t>(kRowTile, N - t * kRowTile));
          for (int64_t m = 0; m < M; m += kWideInputs)
            RWKVKIT_DISPATCH_INPUTS(std::min<int64_t>(kWideInputs, M - m),
                                    (tile16_q4<MT_>(xq, m, K, wp + t * kRowTile * K / 2, smp + t * nb * 2 * kRowTile,
                                                    out, t * kRowTile, count)));
        }
      });
      break;
    }
  }
}

// The product ops: x (M, K) float32, bfloat16 or float16 on the CPU; the output (M, N) has x's
// dtype, written as the sums come out (no float32 copy converted afterwards).
at::Tensor linear_any(const at::Tensor& x_in, const Weight& W, const char* op) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() == 2, op, ": x must be (M, K) on the CPU");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16 ||
                  x_in.scalar_type() == at::kHalf,
              op, ": x must be float32, bfloat16 or float16");
  TORCH_CHECK(x_in.size(1) == W.k, op, ": x has ", x_in.size(1), " columns, the weight ", W.k);
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  OutRows out;
  at::Tensor y = output_for(x_in, x.size(0), W.n, &out);
  product(W, x.data_ptr<float>(), x.size(0), out);
  return y;
}

at::Tensor linear_float(const at::Tensor& x, const at::Tensor& w, at::ScalarType dtype, const char* op) {
  TORCH_CHECK(w.scalar_type() == dtype, op, ": the weight has dtype ", w.scalar_type());
  return linear_any(x, weight_of(w, at::Tensor(), w.dim() == 2 ? w.size(0) : 0, op), op);
}
at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& w) { return linear_float(x, w, at::kFloat, "linear_f32"); }
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w) { return linear_float(x, w, at::kBFloat16, "linear_bf16"); }
at::Tensor linear_f16(const at::Tensor& x, const at::Tensor& w) { return linear_float(x, w, at::kHalf, "linear_f16"); }

at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n_out) {
  TORCH_CHECK(packed.scalar_type() == at::kChar, "linear_q8: int8 weight packed (N / 16, K / 4, 16, 4)");
  return linear_any(x, weight_of(packed, scale, n_out, "linear_q8"), "linear_q8");
}

at::Tensor linear_q4(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale_min, int64_t n_out) {
  TORCH_CHECK(packed.scalar_type() == at::kByte, "linear_q4: uint8 weight packed (N / 16, K / 8, 16, 4)");
  return linear_any(x, weight_of(packed, scale_min, n_out, "linear_q4"), "linear_q4");
}

// ---------------------------------------------------------------------------------------------
// WKV state updates for one token, one pass over each head's N x N state. `out` may be `state`
// itself (an in-place update) or another tensor of its shape.

// e^x for 16 floats: Cephes' expf (range reduction by ln 2, degree-6 polynomial), within 2 ulp;
// 0 below e^-104 (the WKV-4 state's empty maximum, -1e38, must give exactly 0).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-150.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// RWKV-4 (ops/wkv4.py's wkv4_step): the decayed average of past values with a bonus for the
// current token, its sums kept as (num, den, max) with S = num e^max. Elementwise over (B, C).
// Over BC = B C floats: w, u (C,); k, v, num, den, mx (B, C) in; out, num2, den2, mx2 (B, C) out.
void wkv4_rows(const float* wp, const float* up, const float* kp, const float* vp, const float* np, const float* dp,
               const float* mp, float* op, float* n2, float* d2, float* m2, int64_t BC, int64_t C) {
  for (int64_t i = 0; i < BC; i += 16) {
    const int64_t c = i % C;
    const __m512 kk = _mm512_loadu_ps(kp + i), vv = _mm512_loadu_ps(vp + i), nn = _mm512_loadu_ps(np + i),
                 dd = _mm512_loadu_ps(dp + i), mm = _mm512_loadu_ps(mp + i);
    // output: the stored sums plus the current token with its bonus u
    const __m512 bonus = _mm512_add_ps(_mm512_loadu_ps(up + c), kk);
    __m512 m = _mm512_max_ps(mm, bonus);
    __m512 es = exp512(_mm512_sub_ps(mm, m)), ec = exp512(_mm512_sub_ps(bonus, m));
    _mm512_storeu_ps(op + i, _mm512_div_ps(_mm512_fmadd_ps(es, nn, _mm512_mul_ps(ec, vv)), _mm512_fmadd_ps(es, dd, ec)));
    // state: decay the stored sums by one step, add the current token (no bonus)
    const __m512 decayed = _mm512_add_ps(mm, _mm512_loadu_ps(wp + c));
    m = _mm512_max_ps(decayed, kk);
    es = exp512(_mm512_sub_ps(decayed, m));
    ec = exp512(_mm512_sub_ps(kk, m));
    _mm512_storeu_ps(n2 + i, _mm512_fmadd_ps(es, nn, _mm512_mul_ps(ec, vv)));
    _mm512_storeu_ps(d2 + i, _mm512_fmadd_ps(es, dd, ec));
    _mm512_storeu_ps(m2 + i, m);
  }
}

std::vector<at::Tensor> wkv4_step(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& num, const at::Tensor& den, const at::Tensor& mx) {
  const int64_t C = w.numel(), BC = k.numel();
  for (const auto& t : {w, u, k, v, num, den, mx})
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
                "wkv4_step: contiguous float32 CPU tensors only");
  TORCH_CHECK(u.numel() == C && C % 16 == 0 && BC % C == 0 && v.numel() == BC && num.numel() == BC &&
                  den.numel() == BC && mx.numel() == BC,
              "wkv4_step: w, u (C,) with C a multiple of 16; k, v, num, den, max (B, C)");
  at::Tensor out = at::empty_like(k), num2 = at::empty_like(num), den2 = at::empty_like(den), mx2 = at::empty_like(mx);
  wkv4_rows(w.data_ptr<float>(), u.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), num.data_ptr<float>(),
            den.data_ptr<float>(), mx.data_ptr<float>(), out.data_ptr<float>(), num2.data_ptr<float>(),
            den2.data_ptr<float>(), mx2.data_ptr<float>(), BC, C);
  return {out, num2, den2, mx2};
}

void check_wkv(const at::Tensor& state, const at::Tensor& out, std::initializer_list<at::Tensor> vecs, int64_t B,
               int64_t H, int64_t N, const char* op) {
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous() && state.dim() == 4 &&
                  state.size(2) == N && state.size(3) == N,
              op, ": state must be contiguous float32 (B, H, N, N)");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.sizes() == state.sizes(), op,
              ": out must be contiguous float32 shaped like state");
  for (const auto& t : vecs)
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == B * H * N, op,
                ": every vector must be contiguous float32 (B, H, N)");
}

// RWKV-7: S <- S diag(w) + (S a) b^T + v k^T, y = S r. State rows are value channels.
// One head of N channels for one token: vectors (N,), s_in and s_out (N, N), which may be the same
// memory (an in-place update); w: N floats of scratch.
inline void wkv7_head(const float* r, const float* lw, const float* k, const float* v, const float* a, const float* b,
                      const float* s_in, float* s_out, float* y, int64_t N, float* w) {
  for (int64_t j = 0; j < N; j += 16) _mm512_storeu_ps(w + j, exp512(_mm512_loadu_ps(lw + j)));
  for (int64_t i = 0; i < N; i++) {
    const float* row = s_in + i * N;
    float* dst = s_out + i * N;
    __m512 sa = _mm512_setzero_ps();
    for (int64_t j = 0; j < N; j += 16) sa = _mm512_fmadd_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(a + j), sa);
    const __m512 sav = _mm512_set1_ps(_mm512_reduce_add_ps(sa)), vi = _mm512_set1_ps(v[i]);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < N; j += 16) {
      __m512 st = _mm512_mul_ps(_mm512_loadu_ps(row + j), _mm512_loadu_ps(w + j));
      st = _mm512_fmadd_ps(sav, _mm512_loadu_ps(b + j), st);
      st = _mm512_fmadd_ps(vi, _mm512_loadu_ps(k + j), st);
      _mm512_storeu_ps(dst + j, st);
      acc = _mm512_fmadd_ps(st, _mm512_loadu_ps(r + j), acc);
    }
    y[i] = _mm512_reduce_add_ps(acc);
  }
}

// BH heads for one token: vectors (BH, N), states (BH, N, N); `out` may be `state`.
void wkv7_rows(const float* rp, const float* lwp, const float* kp, const float* vp, const float* ap, const float* bp,
               const float* sp, float* op, float* yp, int64_t BH, int64_t N) {
  parallel_rows(BH, 1, N * N, [&](int64_t lo, int64_t hi) {
    std::vector<float> w(N);
    for (int64_t bh = lo; bh < hi; bh++) {
      const int64_t o = bh * N;
      wkv7_head(rp + o, lwp + o, kp + o, vp + o, ap + o, bp + o, sp + o * N, op + o * N, yp + o, N, w.data());
    }
  });
}

at::Tensor wkv7_step(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& a, const at::Tensor& b, const at::Tensor& state, at::Tensor out) {
  const int64_t B = state.size(0), H = state.size(1), N = state.size(2);
  check_wkv(state, out, {r, log_w, k, v, a, b}, B, H, N, "wkv7_step");
  TORCH_CHECK(N % 16 == 0, "wkv7_step: head size must be a multiple of 16");
  at::Tensor y = at::empty({B, H, N}, r.options());
  wkv7_rows(r.data_ptr<float>(), log_w.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
            a.data_ptr<float>(), b.data_ptr<float>(), state.data_ptr<float>(), out.data_ptr<float>(),
            y.data_ptr<float>(), B * H, N);
  return y;
}

// RWKV-5/6: y = r^T (S + diag(u) k v^T), S <- diag(w) S + k v^T. State rows are key channels.
// One head of N channels for one token: vectors (N,), s_in and s_out (N, N), which may be the same
// memory; acc, decay: N floats of scratch each.
inline void wkv5_head(const float* r, const float* lw, const float* k, const float* v, const float* u,
                      const float* s_in, float* s_out, float* y, int64_t N, float* acc, float* decay) {
  std::fill(acc, acc + N, 0.0f);
  for (int64_t j = 0; j < N; j += 16) _mm512_storeu_ps(decay + j, exp512(_mm512_loadu_ps(lw + j)));
  for (int64_t i = 0; i < N; i++) {
    const float* row = s_in + i * N;
    float* dst = s_out + i * N;
    const __m512 rv = _mm512_set1_ps(r[i]), kv = _mm512_set1_ps(k[i]), wi = _mm512_set1_ps(decay[i]);
    const __m512 ruk = _mm512_set1_ps(r[i] * u[i] * k[i]);
    for (int64_t j = 0; j < N; j += 16) {
      const __m512 st = _mm512_loadu_ps(row + j), vj = _mm512_loadu_ps(v + j);
      __m512 a = _mm512_loadu_ps(acc + j);
      a = _mm512_fmadd_ps(rv, st, a);
      a = _mm512_fmadd_ps(ruk, vj, a);
      _mm512_storeu_ps(acc + j, a);
      _mm512_storeu_ps(dst + j, _mm512_fmadd_ps(wi, st, _mm512_mul_ps(kv, vj)));
    }
  }
  std::copy(acc, acc + N, y);
}

// B H heads for one token: r, k, v (B, H, N); log_w (H, N) when w_batch_stride is 0 (RWKV-5),
// else (B, H, N) with stride H N (RWKV-6); u (H, N); state and out (B, H, N, N), out may be state.
void wkv5_rows(const float* rp, const float* lwp, int64_t w_batch_stride, const float* kp, const float* vp,
               const float* up, const float* sp, float* op, float* yp, int64_t B, int64_t H, int64_t N) {
  parallel_rows(B * H, 1, N * N, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(N), decay(N);
    for (int64_t bh = lo; bh < hi; bh++) {
      const int64_t o = bh * N, h = bh % H, wo = (bh / H) * w_batch_stride + h * N;
      wkv5_head(rp + o, lwp + wo, kp + o, vp + o, up + h * N, sp + o * N, op + o * N, yp + o, N, acc.data(),
                decay.data());
    }
  });
}

at::Tensor wkv5_step(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& u, const at::Tensor& state, at::Tensor out) {
  const int64_t B = state.size(0), H = state.size(1), N = state.size(2);
  check_wkv(state, out, {r, k, v}, B, H, N, "wkv5_step");
  TORCH_CHECK(N % 16 == 0, "wkv5_step: head size must be a multiple of 16");
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.is_contiguous() && u.numel() == H * N, "wkv5_step: u must be (H, N) float32");
  // RWKV-5's decay is the same for every sequence, (H, N); RWKV-6's is per token, (B, H, N).
  TORCH_CHECK(log_w.scalar_type() == at::kFloat && log_w.is_contiguous() &&
                  (log_w.numel() == H * N || log_w.numel() == B * H * N),
              "wkv5_step: log_w must be (H, N) or (B, H, N) float32");
  at::Tensor y = at::empty({B, H, N}, r.options());
  wkv5_rows(r.data_ptr<float>(), log_w.data_ptr<float>(), log_w.numel() == H * N ? 0 : H * N, k.data_ptr<float>(),
            v.data_ptr<float>(), u.data_ptr<float>(), state.data_ptr<float>(), out.data_ptr<float>(),
            y.data_ptr<float>(), B, H, N);
  return y;
}

// ---------------------------------------------------------------------------------------------
// The WKV recurrences over T tokens (prefill), token after token as the definitions read: each
// head's (or channel's) state stays in cache for the whole sequence, so this costs a few
// microseconds per token and layer where the chunked PyTorch forms (ops/wkv*.py) make dozens of
// small tensor operations per chunk. Heads are independent: the pool splits them, each running
// every token. No autograd: with gradients wanted the PyTorch forms run (ops/native.py).

void check_seq(std::initializer_list<at::Tensor> ts, const char* op) {
  for (const auto& t : ts)
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(), op,
                ": contiguous float32 CPU tensors only");
}

// RWKV-4: k, v (B, T, C); w, u (C,); num, den, max (B, C). Returns out (B, T, C) and the state.
std::vector<at::Tensor> wkv4_seq(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& num, const at::Tensor& den, const at::Tensor& mx) {
  check_seq({w, u, k, v, num, den, mx}, "wkv4_seq");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes(), "wkv4_seq: k, v must be (B, T, C)");
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(C % 16 == 0 && w.numel() == C && u.numel() == C && num.numel() == B * C && den.numel() == B * C &&
                  mx.numel() == B * C,
              "wkv4_seq: w, u (C,) with C a multiple of 16; num, den, max (B, C)");
  at::Tensor out = at::empty_like(k), n2 = num.clone(), d2 = den.clone(), m2 = mx.clone();
  const float *wp = w.data_ptr<float>(), *up = u.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = out.data_ptr<float>(), *np = n2.data_ptr<float>(), *dp = d2.data_ptr<float>(), *mp = m2.data_ptr<float>();
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      const int64_t o = (b * T + t) * C;  // the state is updated in place: each element is read, then written
      wkv4_rows(wp, up, kp + o, vp + o, np + b * C, dp + b * C, mp + b * C, op + o, np + b * C, dp + b * C,
                mp + b * C, C, C);
    }
  return {out, n2, d2, m2};
}

// RWKV-5/6: r, log_w, k, v (B, T, H, N); u (H, N); state (B, H, N, N) [key, value]. Returns y
// (B, T, H, N) and the final state.
std::vector<at::Tensor> wkv5_seq(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& u, const at::Tensor& state) {
  check_seq({r, log_w, k, v, u, state}, "wkv5_seq");
  TORCH_CHECK(r.dim() == 4 && state.dim() == 4, "wkv5_seq: r must be (B, T, H, N) and the state (B, H, N, N)");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  for (const auto& t : {log_w, k, v}) TORCH_CHECK(t.sizes() == r.sizes(), "wkv5_seq: r, log_w, k, v must share a shape");
  TORCH_CHECK(N % 16 == 0 && u.numel() == H * N && state.size(0) == B && state.size(1) == H && state.size(2) == N &&
                  state.size(3) == N,
              "wkv5_seq: head size a multiple of 16, u (H, N), state (B, H, N, N)");
  at::Tensor y = at::empty_like(r), out = state.clone();
  const float *rp = r.data_ptr<float>(), *lwp = log_w.data_ptr<float>(), *kp = k.data_ptr<float>(),
              *vp = v.data_ptr<float>(), *up = u.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *sp = out.data_ptr<float>();
  parallel_rows(B * H, 1, T * N * N, [&](int64_t lo, int64_t hi) {
    std::vector<float> acc(N), decay(N);
    for (int64_t bh = lo; bh < hi; bh++) {
      const int64_t b = bh / H, h = bh % H;
      float* S = sp + bh * N * N;  // updated in place, token after token
      for (int64_t t = 0; t < T; t++) {
        const int64_t o = ((b * T + t) * H + h) * N;
        wkv5_head(rp + o, lwp + o, kp + o, vp + o, up + h * N, S, S, yp + o, N, acc.data(), decay.data());
      }
    }
  });
  return {y, out};
}

// RWKV-7: r, log_w, k, v, a, b (B, T, H, N); state (B, H, N, N) [value, key]. Returns y and the state.
std::vector<at::Tensor> wkv7_seq(const at::Tensor& r, const at::Tensor& log_w, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& a, const at::Tensor& b, const at::Tensor& state) {
  check_seq({r, log_w, k, v, a, b, state}, "wkv7_seq");
  TORCH_CHECK(r.dim() == 4 && state.dim() == 4, "wkv7_seq: r must be (B, T, H, N) and the state (B, H, N, N)");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  for (const auto& t : {log_w, k, v, a, b}) TORCH_CHECK(t.sizes() == r.sizes(), "wkv7_seq: r, log_w, k, v, a, b must share a shape");
  TORCH_CHECK(N % 16 == 0 && state.size(0) == B && state.size(1) == H && state.size(2) == N && state.size(3) == N,
              "wkv7_seq: head size a multiple of 16, state (B, H, N, N)");
  at::Tensor y = at::empty_like(r), out = state.clone();
  const float *rp = r.data_ptr<float>(), *lwp = log_w.data_ptr<float>(), *kp = k.data_ptr<float>(),
              *vp = v.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *sp = out.data_ptr<float>();
  parallel_rows(B * H, 1, T * N * N, [&](int64_t lo, int64_t hi) {
    std::vector<float> w(N);
    for (int64_t bh = lo; bh < hi; bh++) {
      const int64_t bi = bh / H, h = bh % H;
      float* S = sp + bh * N * N;  // updated in place, token after token
      for (int64_t t = 0; t < T; t++) {
        const int64_t o = ((bi * T + t) * H + h) * N;
        wkv7_head(rp + o, lwp + o, kp + o, vp + o, ap + o, bp + o, S, S, yp + o, N, w.data());
      }
    }
  });
  return {y, out};
}

// ---------------------------------------------------------------------------------------------
// A whole RWKV-7 decode step (models/rwkv7.py's RWKV7.step) in one call, for the weights as the
// inference layers store them (any Format above). Why: the step in PyTorch is ~240 small operator
// calls per layer around the products, ~10 ms a token on this project's 2-core Xeon where the
// products of the 0.1B shape take ~37 ms at one thread and ~24 ms at two; between them the pool's
// helper also falls asleep. Here the small work is a few loops over C floats and the products
// follow each other directly. Activations stay float32 throughout (the PyTorch step rounds them
// to a 16-bit model's dtype after every operation; here only the inputs of 16-bit products are).

// f(v) for 16 floats at a time over p[0, n), in place.
template <typename F>
inline void map16(float* p, int64_t n, const F& f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(p + i, f(_mm512_loadu_ps(p + i)));
  if (i < n) {
    const __mmask16 mask = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(p + i, mask, f(_mm512_maskz_loadu_ps(mask, p + i)));
  }
}

inline __m512 sigmoid512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// LayerNorm of each of M rows of C (biased variance, as F.layer_norm): y = (x - mean) / sqrt(var + eps) w + b.
void layer_norm_rows(const float* x, int64_t M, int64_t C, const float* w, const float* b, float eps, float* y) {
  for (int64_t m = 0; m < M; m++) {
    const float* xr = x + m * C;
    float* yr = y + m * C;
    float mean = 0, var = 0;
    for (int64_t c = 0; c < C; c++) mean += xr[c];
    mean /= float(C);
    for (int64_t c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
    const float inv = 1.0f / std::sqrt(var / float(C) + eps);
    for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * inv * w[c] + b[c];
  }
}

// The tensors of one layer, in the order rwkvkit/fused.py lists them.
enum Rwkv7Param : int {
  kLn1W, kLn1B, kLn2W, kLn2B, kMix, kW0, kA0, kV0, kKK, kKA, kRK,
  kW1, kW2, kA1, kA2, kV1, kV2, kG1, kG2,
  kRW, kRP, kKW, kKP, kVW, kVP, kOW, kOP, kLnxW, kLnxB, kFfnXK, kFKW, kFKP, kFVW, kFVP,
  kRwkv7LayerParams
};
// Before the layers: ln0 (weight, bias; empty when absent), ln_out (weight, bias), head (weight, params).
constexpr int kFusedHead = 6;

const float* f32_vector(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, "the fused step: ", what,
              " must be a contiguous float32 vector of ", n);
  return t.data_ptr<float>();
}

// A layer's product: the weight at q[i] and its scales at q[i + 1], checked to map n_in inputs to
// n_out outputs.
Weight layer_weight(const at::Tensor* q, int i, int64_t n_out, int64_t n_in, const char* op) {
  const Weight W = weight_of(q[i], q[i + 1], n_out, op);
  TORCH_CHECK(W.n == n_out && W.k == n_in, op, ": weight ", i, " has the wrong shape");
  return W;
}

// Where a product writes rows of ld float32 values (a fused step's scratch buffers).
OutRows float_rows(float* base, int64_t ld) { return OutRows{base, at::kFloat, ld}; }

// The state tensors a fused step reads and writes: contiguous float32, numel values each.
void check_states(std::initializer_list<const at::Tensor*> ts, int64_t numel, const char* op, const char* what) {
  for (const at::Tensor* t : ts)
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == numel, op, ": ", what);
}

// The logits of the final residual rows x (B, C): ln_out (p[2], p[3]) then the head (p[4], p[5]).
at::Tensor head_logits(const float* x, int64_t B, int64_t C, at::TensorList p, int64_t vocab, float eps,
                       const at::TensorOptions& options) {
  std::vector<float> h(B * C);
  layer_norm_rows(x, B, C, f32_vector(p[2], C, "ln_out"), f32_vector(p[3], C, "ln_out"), eps, h.data());
  const Weight hw = weight_of(p[4], p[5], vocab, "the fused step");
  TORCH_CHECK(hw.n == vocab && hw.k == C, "the fused step: the head must be (V, C)");
  at::Tensor logits = at::empty({B, vocab}, options);
  product(hw, h.data(), B, float_rows(logits.data_ptr<float>(), vocab));
  return logits;
}

// tokens' embeddings x (B, C) float32 -> logits (B, V) float32; the new state is written to the
// *_out tensors (shaped like the state: (L, B, C) and (L, B, H, N, N) float32).
at::Tensor rwkv7_step(const at::Tensor& x_in, at::TensorList p, const at::Tensor& att_prev, const at::Tensor& wkv,
                      const at::Tensor& ffn_prev, at::Tensor att_prev_out, at::Tensor wkv_out, at::Tensor ffn_prev_out,
                      int64_t n_head, int64_t ffn_dim, int64_t vocab, double ln_eps, double lnx_eps) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() == 2, "rwkv7_step: x must be (B, C) float32");
  TORCH_CHECK((int64_t(p.size()) - kFusedHead) % kRwkv7LayerParams == 0, "rwkv7_step: wrong number of tensors");
  const int64_t B = x_in.size(0), C = x_in.size(1), H = n_head, N = C / H;
  const int64_t L = (int64_t(p.size()) - kFusedHead) / kRwkv7LayerParams;
  TORCH_CHECK(H * N == C && N % 16 == 0, "rwkv7_step: C must be n_head heads of a multiple of 16");
  check_states({&att_prev, &ffn_prev, &att_prev_out, &ffn_prev_out}, L * B * C, "rwkv7_step",
               "token-shift states must be contiguous float32 (L, B, C)");
  check_states({&wkv, &wkv_out}, L * B * C * N, "rwkv7_step", "WKV states must be contiguous float32 (L, B, H, N, N)");
  const float feps = float(ln_eps), xeps = float(lnx_eps);
  const int64_t BC = B * C;

  at::Tensor xt = x_in.contiguous().clone();
  float* x = xt.data_ptr<float>();
  std::vector<float> h(BC), xs(6 * BC), r(BC), k(BC), v(BC), w(BC), a(BC), g(BC), kk(BC), bb(BC), y(BC),
      first(BC), t(BC);
  std::vector<float> low;  // the low-rank products' inner rows
  std::vector<float> hidden;
  const OutRows to_t = float_rows(t.data(), C);

  if (p[0].defined() && p[0].numel() > 0)
    layer_norm_rows(x, B, C, f32_vector(p[0], C, "ln0"), f32_vector(p[1], C, "ln0"), feps, x);

  for (int64_t l = 0; l < L; l++) {
    const at::Tensor* q = p.data() + kFusedHead + l * kRwkv7LayerParams;
    auto lin = [&](int i, int64_t n_out, int64_t n_in) { return layer_weight(q, i, n_out, n_in, "rwkv7_step"); };
    auto low_w = [&](int i) { return weight_of(q[i], at::Tensor(), q[i].size(0), "rwkv7_step"); };
    // A low-rank projection up(inner(down x)): down (D, C), up (C, D).
    auto lowrank = [&](int down, const float* in, float* out, auto inner) {
      const Weight d = low_w(down), u = low_w(down + 1);
      TORCH_CHECK(d.k == C && u.n == C && u.k == d.n, "rwkv7_step: low-rank matrices must be (D, C) and (C, D)");
      low.resize(B * d.n);
      product(d, in, B, float_rows(low.data(), d.n));
      inner(low.data(), B * d.n);
      product(u, low.data(), B, float_rows(out, C));
    };
    auto none = [](float*, int64_t) {};

    // time mixing
    const float* prev = att_prev.data_ptr<float>() + l * BC;
    layer_norm_rows(x, B, C, f32_vector(q[kLn1W], C, "ln1"), f32_vector(q[kLn1B], C, "ln1"), feps, h.data());
    const float* mix = f32_vector(q[kMix], 6 * C, "the mix vectors");
    for (int i = 0; i < 6; i++)
      for (int64_t m = 0; m < B; m++)
        for (int64_t c = 0; c < C; c++) {
          const int64_t j = m * C + c;
          xs[i * BC + j] = h[j] + (prev[j] - h[j]) * mix[i * C + c];
        }
    std::memcpy(att_prev_out.data_ptr<float>() + l * BC, h.data(), BC * sizeof(float));
    product(lin(kRW, C, C), xs.data(), B, float_rows(r.data(), C));
    product(lin(kKW, C, C), xs.data() + 2 * BC, B, float_rows(k.data(), C));
    product(lin(kVW, C, C), xs.data() + 3 * BC, B, float_rows(v.data(), C));
    lowrank(kW1, xs.data() + BC, w.data(), [](float* z, int64_t n) { for (int64_t i = 0; i < n; i++) z[i] = std::tanh(z[i]); });
    lowrank(kA1, xs.data() + 4 * BC, a.data(), none);
    lowrank(kG1, xs.data() + 5 * BC, g.data(), [](float* z, int64_t n) { map16(z, n, sigmoid512); });
    const float *w0 = f32_vector(q[kW0], C, "w0"), *a0 = f32_vector(q[kA0], C, "a0"),
                *k_k = f32_vector(q[kKK], C, "k_k"), *k_a = f32_vector(q[kKA], C, "k_a"),
                *r_k = f32_vector(q[kRK], C, "r_k");
    for (int64_t j = 0; j < BC; j++) {
      const int64_t c = j % C;
      a[j] += a0[c];
      w[j] += w0[c];
      kk[j] = k[j] * k_k[c];
    }
    map16(a.data(), BC, sigmoid512);
    // log w = -e^-0.5 sigmoid(w), the decay's bound (models/rwkv7.py MAX_LOG_DECAY_RATE)
    const __m512 max_rate = _mm512_set1_ps(-0.6065306597126334f);
    map16(w.data(), BC, [&](__m512 z) { return _mm512_mul_ps(max_rate, sigmoid512(z)); });
    for (int64_t hd = 0; hd < B * H; hd++) {  // kk = normalize(k k_k) per head, as F.normalize
      float* z = kk.data() + hd * N;
      float ss = 0;
      for (int64_t i = 0; i < N; i++) ss += z[i] * z[i];
      const float inv = 1.0f / std::max(std::sqrt(ss), 1e-12f);
      for (int64_t i = 0; i < N; i++) z[i] *= inv;
    }
    for (int64_t j = 0; j < BC; j++) {
      const int64_t c = j % C;
      k[j] *= 1.0f + (a[j] - 1.0f) * k_a[c];
      bb[j] = kk[j] * a[j];
      kk[j] = -kk[j];
    }
    if (l == 0) {
      first = v;  // layer 0's value is every later layer's v_first
    } else {
      const float* v0 = f32_vector(q[kV0], C, "v0");
      lowrank(kV1, xs.data() + 3 * BC, t.data(), none);
      for (int64_t j = 0; j < BC; j++) t[j] += v0[j % C];
      map16(t.data(), BC, sigmoid512);
      for (int64_t j = 0; j < BC; j++) v[j] += (first[j] - v[j]) * t[j];
    }
    float* state_out = wkv_out.data_ptr<float>() + l * B * H * N * N;
    wkv7_rows(r.data(), w.data(), k.data(), v.data(), kk.data(), bb.data(), wkv.data_ptr<float>() + l * B * H * N * N,
              state_out, y.data(), B * H, N);
    // GroupNorm over heads, the current token's bonus, the gate
    const float *lnx_w = f32_vector(q[kLnxW], C, "ln_x"), *lnx_b = f32_vector(q[kLnxB], C, "ln_x");
    for (int64_t hd = 0; hd < B * H; hd++) {
      const int64_t o = hd * N, c0 = (hd % H) * N;
      float mean = 0, var = 0, bonus = 0;
      for (int64_t i = 0; i < N; i++) mean += y[o + i];
      mean /= float(N);
      for (int64_t i = 0; i < N; i++) var += (y[o + i] - mean) * (y[o + i] - mean);
      const float inv = 1.0f / std::sqrt(var / float(N) + xeps);
      for (int64_t i = 0; i < N; i++) bonus += r[o + i] * k[o + i] * r_k[c0 + i];
      for (int64_t i = 0; i < N; i++)
        y[o + i] = (((y[o + i] - mean) * inv) * lnx_w[c0 + i] + lnx_b[c0 + i] + bonus * v[o + i]) * g[o + i];
    }
    product(lin(kOW, C, C), y.data(), B, to_t);
    for (int64_t j = 0; j < BC; j++) x[j] += t[j];

    // channel mixing
    const float* fprev = ffn_prev.data_ptr<float>() + l * BC;
    layer_norm_rows(x, B, C, f32_vector(q[kLn2W], C, "ln2"), f32_vector(q[kLn2B], C, "ln2"), feps, h.data());
    std::memcpy(ffn_prev_out.data_ptr<float>() + l * BC, h.data(), BC * sizeof(float));
    const float* x_k = f32_vector(q[kFfnXK], C, "ffn x_k");
    for (int64_t j = 0; j < BC; j++) h[j] += (fprev[j] - h[j]) * x_k[j % C];
    const Weight fk = lin(kFKW, ffn_dim, C);
    hidden.resize(B * fk.n);
    product(fk, h.data(), B, float_rows(hidden.data(), fk.n));
    for (auto& z : hidden) z = z > 0 ? z * z : 0.0f;
    const Weight fv = lin(kFVW, C, ffn_dim);
    product(fv, hidden.data(), B, to_t);
    for (int64_t j = 0; j < BC; j++) x[j] += t[j];
  }

  return head_logits(x, B, C, p, vocab, feps, x_in.options());
}

// RWKV-4/5/6's channel mixing on the residual rows x (B, C), in place: h = LayerNorm(x) (written to
// prev_out: the next token's shift), xk and xr lerped from prev toward h, then
// x += sigmoid(R xr) * (V relu(K xk)^2). q points at the layer's tensors: q[ln], q[ln + 1] the
// norm, q[mix] the (2, C) lerp weights, q[kw] .. q[kw + 5] the K, R, V weights with their params.
void channel_mix_gated(float* x, int64_t B, int64_t C, int64_t F, const at::Tensor* q, int ln, int mix, int kw,
                       const float* prev, float* prev_out, float eps, const char* op) {
  const int64_t BC = B * C;
  std::vector<float> h(BC), xs(2 * BC), r(BC), t(BC), hidden(B * F);
  layer_norm_rows(x, B, C, f32_vector(q[ln], C, "ln2"), f32_vector(q[ln + 1], C, "ln2"), eps, h.data());
  std::memcpy(prev_out, h.data(), BC * sizeof(float));
  const float* fmix = f32_vector(q[mix], 2 * C, "the FFN's mix vectors");
  for (int i = 0; i < 2; i++)
    for (int64_t j = 0; j < BC; j++) xs[i * BC + j] = prev[j] + fmix[i * C + j % C] * (h[j] - prev[j]);
  product(layer_weight(q, kw, F, C, op), xs.data(), B, float_rows(hidden.data(), F));
  for (auto& z : hidden) z = z > 0 ? z * z : 0.0f;
  product(layer_weight(q, kw + 2, C, C, op), xs.data() + BC, B, float_rows(r.data(), C));
  product(layer_weight(q, kw + 4, C, F, op), hidden.data(), B, float_rows(t.data(), C));
  map16(r.data(), BC, sigmoid512);
  for (int64_t j = 0; j < BC; j++) x[j] += r[j] * t[j];
}

// A whole RWKV-4 decode step (models/rwkv4.py's RWKV4.step), as rwkv7_step above: embeddings x
// (B, C) float32 -> logits (B, V); state and state_out are the five (L, B, C) float32 tensors of
// RWKV4State (att_x_prev, wkv_num, wkv_den, wkv_max, ffn_x_prev).
enum Rwkv4Param : int {
  k4Ln1W, k4Ln1B, k4Ln2W, k4Ln2B, k4AttMix, k4Decay, k4First, k4KW, k4KP, k4VW, k4VP, k4RW, k4RP, k4OW, k4OP,
  k4FfnMix, k4FKW, k4FKP, k4FRW, k4FRP, k4FVW, k4FVP,
  kRwkv4LayerParams
};

at::Tensor rwkv4_step(const at::Tensor& x_in, at::TensorList p, at::TensorList state, at::TensorList state_out,
                      int64_t ffn_dim, int64_t vocab, double ln_eps) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() == 2, "rwkv4_step: x must be (B, C) float32");
  TORCH_CHECK((int64_t(p.size()) - kFusedHead) % kRwkv4LayerParams == 0, "rwkv4_step: wrong number of tensors");
  const int64_t B = x_in.size(0), C = x_in.size(1), BC = B * C;
  const int64_t L = (int64_t(p.size()) - kFusedHead) / kRwkv4LayerParams;
  TORCH_CHECK(C % 16 == 0, "rwkv4_step: C must be a multiple of 16");
  TORCH_CHECK(state.size() == 5 && state_out.size() == 5, "rwkv4_step: the state is five tensors");
  for (size_t i = 0; i < 5; i++)
    for (const at::Tensor& t : {state[i], state_out[i]})
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == L * BC,
                  "rwkv4_step: every state tensor must be contiguous float32 (L, B, C)");
  const float feps = float(ln_eps);
  at::Tensor xt = x_in.contiguous().clone();
  float* x = xt.data_ptr<float>();
  std::vector<float> h(BC), xs(3 * BC), r(BC), k(BC), v(BC), y(BC), t(BC);
  auto at_layer = [&](const at::Tensor& s, int64_t l) { return s.data_ptr<float>() + l * BC; };

  if (p[0].numel() > 0) layer_norm_rows(x, B, C, f32_vector(p[0], C, "ln0"), f32_vector(p[1], C, "ln0"), feps, x);

  for (int64_t l = 0; l < L; l++) {
    const at::Tensor* q = p.data() + kFusedHead + l * kRwkv4LayerParams;
    auto lin = [&](int i, int64_t n_out, int64_t n_in) { return layer_weight(q, i, n_out, n_in, "rwkv4_step"); };
    // time mixing: lerp(prev, h, mix) = prev + mix (h - prev) for k, v, r
    const float* prev = at_layer(state[0], l);
    layer_norm_rows(x, B, C, f32_vector(q[k4Ln1W], C, "ln1"), f32_vector(q[k4Ln1B], C, "ln1"), feps, h.data());
    std::memcpy(at_layer(state_out[0], l), h.data(), BC * sizeof(float));
    const float* mix = f32_vector(q[k4AttMix], 3 * C, "the mix vectors");
    for (int i = 0; i < 3; i++)
      for (int64_t j = 0; j < BC; j++) xs[i * BC + j] = prev[j] + mix[i * C + j % C] * (h[j] - prev[j]);
    product(lin(k4KW, C, C), xs.data(), B, float_rows(k.data(), C));
    product(lin(k4VW, C, C), xs.data() + BC, B, float_rows(v.data(), C));
    product(lin(k4RW, C, C), xs.data() + 2 * BC, B, float_rows(r.data(), C));
    wkv4_rows(f32_vector(q[k4Decay], C, "decay"), f32_vector(q[k4First], C, "time_first"), k.data(), v.data(),
              at_layer(state[1], l), at_layer(state[2], l), at_layer(state[3], l), y.data(), at_layer(state_out[1], l),
              at_layer(state_out[2], l), at_layer(state_out[3], l), BC, C);
    map16(r.data(), BC, sigmoid512);
    for (int64_t j = 0; j < BC; j++) y[j] *= r[j];
    product(lin(k4OW, C, C), y.data(), B, float_rows(t.data(), C));
    for (int64_t j = 0; j < BC; j++) x[j] += t[j];

    channel_mix_gated(x, B, C, ffn_dim, q, k4Ln2W, k4FfnMix, k4FKW, at_layer(state[4], l), at_layer(state_out[4], l), feps,
                      "rwkv4_step");
  }
  return head_logits(x, B, C, p, vocab, feps, x_in.options());
}

// A whole RWKV-5 or RWKV-6 decode step (models/rwkv5.py, models/rwkv6.py), as rwkv7_step: the
// state is RWKV5State's (att_x_prev, wkv, ffn_x_prev). RWKV-5 mixes its inputs by fixed lerps
// (k, v, r and, in 5.2, the gate g) and has a fixed decay; RWKV-6 mixes them data-dependently
// (a shared tanh low-rank down-projection, one up-projection per input: w, k, v, r, g) and derives
// the decay per token (another low-rank projection). Both then run the multi-head WKV, GroupNorm
// over heads, the optional SiLU gate, and RWKV-4's receptance-gated FFN.
enum Rwkv56Param : int {
  k5Ln1W, k5Ln1B, k5Ln2W, k5Ln2B, k5Mix, k5MaaX, k5MaaW1, k5MaaW2, k5Decay, k5DecayW1, k5DecayW2, k5Bonus,
  k5RW, k5RP, k5KW, k5KP, k5VW, k5VP, k5GW, k5GP, k5OW, k5OP, k5LnxW, k5LnxB, k5FfnMix, k5FKW, k5FKP, k5FRW, k5FRP,
  k5FVW, k5FVP,
  kRwkv56LayerParams
};

at::Tensor rwkv56_step(const at::Tensor& x_in, at::TensorList p, const at::Tensor& att_prev, const at::Tensor& wkv,
                       const at::Tensor& ffn_prev, at::Tensor att_prev_out, at::Tensor wkv_out,
                       at::Tensor ffn_prev_out, int64_t version, int64_t n_head, int64_t head_size, int64_t ffn_dim,
                       int64_t vocab, double ln_eps, double lnx_eps) {
  TORCH_CHECK(version == 5 || version == 6, "rwkv56_step: version must be 5 or 6");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() == 2, "rwkv56_step: x must be (B, C) float32");
  TORCH_CHECK((int64_t(p.size()) - kFusedHead) % kRwkv56LayerParams == 0, "rwkv56_step: wrong number of tensors");
  const int64_t B = x_in.size(0), C = x_in.size(1), H = n_head, N = head_size, A = H * N;
  const int64_t L = (int64_t(p.size()) - kFusedHead) / kRwkv56LayerParams, BC = B * C, BA = B * A;
  TORCH_CHECK(N % 16 == 0, "rwkv56_step: the head size must be a multiple of 16");
  check_states({&att_prev, &ffn_prev, &att_prev_out, &ffn_prev_out}, L * BC, "rwkv56_step",
               "token-shift states must be contiguous float32 (L, B, C)");
  check_states({&wkv, &wkv_out}, L * B * H * N * N, "rwkv56_step",
               "WKV states must be contiguous float32 (L, B, H, N, N)");
  const float feps = float(ln_eps), xeps = float(lnx_eps);
  at::Tensor xt = x_in.contiguous().clone();
  float* x = xt.data_ptr<float>();
  std::vector<float> h(BC), delta(BC), xs(5 * BC), r(BA), k(BA), v(BA), g(BA), lw(BA), y(BA), t(std::max(BC, BA)),
      low;

  if (p[0].numel() > 0) layer_norm_rows(x, B, C, f32_vector(p[0], C, "ln0"), f32_vector(p[1], C, "ln0"), feps, x);

  for (int64_t l = 0; l < L; l++) {
    const at::Tensor* q = p.data() + kFusedHead + l * kRwkv56LayerParams;
    auto lin = [&](int i, int64_t n_out, int64_t n_in) { return layer_weight(q, i, n_out, n_in, "rwkv56_step"); };
    const bool gated = q[k5GW].numel() > 0;
    const float* prev = att_prev.data_ptr<float>() + l * BC;
    layer_norm_rows(x, B, C, f32_vector(q[k5Ln1W], C, "ln1"), f32_vector(q[k5Ln1B], C, "ln1"), feps, h.data());
    std::memcpy(att_prev_out.data_ptr<float>() + l * BC, h.data(), BC * sizeof(float));
    for (int64_t j = 0; j < BC; j++) delta[j] = prev[j] - h[j];
    // the inputs of the projections, xs[0..4] = w (RWKV-6 only), k, v, r, g
    if (version == 5) {
      const int64_t n_mix = gated ? 4 : 3;
      const float* mix = f32_vector(q[k5Mix], n_mix * C, "the mix vectors");
      const int slot[4] = {1, 2, 3, 4};  // k, v, r, g as stored
      for (int64_t i = 0; i < n_mix; i++)
        for (int64_t j = 0; j < BC; j++) xs[slot[i] * BC + j] = prev[j] + mix[i * C + j % C] * (h[j] - prev[j]);
      const float* lwc = f32_vector(q[k5Decay], A, "log_w");
      for (int64_t j = 0; j < BA; j++) lw[j] = lwc[j % A];
    } else {
      const float *maa = f32_vector(q[k5Mix], 5 * C, "time_maa"), *maa_x = f32_vector(q[k5MaaX], C, "time_maa_x");
      for (int64_t j = 0; j < BC; j++) t[j] = h[j] + delta[j] * maa_x[j % C];
      const Weight w1 = weight_of(q[k5MaaW1], at::Tensor(), q[k5MaaW1].size(0), "rwkv56_step");
      TORCH_CHECK(w1.k == C && w1.n % 5 == 0, "rwkv56_step: time_maa_w1 must be (5 D, C)");
      const int64_t D = w1.n / 5;
      low.resize(B * 5 * D);
      product(w1, t.data(), B, float_rows(low.data(), 5 * D));
      for (auto& z : low) z = std::tanh(z);
      const float* w2 = f32_vector(q[k5MaaW2], 5 * D * C, "time_maa_w2");  // (5, D, C)
      for (int i = 0; i < 5; i++)
        for (int64_t m = 0; m < B; m++) {
          float* dst = xs.data() + i * BC + m * C;
          std::memcpy(dst, maa + i * C, C * sizeof(float));
          for (int64_t d = 0; d < D; d++) {
            const float hd = low[m * 5 * D + i * D + d];
            const float* row = w2 + (i * D + d) * C;
            for (int64_t c = 0; c < C; c++) dst[c] += hd * row[c];
          }
          for (int64_t c = 0; c < C; c++) dst[c] = h[m * C + c] + delta[m * C + c] * dst[c];
        }
      // log w = -exp(time_decay + tanh(xw W1) W2), per token
      const Weight d1 = weight_of(q[k5DecayW1], at::Tensor(), q[k5DecayW1].size(0), "rwkv56_step");
      const Weight d2 = weight_of(q[k5DecayW2], at::Tensor(), q[k5DecayW2].size(0), "rwkv56_step");
      TORCH_CHECK(d1.k == C && d2.n == A && d2.k == d1.n, "rwkv56_step: time_decay_w1/w2 must be (D, C) and (A, D)");
      low.resize(B * d1.n);
      product(d1, xs.data(), B, float_rows(low.data(), d1.n));
      for (auto& z : low) z = std::tanh(z);
      product(d2, low.data(), B, float_rows(lw.data(), A));
      const float* decay = f32_vector(q[k5Decay], A, "time_decay");
      for (int64_t j = 0; j < BA; j++) lw[j] = -std::exp(decay[j % A] + lw[j]);
    }
    product(lin(k5KW, A, C), xs.data() + BC, B, float_rows(k.data(), A));
    product(lin(k5VW, A, C), xs.data() + 2 * BC, B, float_rows(v.data(), A));
    product(lin(k5RW, A, C), xs.data() + 3 * BC, B, float_rows(r.data(), A));
    wkv5_rows(r.data(), lw.data(), A, k.data(), v.data(), f32_vector(q[k5Bonus], A, "the bonus"),
              wkv.data_ptr<float>() + l * B * H * N * N, wkv_out.data_ptr<float>() + l * B * H * N * N, y.data(),
              B, H, N);
    const float *lnx_w = f32_vector(q[k5LnxW], A, "ln_x"), *lnx_b = f32_vector(q[k5LnxB], A, "ln_x");
    for (int64_t hd = 0; hd < B * H; hd++) {  // GroupNorm over heads
      const int64_t o = hd * N, c0 = (hd % H) * N;
      float mean = 0, var = 0;
      for (int64_t i = 0; i < N; i++) mean += y[o + i];
      mean /= float(N);
      for (int64_t i = 0; i < N; i++) var += (y[o + i] - mean) * (y[o + i] - mean);
      const float inv = 1.0f / std::sqrt(var / float(N) + xeps);
      for (int64_t i = 0; i < N; i++) y[o + i] = (y[o + i] - mean) * inv * lnx_w[c0 + i] + lnx_b[c0 + i];
    }
    if (gated) {  // y *= silu(G xg)
      product(lin(k5GW, A, C), xs.data() + 4 * BC, B, float_rows(g.data(), A));
      for (int64_t j = 0; j < BA; j++) y[j] *= g[j];
      map16(g.data(), BA, sigmoid512);
      for (int64_t j = 0; j < BA; j++) y[j] *= g[j];
    }
    product(lin(k5OW, C, A), y.data(), B, float_rows(t.data(), C));
    for (int64_t j = 0; j < BC; j++) x[j] += t[j];

    channel_mix_gated(x, B, C, ffn_dim, q, k5Ln2W, k5FfnMix, k5FKW, ffn_prev.data_ptr<float>() + l * BC,
                      ffn_prev_out.data_ptr<float>() + l * BC, feps, "rwkv56_step");
  }
  return head_logits(x, B, C, p, vocab, feps, x_in.options());
}

}  // namespace

TORCH_LIBRARY(rwkvkit, m) {
  m.def("linear_f32(Tensor x, Tensor w) -> Tensor");
  m.def("linear_bf16(Tensor x, Tensor w) -> Tensor");
  m.def("linear_f16(Tensor x, Tensor w) -> Tensor");
  m.def("linear_q8(Tensor x, Tensor packed, Tensor scale, int n_out) -> Tensor");
  m.def("linear_q4(Tensor x, Tensor packed, Tensor scale_min, int n_out) -> Tensor");
  m.def("wkv7_step(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state, Tensor(a!) out) -> Tensor");
  m.def("wkv4_step(Tensor w, Tensor u, Tensor k, Tensor v, Tensor num, Tensor den, Tensor max) -> Tensor[]");
  m.def("wkv5_step(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor u, Tensor state, Tensor(a!) out) -> Tensor");
  m.def("rwkv7_step(Tensor x, Tensor[] params, Tensor att_prev, Tensor wkv, Tensor ffn_prev, Tensor(a!) att_prev_out, "
        "Tensor(b!) wkv_out, Tensor(c!) ffn_prev_out, int n_head, int ffn_dim, int vocab, float ln_eps, "
        "float lnx_eps) -> Tensor");
  m.def("rwkv56_step(Tensor x, Tensor[] params, Tensor att_prev, Tensor wkv, Tensor ffn_prev, Tensor(a!) att_prev_out, "
        "Tensor(b!) wkv_out, Tensor(c!) ffn_prev_out, int version, int n_head, int head_size, int ffn_dim, int vocab, "
        "float ln_eps, float lnx_eps) -> Tensor");
  m.def("wkv4_seq(Tensor w, Tensor u, Tensor k, Tensor v, Tensor num, Tensor den, Tensor max) -> Tensor[]");
  m.def("wkv5_seq(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor u, Tensor state) -> Tensor[]");
  m.def("wkv7_seq(Tensor r, Tensor log_w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state) -> Tensor[]");
  m.def("rwkv4_step(Tensor x, Tensor[] params, Tensor[] state, Tensor(a!)[] state_out, int ffn_dim, int vocab, "
        "float ln_eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(rwkvkit, CPU, m) {
  m.impl("linear_f32", &linear_f32);
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_f16", &linear_f16);
  m.impl("linear_q8", &linear_q8);
  m.impl("linear_q4", &linear_q4);
  m.impl("wkv7_step", &wkv7_step);
  m.impl("wkv4_step", &wkv4_step);
  m.impl("wkv5_step", &wkv5_step);
  m.impl("rwkv7_step", &rwkv7_step);
  m.impl("rwkv4_step", &rwkv4_step);
  m.impl("rwkv56_step", &rwkv56_step);
  m.impl("wkv4_seq", &wkv4_seq);
  m.impl("wkv5_seq", &wkv5_seq);
  m.impl("wkv7_seq", &wkv7_seq);
}
