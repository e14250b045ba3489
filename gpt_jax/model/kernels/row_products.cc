// Row-invariant products for XLA:CPU, called through XLA's FFI.
//
//   gpt_jax_rows_by_columns:  x [M, K] times w [K, N] -> y [M, N], or batched: x [R, M, K'] times w [R, K, N] ->
//                             y [R, M, N'] (each of the R products on its own, as attention's are), with the
//                             first K' <= K rows and N' <= N columns of each weight: a view of a longer cache
//   gpt_jax_rows_by_rows:     x [M, K] times w [N, K] (a weight stored with its output axis first, like a tied
//                             embedding) -> y [M, N]
//
// Every output element is computed by one fixed sequence of fused multiply-adds that depends on K alone:
// rows_by_columns adds x[m, k] * w[k, n] for k = 0, 1, ..., K - 1 into one accumulator; rows_by_rows keeps 16
// accumulators (accumulator l takes the k with k % 16 == l, in order) and adds them up in a fixed tree. How many
// rows are multiplied together, how the work is split into register blocks or between threads, and the vector
// width of the machine (AVX-512, AVX2 or none) change which elements are computed together, never the sequence
// that gives one of them: a row's values are bit-identical at any row count, and on any x86-64 machine.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // values per vector step (two 8-wide halves on AVX2, 16 scalars without vectors)

