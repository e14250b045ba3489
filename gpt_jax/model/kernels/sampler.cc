// The sampler's top-k and top-p cut for XLA:CPU, called through XLA's FFI.
//
//   gpt_jax_keep_top:  keys [B, V] uint32, weights [B, V] uint32, budget [B] uint32 ->
//                      boundary [B] uint32, last [B] int32
//
// A row's tokens are ranked by key, descending, ties by lower index. Token i is kept when the weight of the
// tokens ranked above it is below the row's budget, so the kept tokens are a prefix of the ranking; its last
// token is the first one at which the running weight reaches the budget. The kernel returns that token's key
// (boundary) and index (last): token i is kept exactly when key[i] > boundary, or key[i] == boundary and
// i <= last. Where the whole row's weight is below the budget every token is kept (boundary 0, last V - 1); a
// budget of 0 keeps nothing (boundary 0xFFFFFFFF, last -1).
//
// Sums are of integers (64-bit), so the answer is exact and does not depend on how the work is split: a radix
// select on the key, 8 bits at a time from the top. The first pass adds each token's weight to the bin of its
// key's top byte, the crossing bin is found from the highest bin down, and a second pass gathers that bin's
// tokens, in index order, for the remaining three bytes and the ties. Rows are independent; the intra-op threads
// take rows in turn.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Token {
  uint32_t key, weight;
  int32_t index;
};

struct Cut {
  uint32_t boundary;
  int32_t last;
};

// The bin (of 256) where the running weight from the highest bin down reaches `budget`, starting at `above`;
// `above` becomes the weight of the bins above it. -1 where no bin reaches it.
int crossing(const uint64_t* bins, uint64_t budget, uint64_t& above) {
  for (int d = 255; d >= 0; --d) {
    if (above + bins[d] >= budget) return d;
    above += bins[d];
  }
  return -1;
}

Cut cut_row(const uint32_t* keys, const uint32_t* weights, int64_t V, uint64_t budget, std::vector<Token>& bin) {
  if (budget == 0) return {0xFFFFFFFFu, -1};
  uint64_t part[4][256] = {};  // four histograms in turn, so tokens of one bin do not wait on each other's adds
  int64_t i = 0;
  for (; i + 4 <= V; i += 4)
    for (int j = 0; j < 4; ++j) part[j][keys[i + j] >> 24] += weights[i + j];
  for (; i < V; ++i) part[0][keys[i] >> 24] += weights[i];
  uint64_t bins[256];
  for (int d = 0; d < 256; ++d) bins[d] = part[0][d] + part[1][d] + part[2][d] + part[3][d];
  uint64_t above = 0;
  const int top = crossing(bins, budget, above);
  if (top < 0) return {0, static_cast<int32_t>(V - 1)};  // the whole row is below the budget
  bin.clear();
  for (i = 0; i < V; ++i)
    if (static_cast<int>(keys[i] >> 24) == top) bin.push_back({keys[i], weights[i], static_cast<int32_t>(i)});
  uint32_t prefix = static_cast<uint32_t>(top) << 24;
  for (int shift = 16; shift >= 0; shift -= 8) {  // the crossing bin of each lower byte, among the bin's tokens
    std::fill(bins, bins + 256, 0);
    for (const Token& t : bin) bins[(t.key >> shift) & 255] += t.weight;
    const uint32_t d = static_cast<uint32_t>(crossing(bins, budget, above));  // found: the bin reaches the budget
    prefix |= d << shift;
    bin.erase(std::remove_if(bin.begin(), bin.end(), [&](const Token& t) { return ((t.key >> shift) & 255) != d; }),
              bin.end());
  }
  for (const Token& t : bin) {  // the tied tokens of key `prefix`, in index order
    above += t.weight;
    if (above >= budget) return {prefix, t.index};
  }
  return {prefix, bin.back().index};  // not reached: the tied tokens' weight reaches the budget
}

struct Work {
  const uint32_t *keys, *weights, *budget;
  uint32_t* boundary;
  int32_t* last;
  int64_t B, V;
  std::atomic<int64_t> next{0}, done{0};
  void run() {
    std::vector<Token> bin;
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < B;) {
      const Cut c = cut_row(keys + b * V, weights + b * V, V, budget[b], bin);
      boundary[b] = c.boundary;
      last[b] = c.last;
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error keep_top(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::U32> weights,
                    ffi::Buffer<ffi::U32> budget, ffi::ResultBuffer<ffi::U32> boundary,
                    ffi::ResultBuffer<ffi::S32> last) {
  auto kd = keys.dimensions();
  if (kd.size() != 2 || weights.dimensions().size() != 2 || weights.dimensions()[0] != kd[0] ||
      weights.dimensions()[1] != kd[1])
    return ffi::Error::InvalidArgument("keep_top: keys and weights must both be [B, V]");
  const int64_t B = kd[0], V = kd[1];
  if (budget.element_count() != B || boundary->element_count() != B || last->element_count() != B)
    return ffi::Error::InvalidArgument("keep_top: budget, boundary and last must be [B]");
  if (B == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  work->keys = keys.typed_data();
  work->weights = weights.typed_data();
  work->budget = budget.typed_data();
  work->boundary = boundary->typed_data();
  work->last = last->typed_data();
  work->B = B;
  work->V = V;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), B) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->run(); });
  work->run();
  while (work->done.load(std::memory_order_acquire) < B) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(gpt_jax_keep_top, keep_top,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