#if defined(__AVX512F__)
struct V {
  __m512 v;
};
inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline V zero() { return {_mm512_setzero_ps()}; }
inline V broadcast(float a) { return {_mm512_set1_ps(a)}; }
inline V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
#elif defined(__AVX2__) && defined(__FMA__)
struct V {
  __m256 lo, hi;
};
inline V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void store(float* p, V a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V broadcast(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
inline V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
#else
struct V {
  float f[kLanes];
};
inline V load(const float* p) {
  V a;
  std::memcpy(a.f, p, sizeof a.f);
  return a;
}
inline void store(float* p, V a) { std::memcpy(p, a.f, sizeof a.f); }
inline V broadcast(float b) {
  V a;
  for (float& x : a.f) x = b;
  return a;
}
inline V zero() { return broadcast(0.f); }
inline V fma(V a, V b, V c) {
  V r;
  for (int i = 0; i < kLanes; ++i) r.f[i] = std::fma(a.f[i], b.f[i], c.f[i]);
  return r;
}
#endif

// The blocks below hold their accumulators as the machine's own vectors, P (a V is kPieces of them): GCC keeps
// arrays of those in registers, where it stored every accumulator of an array of two-register structs to the
// stack after each multiply-add (measured: AVX2 builds at a quarter of the FMA units' rate).
#if defined(__AVX512F__)
using P = __m512;
constexpr int kPieces = 1;
inline P pload(const float* p) { return _mm512_loadu_ps(p); }
inline void pstore(float* p, P a) { _mm512_storeu_ps(p, a); }
inline P pzero() { return _mm512_setzero_ps(); }
inline P pbroadcast(float a) { return _mm512_set1_ps(a); }
inline P pfma(P a, P b, P c) { return _mm512_fmadd_ps(a, b, c); }
inline V join(const P* parts) { return {parts[0]}; }
#elif defined(__AVX2__) && defined(__FMA__)
using P = __m256;
constexpr int kPieces = 2;
inline P pload(const float* p) { return _mm256_loadu_ps(p); }
inline void pstore(float* p, P a) { _mm256_storeu_ps(p, a); }
inline P pzero() { return _mm256_setzero_ps(); }
inline P pbroadcast(float a) { return _mm256_set1_ps(a); }
inline P pfma(P a, P b, P c) { return _mm256_fmadd_ps(a, b, c); }
inline V join(const P* parts) { return {parts[0], parts[1]}; }
#else
using P = V;
constexpr int kPieces = 1;
inline P pload(const float* p) { return load(p); }
inline void pstore(float* p, P a) { store(p, a); }
inline P pzero() { return zero(); }
inline P pbroadcast(float a) { return broadcast(a); }
inline P pfma(P a, P b, P c) { return fma(a, b, c); }
inline V join(const P* parts) { return parts[0]; }
#endif
constexpr int64_t kPieceLanes = kLanes / kPieces;

inline void prefetch(const float* p) { __builtin_prefetch(p, 0, 3); }

// Register blocks, in vectors of 16 values, sized to the register file (they decide which elements are computed
// together, never an element's sequence): AVX-512 has 32 registers of one vector each; on AVX2 a vector is two of
// 16 registers, so its blocks hold a quarter as many vectors (larger ones spill accumulators to memory, measured
// 0.56x of XLA's product at 64 rows).
#if defined(__AVX512F__) || !(defined(__AVX2__) && defined(__FMA__))
constexpr int kColumnVectors = 4;      // x [M, K] w [K, N], several rows: 6 rows x 64 columns
constexpr int kLoneColumnVectors = 16;  // one row: 256 columns per pass over the weight
constexpr int kRowRows = 4;            // x [M, K] w [N, K], several rows: 4 rows x 4 weight rows
constexpr int kRowColumns = 4;
constexpr int kLoneRowColumns = 16;    // one row: 16 weight rows at once
#else
constexpr int kColumnVectors = 1;      // 6 rows x 16 columns: 12 accumulator registers
constexpr int kLoneColumnVectors = 4;  // 64 columns: 8
constexpr int kRowRows = 2;            // 2 rows x 2 weight rows: 8
constexpr int kRowColumns = 2;
constexpr int kLoneRowColumns = 4;     // 8
#endif

// The fixed tree over one vector's 16 accumulators: t[i] += t[i + w] for w = 8, 4, 2, 1, then t[0].
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
inline float add_halves(__m256 s8) {  // from the level of width 4 on
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
#endif
#if defined(__AVX512F__)
inline float add_lanes(V a) {
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
  return add_halves(_mm256_add_ps(_mm512_castps512_ps256(a.v), hi));
}
#elif defined(__AVX2__) && defined(__FMA__)
inline float add_lanes(V a) { return add_halves(_mm256_add_ps(a.lo, a.hi)); }
#else
inline float add_lanes(V a) {
  float t[kLanes];
  store(t, a);
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) t[i] = t[i] + t[i + width];
  return t[0];
}
#endif

struct Shape {
  const float* x;
  const float* w;
  float* y;
  int64_t M, K, N;
  int64_t ldw;  // x [M, K] times w [K, N]: the distance between weight rows (N, or more for a view of a wider w)
};

// ---- x [M, K] times w [K, N] ------------------------------------------------------------------------------------

constexpr int64_t kPrefetchRows = 8;  // weight rows read ahead

// rows m0..m0+R-1 times columns n0..n0+16C-1, over k0..k1-1, with R*C accumulators in registers; they start
// from zero at k0 = 0 and otherwise from the partial sums stored in y (a float stored and loaded is the same
// float, so splitting K into spans leaves each element's sequence as it is)
template <int R, int C>
inline void columns_block(const Shape& s, int64_t m0, int64_t n0, int64_t k0, int64_t k1) {
  constexpr int CP = C * kPieces;  // accumulators per row, in pieces of kPieceLanes columns
  P acc[R][CP];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CP; ++c) acc[r][c] = k0 ? pload(s.y + (m0 + r) * s.N + n0 + c * kPieceLanes) : pzero();
  const float* wp = s.w + k0 * s.ldw + n0;
  const float* xp = s.x + m0 * s.K;
  for (int64_t k = k0; k < k1; ++k, wp += s.ldw) {
    // a lone row's wide stripes are followed by the hardware prefetcher after one line in four; the narrower
    // stripes of several rows are not, so each of their lines is prefetched (measured: 8 rows 1.2x from memory)
    if (k + kPrefetchRows < k1)
      for (int c = 0; c < C; c += (R == 1 ? 4 : 1)) prefetch(wp + kPrefetchRows * s.ldw + c * kLanes);
    P wv[CP];
    for (int c = 0; c < CP; ++c) wv[c] = pload(wp + c * kPieceLanes);
    for (int r = 0; r < R; ++r) {
      const P xv = pbroadcast(xp[r * s.K + k]);
      for (int c = 0; c < CP; ++c) acc[r][c] = pfma(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CP; ++c) pstore(s.y + (m0 + r) * s.N + n0 + c * kPieceLanes, acc[r][c]);
}

constexpr int64_t kDepth = 256;  // contracted values per span when rows come in several blocks

// all rows times 16C columns from n0: six rows at a time, then the rest. With more than one block of rows, K is
// taken in spans of kDepth so that the weight's span stays in the cache while every block of rows uses it.
template <int C>
void columns_rows(const Shape& s, int64_t n0) {
  const int64_t depth = s.M > 6 ? kDepth : s.K;
  for (int64_t k0 = 0; k0 < s.K; k0 += depth) {
    const int64_t k1 = std::min(s.K, k0 + depth);
    int64_t m = 0;
    for (; m + 6 <= s.M; m += 6) columns_block<6, C>(s, m, n0, k0, k1);
    switch (s.M - m) {
      case 5: columns_block<5, C>(s, m, n0, k0, k1); break;
      case 4: columns_block<4, C>(s, m, n0, k0, k1); break;
      case 3: columns_block<3, C>(s, m, n0, k0, k1); break;
      case 2: columns_block<2, C>(s, m, n0, k0, k1); break;
      case 1: columns_block<1, C>(s, m, n0, k0, k1); break;
      default: break;
    }
  }
}

// columns that do not fill a vector: one at a time, the same sequence of fused multiply-adds, eight rows at once
// (eight independent chains keep the FMA units busy: a row sum, x times a column of ones, is latency-bound alone)
void columns_scalar(const Shape& s, int64_t n0, int64_t n1) {
  constexpr int64_t kRows = 8;
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m = 0;
    for (; m + kRows <= s.M; m += kRows) {
      float acc[kRows] = {};
      const float* xp = s.x + m * s.K;
      for (int64_t k = 0; k < s.K; ++k) {
        const float wk = s.w[k * s.ldw + n];
        for (int64_t r = 0; r < kRows; ++r) acc[r] = std::fma(xp[r * s.K + k], wk, acc[r]);
      }
      for (int64_t r = 0; r < kRows; ++r) s.y[(m + r) * s.N + n] = acc[r];
    }
    for (; m < s.M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < s.K; ++k) acc = std::fma(s.x[m * s.K + k], s.w[k * s.ldw + n], acc);
      s.y[m * s.N + n] = acc;
    }
  }
}

// columns n0..n1-1 of at most kPanelRows rows: one row streams up to 16 * kLoneColumnVectors columns per pass
// over the weight, more rows 16 * kColumnVectors
void columns_panel(const Shape& s, int64_t n0, int64_t n1) {
  int64_t n = n0;
  constexpr int64_t lone = kLanes * kLoneColumnVectors, half = lone / 2, block = kLanes * kColumnVectors;
  if (s.M == 1) {
    for (; n + lone <= n1; n += lone) columns_block<1, kLoneColumnVectors>(s, 0, n, 0, s.K);
    for (; n + half <= n1; n += half) columns_block<1, kLoneColumnVectors / 2>(s, 0, n, 0, s.K);
  }
  for (; n + block <= n1; n += block) columns_rows<kColumnVectors>(s, n);
  for (; n + kLanes <= n1; n += kLanes) columns_rows<1>(s, n);
  if (n < n1) columns_scalar(s, n, n1);
}

constexpr int64_t kPanelRows = 384;  // a decode step's rows in one panel: the weight is read once

// columns n0..n1-1: the rows in panels of kPanelRows, so a prefill's many rows are read from the cache once per
// panel rather than once per block of columns (the order of the work, not of any element's sequence)
void columns_span(const Shape& s, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < s.M; m += kPanelRows) {
    Shape panel = s;
    panel.x += m * s.K;
    panel.y += m * s.N;
    panel.M = std::min(kPanelRows, s.M - m);
    columns_panel(panel, n0, n1);
  }
}

// ---- x [M, K] times w [N, K] ------------------------------------------------------------------------------------

template <int R, int C>
inline void rows_block(const Shape& s, int64_t m0, int64_t n0) {
  P acc[R][C][kPieces];  // accumulator l of a V is lane l % kPieceLanes of piece l / kPieceLanes
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int q = 0; q < kPieces; ++q) acc[r][c][q] = pzero();
  const int64_t whole = s.K / kLanes * kLanes;
  const float* xp = s.x + m0 * s.K;
  const float* wp = s.w + n0 * s.K;
  auto step = [&](const float* const* wrow, const float* const* xrow) {
    P wv[C][kPieces];
    for (int c = 0; c < C; ++c)
      for (int q = 0; q < kPieces; ++q) wv[c][q] = pload(wrow[c] + q * kPieceLanes);
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < kPieces; ++q) {
        const P xv = pload(xrow[r] + q * kPieceLanes);
        for (int c = 0; c < C; ++c) acc[r][c][q] = pfma(xv, wv[c][q], acc[r][c][q]);
      }
  };
  const float* wrow[C];
  const float* xrow[R];
  for (int64_t k = 0; k < whole; k += kLanes) {
    for (int c = 0; c < C; ++c) wrow[c] = wp + c * s.K + k;
    for (int r = 0; r < R; ++r) xrow[r] = xp + r * s.K + k;
    step(wrow, xrow);
  }
  if (whole < s.K) {  // the last K % 16 values, zero-padded (zeros add exact zeros)
    float wtail[C][kLanes] = {}, xtail[R][kLanes] = {};
    for (int c = 0; c < C; ++c) std::memcpy(wtail[c], wp + c * s.K + whole, (s.K - whole) * sizeof(float));
    for (int r = 0; r < R; ++r) std::memcpy(xtail[r], xp + r * s.K + whole, (s.K - whole) * sizeof(float));
    for (int c = 0; c < C; ++c) wrow[c] = wtail[c];
    for (int r = 0; r < R; ++r) xrow[r] = xtail[r];
    step(wrow, xrow);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) s.y[(m0 + r) * s.N + n0 + c] = add_lanes(join(acc[r][c]));
}

// all rows times C weight rows from n0: kRowRows rows at a time, then the rest
template <int C>
void rows_rows(const Shape& s, int64_t n0) {
  int64_t m = 0;
  for (; m + kRowRows <= s.M; m += kRowRows) rows_block<kRowRows, C>(s, m, n0);
  switch (s.M - m) {
    case 3: rows_block<3, C>(s, m, n0); break;
    case 2: rows_block<2, C>(s, m, n0); break;
    case 1: rows_block<1, C>(s, m, n0); break;
    default: break;
  }
}

// weight rows n0..n1-1: one row streams kLoneRowColumns weight rows at once, more rows kRowColumns
void rows_span(const Shape& s, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (s.M == 1)
    for (; n + kLoneRowColumns <= n1; n += kLoneRowColumns) rows_block<1, kLoneRowColumns>(s, 0, n);
  for (; n + kRowColumns <= n1; n += kRowColumns) rows_rows<kRowColumns>(s, n);
  for (; n < n1; ++n) rows_rows<1>(s, n);
}

// ---- threads ----------------------------------------------------------------------------------------------------

// Units of work handed out from a counter to the calling thread and to helpers on XLA's intra-op pool; the caller
// takes units too, so the product finishes even when no helper ever starts.
// With a batch of R products, unit u is unit u % per_product of product u / per_product.
struct Work {
  Shape shape;  // of product 0
  void (*span)(const Shape&, int64_t, int64_t);
  int64_t width, per_product, units, weight_stride;  // weight_stride: between the R products' weights
  std::atomic<int64_t> next{0}, done{0};
  void run() {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      const int64_t r = u / per_product, c = u % per_product;
      Shape s = shape;
      s.x += r * s.M * s.K;
      s.w += r * weight_stride;
      s.y += r * s.M * s.N;
      span(s, c * width, std::min(s.N, (c + 1) * width));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Output columns per unit of work: `widest` where that still makes 8 units or more (work for every thread with
// little left over), else narrower, down to `narrowest`.
int64_t unit_width(int64_t N, int64_t narrowest, int64_t widest) {
  int64_t width = widest;
  while (width > narrowest && N < 8 * width) width /= 2;
  return width;
}

ffi::Error product(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, bool weight_rows) {
  auto wd = w.dimensions();
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  const bool batched = wd.size() == 3 && !weight_rows;
  if (wd.size() != 2 && !batched)
    return ffi::Error::InvalidArgument("row products: the weight must be [K, N], [N, K] or [R, K, N]");
  const int64_t R = batched ? wd[0] : 1;
  int64_t K = wd[wd.size() - (weight_rows ? 1 : 2)], N = wd[wd.size() - (weight_rows ? 2 : 1)];
  const int64_t ldw = batched ? wd[2] : N;
  // batched: a view of each weight, its first K rows (x's last axis) and first N columns (the result's last axis)
  if (batched && xd.size() == 3 && yd.size() == 3 && xd.back() <= K && yd.back() <= N) K = xd.back(), N = yd.back();
  if (xd.size() < 1 || xd.back() != K || (batched && (xd.size() != 3 || xd[0] != R)))
    return ffi::Error::InvalidArgument("row products: x must be [M, K], or [R, M, K'] beside a weight [R, K, N]");
  const int64_t M = K && R ? x.element_count() / (K * R) : 0;
  if (y->element_count() != R * M * N)
    return ffi::Error::InvalidArgument("row products: the result must be [M, N] or [R, M, N']");
  if (R * M * N == 0) return ffi::Error::Success();
  if (K == 0) {
    std::fill(y->typed_data(), y->typed_data() + R * M * N, 0.f);
    return ffi::Error::Success();
  }
  auto work = std::make_shared<Work>();
  work->shape = {x.typed_data(), w.typed_data(), y->typed_data(), M, K, N, ldw};
  work->span = weight_rows ? rows_span : columns_span;
  work->width = unit_width(N, weight_rows ? 16 : 64, weight_rows ? 16 : 256);
  work->per_product = (N + work->width - 1) / work->width;
  work->units = R * work->per_product;
  work->weight_stride = batched ? wd[1] * wd[2] : 0;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->units) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->done.load(std::memory_order_acquire) < work->units) std::this_thread::yield();
  return ffi::Error::Success();
}

template <bool WeightRows>
ffi::Error product_of(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                      ffi::ResultBuffer<ffi::F32> y) {
  return product(pool, x, w, y, WeightRows);
}

// Both handlers take the intra-op thread pool, x and w, and return y.
auto binding() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<
      ffi::Buffer<ffi::F32>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(gpt_jax_rows_by_columns, product_of<false>, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(gpt_jax_rows_by_rows, product_of<true>, binding());
