// CPU kernels of the SegBlocks block ops (see segblocks/blocks/kernels.py for the semantics).
//
// Registered as torch.ops.segblocks_C.*; the Python-defined segblocks:: custom ops call them for
// CPU tensors. Loops are at::parallel_for, which for an OpenMP build of torch is an inline
// `#pragma omp parallel`: the library must be compiled with -fopenmp (extension.py does so) to
// use more than one thread. No two threads write the same element, and every element is computed
// by the same operations in the same order however the loop is split, so results are
// deterministic and do not depend on the number of threads: the forwards split over destination
// blocks or plan entries, the in-place halo adjoint over channel ranges, pad_blocks' backward
// over source blocks.
//
// Layout ("flat store"): a contiguous [R + 1, C] tensor holding the padded HR blocks
// [Nh, s+pt+pb, s+pl+pr], then the padded LR blocks [Nl, t+pt+pb, t+pl+pr] (t = s/2), channels
// last, then one row R (the pad-value row). pad_blocks keeps the HR and LR parts in two buffers.
//
// Everything here is memory-bound. Plans and cell lists are validated once up front (so the hot
// loops index without checks), a task item is a whole block where possible (one cell decode,
// one memcpy per row of pixels), and halo copies go by runs of consecutive rows.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

namespace segblocks_kernels {
namespace {

using at::IntArrayRef;
using at::Tensor;

// Each parallel task moves at least this many bytes (smaller problems run on one thread).
constexpr int64_t kTaskBytes = 1 << 16;

inline int64_t grain_for(int64_t bytes_per_item) {
  return std::max<int64_t>(1, kTaskBytes / std::max<int64_t>(1, bytes_per_item));
}

// ----------------------------------------------------------------------------- plan

struct Plan {
  Tensor copy_dst, copy_src, avg_dst, avg_src, const_dst;
  int64_t kc = 0, ka = 0, kz = 0;
  const int64_t* cd = nullptr;
  const int64_t* cs = nullptr;
  const int64_t* ad = nullptr;
  const int64_t* as = nullptr;
  const int64_t* kd = nullptr;
};

Tensor index_arg(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "segblocks: ", name, " must be an int64 tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1, "segblocks: ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "segblocks: ", name, " must be on the CPU, got ", t.device());
  return t.contiguous();
}

// Every index in [0, hi); one vectorisable pass (cheap next to moving C channels per index).
void check_range(const Tensor& idx, int64_t hi, const char* name) {
  const int64_t* p = idx.const_data_ptr<int64_t>();
  const int64_t n = idx.numel();
  // Negative indices become huge as unsigned: one max (four independent chains) checks both ends.
  uint64_t m[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) m[j] = std::max(m[j], static_cast<uint64_t>(p[i + j]));
  }
  for (; i < n; ++i) m[0] = std::max(m[0], static_cast<uint64_t>(p[i]));
  if (std::max(std::max(m[0], m[1]), std::max(m[2], m[3])) < static_cast<uint64_t>(hi)) return;
  const auto [lo, up] = std::minmax_element(p, p + n);
  TORCH_CHECK(false, "segblocks: ", name, " holds indices in [", *lo, ", ", *up,
              "] but the valid range is [0, ", hi, ")");
}

Plan make_plan(const Tensor& copy_dst, const Tensor& copy_src, const Tensor& avg_dst,
               const Tensor& avg_src, const Tensor& const_dst, int64_t rows) {
  Plan p;
  p.copy_dst = index_arg(copy_dst, "copy_dst");
  p.copy_src = index_arg(copy_src, "copy_src");
  p.avg_dst = index_arg(avg_dst, "avg_dst");
  p.avg_src = index_arg(avg_src, "avg_src");
  p.const_dst = index_arg(const_dst, "const_dst");
  p.kc = p.copy_dst.numel();
  p.ka = p.avg_dst.numel();
  p.kz = p.const_dst.numel();
  TORCH_CHECK(p.copy_src.numel() == p.kc, "segblocks: copy_src has ", p.copy_src.numel(),
              " entries but copy_dst has ", p.kc);
  TORCH_CHECK(p.avg_src.numel() == 4 * p.ka, "segblocks: avg_src has ", p.avg_src.numel(),
              " entries; expected 4 x ", p.ka, " (four sources per avg_dst entry)");
  check_range(p.copy_dst, rows, "copy_dst");
  check_range(p.copy_src, rows, "copy_src");
  check_range(p.avg_dst, rows, "avg_dst");
  check_range(p.avg_src, rows, "avg_src");
  check_range(p.const_dst, rows, "const_dst");
  p.cd = p.copy_dst.const_data_ptr<int64_t>();
  p.cs = p.copy_src.const_data_ptr<int64_t>();
  p.ad = p.avg_dst.const_data_ptr<int64_t>();
  p.as = p.avg_src.const_data_ptr<int64_t>();
  p.kd = p.const_dst.const_data_ptr<int64_t>();
  return p;
}

// ----------------------------------------------------------------------------- row helpers

// dst[x * dps + c] = src[x * sps + c * scs] for x < W, c < C (dst channels contiguous).
template <typename T>
inline void copy_pixels(T* dst, int64_t dps, const T* src, int64_t W, int64_t C, int64_t sps,
                        int64_t scs) {
  if (scs == 1) {
    if (dps == C && sps == C) {
      std::memcpy(dst, src, sizeof(T) * W * C);
      return;
    }
    for (int64_t x = 0; x < W; ++x) std::memcpy(dst + x * dps, src + x * sps, sizeof(T) * C);
  } else if (sps < scs) {
    // Pixels closer than channels (NCHW-like): walk each channel's row.
    for (int64_t c = 0; c < C; ++c) {
      const T* s = src + c * scs;
      T* d = dst + c;
      for (int64_t x = 0; x < W; ++x) d[x * dps] = s[x * sps];
    }
  } else {
    for (int64_t x = 0; x < W; ++x) {
      const T* s = src + x * sps;
      T* d = dst + x * dps;
      for (int64_t c = 0; c < C; ++c) d[c] = s[c * scs];
    }
  }
}

// out[j, c] = scale * (r0[2j] + r0[2j+1] + r1[2j] + r1[2j+1]) (in this order, accumulated in
// the op-math type), rows with channels contiguous and pixel stride ps; out is [W/2, C].
template <typename T>
inline void pool2x2_row(T* out, const T* r0, const T* r1, int64_t ps, int64_t Wout, int64_t C,
                        float scale) {
  using acc_t = at::opmath_type<T>;
  const acc_t sc = static_cast<acc_t>(scale);
  for (int64_t j = 0; j < Wout; ++j) {
    const T* a = r0 + 2 * j * ps;
    const T* b = a + ps;
    const T* c0 = r1 + 2 * j * ps;
    const T* d = c0 + ps;
    T* o = out + j * C;
    for (int64_t c = 0; c < C; ++c) {
      acc_t v = static_cast<acc_t>(a[c]);
      v += static_cast<acc_t>(b[c]);
      v += static_cast<acc_t>(c0[c]);
      v += static_cast<acc_t>(d[c]);
      o[c] = static_cast<T>(v * sc);
    }
  }
}

template <typename T>
inline void fill_row(T* p, int64_t n, T v) {
  std::fill(p, p + n, v);
}

// ----------------------------------------------------------------------------- halo phases

// Row r of a store split over two buffers (r < R); the pad-value row is `v`.
template <typename T>
struct SplitRows {
  T* h;
  T* l;
  const T* v;
  int64_t rows_hr, R, C;
  T* at(int64_t r) const {  // branch-free: HR and LR rows alternate unpredictably
    const bool lo = r >= rows_hr;
    T* const base[2] = {h, l};
    return base[lo] + (r - (lo ? rows_hr : 0)) * C;
  }
  const T* src(int64_t r) const { return r < R ? at(r) : v; }
  int64_t end(int64_t r) const { return r < rows_hr ? rows_hr : R; }  // end of r's buffer
};

// Row r of one flat store [R + 1, C] (the value lives in row R itself).
template <typename T>
struct FlatRows {
  T* f;
  const T* v;
  int64_t R, C;
  T* at(int64_t r) const { return f + r * C; }
  const T* src(int64_t r) const { return f + r * C; }
  int64_t end(int64_t) const { return R; }
};

// The halo of a store: copies, then 2x2 means, then constants (so a row named by several phases
// ends with the last one's value). Rows [0, R) only: writes aimed at the pad-value row R are
// skipped. Copies go by runs: entries whose destination and source rows both advance by one
// (a side of a halo facing a same-resolution neighbour) are one memcpy.
// (The task bodies copy what they use into locals: captured by reference, the plan pointers and
// row maps would be reloaded from memory after every memcpy / store.)
template <typename T, typename Rows>
void halo_phases(const Rows& rows, const Plan& plan) {
  const int64_t R = rows.R;
  const int64_t row_bytes = rows.C * static_cast<int64_t>(sizeof(T));
  if (plan.kc) {
    at::parallel_for(0, plan.kc, grain_for(2 * row_bytes), [&](int64_t b, int64_t e) {
      const Rows m = rows;
      const int64_t C = m.C, rb = row_bytes, R_ = R;
      const int64_t* const cd = plan.cd;
      const int64_t* const cs = plan.cs;
      for (int64_t i = b; i < e;) {
        const int64_t d = cd[i], s = cs[i];
        int64_t n = 1;
        if (d < R_) {
          const bool value = s >= R_;  // the pad value
          // Does entry i + k continue the run (both rows advancing by one)?
          auto next = [&](int64_t k) {
            return cd[i + k] == d + k && (value ? cs[i + k] >= R_ : cs[i + k] == s + k);
          };
          if (i + 1 < e && next(1)) {  // bounds work only for actual runs
            int64_t lim = std::min(e - i, m.end(d) - d);
            if (!value) lim = std::min(lim, m.end(s) - s);
            while (n < lim && next(n)) ++n;
          }
          T* o = m.at(d);
          if (!value) {
            std::memcpy(o, m.at(s), n * rb);
          } else {
            for (int64_t k = 0; k < n; ++k) std::memcpy(o + k * C, m.v, rb);
          }
        }
        i += n;
      }
    });
  }
  if (plan.ka) {
    using acc_t = at::opmath_type<T>;
    at::parallel_for(0, plan.ka, grain_for(5 * row_bytes), [&](int64_t b, int64_t e) {
      const Rows m = rows;
      const int64_t C = m.C, R_ = R;
      const int64_t* const ad = plan.ad;
      const int64_t* const as = plan.as;
      for (int64_t i = b; i < e; ++i) {
        const int64_t d = ad[i];
        if (d >= R_) continue;  // filler entry
        const int64_t* s = as + 4 * i;
        const T* s0 = m.src(s[0]);
        const T* s1 = m.src(s[1]);
        const T* s2 = m.src(s[2]);
        const T* s3 = m.src(s[3]);
        T* o = m.at(d);
        for (int64_t c = 0; c < C; ++c) {
          acc_t v = static_cast<acc_t>(s0[c]);
          v += static_cast<acc_t>(s1[c]);
          v += static_cast<acc_t>(s2[c]);
          v += static_cast<acc_t>(s3[c]);
          o[c] = static_cast<T>(v * static_cast<acc_t>(0.25));
        }
      }
    });
  }
  if (plan.kz) {
    at::parallel_for(0, plan.kz, grain_for(row_bytes), [&](int64_t b, int64_t e) {
      const Rows m = rows;
      const int64_t rb = row_bytes, R_ = R;
      const int64_t* const kd = plan.kd;
      for (int64_t i = b; i < e; ++i) {
        if (kd[i] < R_) std::memcpy(m.at(kd[i]), m.v, rb);
      }
    });
  }
}

// ----------------------------------------------------------------------------- halo fill

// The adjoint, in place on a gradient store. Parallel over channel ranges: each thread runs
// every phase over all entries for its channels, in plan order (deterministic scatter-adds).
template <typename T>
void halo_adjoint_kernel(T* g, int64_t rows, int64_t C, const Plan& p) {
  using acc_t = at::opmath_type<T>;
  const int64_t R = rows - 1;
  const int64_t chunk = std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(T)));  // 64 B
  const int64_t nchunks = (C + chunk - 1) / chunk;
  const int64_t work = (1 + p.kz + 6 * p.ka + 2 * p.kc) * C * static_cast<int64_t>(sizeof(T));
  const int64_t grain = work < 4 * kTaskBytes ? nchunks : 1;
  at::parallel_for(0, nchunks, grain, [&](int64_t b, int64_t e) {
    const int64_t c0 = b * chunk;
    const int64_t n = std::min(C, e * chunk) - c0;
    T* base = g + c0;
    const T zero = static_cast<T>(0);
    fill_row(base + R * C, n, zero);                                      // 0'
    for (int64_t i = 0; i < p.kz; ++i) fill_row(base + p.kd[i] * C, n, zero);  // 3'
    // 2': sources are never avg destinations, so reading g[avg_dst] while accumulating is
    // reading the snapshot; the destinations are zeroed afterwards.
    for (int64_t i = 0; i < p.ka; ++i) {
      const T* gd = base + p.ad[i] * C;
      const int64_t* s = p.as + 4 * i;
      for (int64_t k = 0; k < 4; ++k) {
        T* o = base + s[k] * C;
        for (int64_t c = 0; c < n; ++c) {
          o[c] = static_cast<T>(static_cast<acc_t>(o[c]) +
                                static_cast<acc_t>(0.25) * static_cast<acc_t>(gd[c]));
        }
      }
    }
    for (int64_t i = 0; i < p.ka; ++i) fill_row(base + p.ad[i] * C, n, zero);
    // 1': sources are never copy destinations (snapshot semantics again).
    for (int64_t i = 0; i < p.kc; ++i) {
      const T* gd = base + p.cd[i] * C;
      T* o = base + p.cs[i] * C;
      for (int64_t c = 0; c < n; ++c) {
        o[c] = static_cast<T>(static_cast<acc_t>(o[c]) + static_cast<acc_t>(gd[c]));
      }
    }
  });
}

void check_store(const Tensor& flat, const char* name) {
  TORCH_CHECK(flat.dim() == 2 && flat.size(0) >= 1, "segblocks: ", name,
              " must be a flat store [R + 1, C], got shape ", flat.sizes());
  TORCH_CHECK(flat.device().is_cpu(), "segblocks: ", name, " must be on the CPU");
}

template <typename F>
void with_contiguous(const Tensor& t, F&& f) {
  if (t.is_contiguous()) {
    f(t);
  } else {
    Tensor c = t.contiguous();
    f(c);
    t.copy_(c);
  }
}

void halo_fill_(const Tensor& flat, const Tensor& copy_dst, const Tensor& copy_src,
                const Tensor& avg_dst, const Tensor& avg_src, const Tensor& const_dst,
                double value) {
  check_store(flat, "flat");
  const int64_t rows = flat.size(0), C = flat.size(1);
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, rows);
  if (C == 0) return;
  with_contiguous(flat, [&](const Tensor& f) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, f.scalar_type(), "halo_fill_", [&] {
      using T = scalar_t;
      T* fp = f.mutable_data_ptr<T>();
      fill_row(fp + (rows - 1) * C, C, static_cast<T>(value));  // row R first: copies read it
      halo_phases<T>(FlatRows<T>{fp, fp + (rows - 1) * C, rows - 1, C}, p);
    });
  });
}

void halo_fill_backward_(const Tensor& grad, const Tensor& copy_dst, const Tensor& copy_src,
                         const Tensor& avg_dst, const Tensor& avg_src, const Tensor& const_dst) {
  check_store(grad, "grad");
  const int64_t rows = grad.size(0), C = grad.size(1);
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, rows);
  if (C == 0) return;
  with_contiguous(grad, [&](const Tensor& f) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, f.scalar_type(),
                                    "halo_fill_backward_", [&] {
                                      halo_adjoint_kernel<scalar_t>(
                                          f.mutable_data_ptr<scalar_t>(), rows, C, p);
                                    });
  });
}

// ----------------------------------------------------------------------------- pad_blocks
//
// pad_blocks writes the padded HR and LR blocks into two separate buffers ([Nh*hp*wp, C] and
// [Nl*tp*tw, C], channels last); the plan's row indices address their concatenation followed by
// the pad-value row R, so a row r lives in the HR buffer (r < rows_hr), the LR buffer (r < R) or
// is the value (r == R).

struct PadGeo {
  int64_t s, t, pt, pb, pl, pr, hp, wp, tp, tw, rows_hr, R;
};

PadGeo pad_geometry(IntArrayRef geometry, int64_t Nh, int64_t Nl) {
  TORCH_CHECK(geometry.size() == 5, "segblocks: pad geometry must be [s, pt, pb, pl, pr], got ",
              geometry);
  PadGeo g;
  g.s = geometry[0];
  g.pt = geometry[1];
  g.pb = geometry[2];
  g.pl = geometry[3];
  g.pr = geometry[4];
  TORCH_CHECK(g.s >= 2 && g.s % 2 == 0 && g.pt >= 0 && g.pb >= 0 && g.pl >= 0 && g.pr >= 0,
              "segblocks: bad pad geometry ", geometry);
  g.t = g.s / 2;
  g.hp = g.s + g.pt + g.pb;
  g.wp = g.s + g.pl + g.pr;
  g.tp = g.t + g.pt + g.pb;
  g.tw = g.t + g.pl + g.pr;
  g.rows_hr = Nh * g.hp * g.wp;
  g.R = g.rows_hr + Nl * g.tp * g.tw;
  return g;
}

void check_blocks(const Tensor& x, int64_t C, int64_t side, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == C && x.size(2) == side && x.size(3) == side,
              "segblocks: ", name, " must be [N, ", C, ", ", side, ", ", side, "], got ",
              x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "segblocks: ", name, " must be on the CPU");
}

// Interiors of the padded HR and LR blocks from blocks [Nb, C, side, side] (any strides); one
// task item per block.
template <typename T>
void write_interiors(const SplitRows<T>& m, const PadGeo& g, const Tensor& hr, const Tensor& lr) {
  const int64_t Nh = hr.size(0), C = m.C;
  const T* in[2] = {hr.const_data_ptr<T>(), lr.const_data_ptr<T>()};
  const int64_t sb[2] = {hr.stride(0), lr.stride(0)}, sc[2] = {hr.stride(1), lr.stride(1)};
  const int64_t sy[2] = {hr.stride(2), lr.stride(2)}, sx[2] = {hr.stride(3), lr.stride(3)};
  const int64_t block_bytes = 2 * g.hp * g.wp * C * static_cast<int64_t>(sizeof(T));
  at::parallel_for(0, Nh + lr.size(0), grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
    for (int64_t k = b0; k < e0; ++k) {
      const int lv = k < Nh ? 0 : 1;
      const int64_t b = lv == 0 ? k : k - Nh, side = lv == 0 ? g.s : g.t;
      const int64_t hp = lv == 0 ? g.hp : g.tp, wp = lv == 0 ? g.wp : g.tw;
      const int64_t c = C, ys = sy[lv], xs = sx[lv], cs = sc[lv], step = wp * C;
      T* out = (lv == 0 ? m.h : m.l) + (b * hp * wp + g.pt * wp + g.pl) * C;
      const T* src = in[lv] + b * sb[lv];
      for (int64_t y = 0; y < side; ++y) {
        copy_pixels(out + y * step, c, src + y * ys, side, c, xs, cs);
      }
    }
  });
}

std::tuple<Tensor, Tensor> pad_blocks(const Tensor& hr, const Tensor& lr, const Tensor& copy_dst,
                                      const Tensor& copy_src, const Tensor& avg_dst,
                                      const Tensor& avg_src, const Tensor& const_dst,
                                      IntArrayRef geometry, double value) {
  TORCH_CHECK(hr.dim() == 4, "segblocks: hr must be [Nh, C, s, s], got ", hr.sizes());
  const int64_t Nh = hr.size(0), Nl = lr.size(0), C = hr.size(1);
  PadGeo g = pad_geometry(geometry, Nh, Nl);
  check_blocks(hr, C, g.s, "hr");
  check_blocks(lr, C, g.t, "lr");
  TORCH_CHECK(hr.scalar_type() == lr.scalar_type(), "segblocks: hr is ", hr.scalar_type(),
              " but lr is ", lr.scalar_type());
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, g.R + 1);
  auto opts = hr.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor hpad = at::empty({Nh, g.hp, g.wp, C}, opts);
  Tensor lpad = at::empty({Nl, g.tp, g.tw, C}, opts);
  if (C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hr.scalar_type(), "pad_blocks", [&] {
      using T = scalar_t;
      std::vector<T> vrow(C, static_cast<T>(value));
      SplitRows<T> m{hpad.mutable_data_ptr<T>(), lpad.mutable_data_ptr<T>(), vrow.data(),
                     g.rows_hr, g.R, C};
      write_interiors<T>(m, g, hr, lr);
      halo_phases<T>(m, p);
    });
  }
  return {hpad.permute({0, 3, 1, 2}), lpad.permute({0, 3, 1, 2})};
}

// ------------------------------------------------------------------ pad_blocks backward
//
// The adjoint without a store-sized temporary: the gradient of a block is its interior gradient
// plus what the halo rows that read it pass back. The plan is decoded once, in chunks of entries
// (in parallel), into contributions (source block, interior pixel, gradient row) bucketed by
// source block with a stable counting sort per chunk; then one task finishes a block at a time:
// interior copy, then its 2x2-mean contributions and then its copy contributions, each in plan
// order (its buckets, chunk after chunk) -- per element the order of the store adjoint
// (halo_fill_backward_), so results are deterministic and equal to it. A const row contributes
// nothing; an avg destination only through its 2x2 sources (the copy into it was overwritten);
// filler entries aimed at row R are skipped; a copy destination adds to its source, unless the
// source is row R. 2x2-mean sources must be interior rows. Copy runs (destination and source
// rows both advancing by one within a row of pixels) are one item.

// floor(n / d) for 0 <= n < 2^50 by a double reciprocal (exact: (n + 0.5) / d is at least
// 0.5 / d away from an integer, far more than the rounding error).
struct FastDiv {
  double inv = 0;
  explicit FastDiv(int64_t d) : inv(1.0 / static_cast<double>(std::max<int64_t>(d, 1))) {}
  int64_t operator()(int64_t n) const {
    return static_cast<int64_t>((static_cast<double>(n) + 0.5) * inv);
  }
};

// Store rows -> (block, interior pixel) for the blocks of one level.
struct LevelMap {
  int64_t base = 0, end = 0, blk = 0, first = 0, side = 0;  // rows [base, end); block 0's number
  FastDiv div{1};
  std::vector<int32_t> pix;  // padded local row -> interior pixel y * side + x, or -1
  LevelMap(int64_t base_, int64_t nb, int64_t side_, int64_t pt, int64_t pb, int64_t pl,
           int64_t pr, int64_t first_)
      : base(base_),
        blk((side_ + pt + pb) * (side_ + pl + pr)),
        first(first_),
        side(side_),
        div((side_ + pt + pb) * (side_ + pl + pr)),
        pix((side_ + pt + pb) * (side_ + pl + pr), -1) {
    end = base + nb * blk;
    const int64_t wp = side + pl + pr;
    for (int64_t y = 0; y < side; ++y) {
      for (int64_t x = 0; x < side; ++x) pix[(y + pt) * wp + x + pl] = y * side + x;
    }
  }
};

// Number (HR blocks first, then LR) of the block holding row r < R; its local row in *loc.
inline int64_t row_block(int64_t r, const LevelMap& H, const LevelMap& L, int64_t* loc) {
  const LevelMap& g = r < H.end ? H : L;
  const int64_t q = r - g.base;
  const int64_t b = g.div(q);
  *loc = q - b * g.blk;
  return g.first + b;
}

// Block number and interior pixel of row r < R, or -1 when r is a halo row.
inline int64_t decode_row(int64_t r, const LevelMap& H, const LevelMap& L, int32_t* pix) {
  int64_t loc;
  const int64_t k = row_block(r, H, L, &loc);
  const int32_t px = (k < L.first ? H : L).pix[loc];
  if (px < 0) return -1;
  *pix = px;
  return k;
}

struct Contrib {
  int64_t grow;  // row of the incoming gradient
  int32_t pix;   // interior pixel of the source block it adds to
  int32_t n;     // copy: pixels in the run; avg: -1 = 2x2 group at pix, else the one source
};

// Contributions of a chunk of plan entries bucketed by source block: block k's are
// items[start[k] : start[k + 1]], in plan order.
struct Buckets {
  std::vector<int64_t> start;
  std::vector<Contrib> items;
  // Stable counting sort of (key, item) pairs by key in [0, nblocks).
  void build(const std::vector<int32_t>& key, const std::vector<Contrib>& in, int64_t nblocks) {
    start.assign(nblocks + 1, 0);
    for (int32_t k : key) ++start[k + 1];
    for (int64_t k = 0; k < nblocks; ++k) start[k + 1] += start[k];
    items.resize(in.size());
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (size_t j = 0; j < in.size(); ++j) items[pos[key[j]]++] = in[j];
  }
};

// Plan entries [0, n) split into chunks decoded in parallel (each of at least kChunkEntries).
inline int64_t num_chunks(int64_t n) {
  constexpr int64_t kChunkEntries = 8192;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / kChunkEntries));
}

std::tuple<Tensor, Tensor> pad_blocks_backward(
    const std::optional<Tensor>& grad_hr_opt, const std::optional<Tensor>& grad_lr_opt,
    const Tensor& copy_dst, const Tensor& copy_src, const Tensor& avg_dst, const Tensor& avg_src,
    const Tensor& const_dst, IntArrayRef geometry, int64_t Nh, int64_t Nl) {
  const bool has_h = grad_hr_opt.has_value() && grad_hr_opt->defined();
  const bool has_l = grad_lr_opt.has_value() && grad_lr_opt->defined();
  TORCH_CHECK(has_h || has_l, "segblocks: pad_blocks_backward needs at least one gradient");
  const Tensor& ref = has_h ? *grad_hr_opt : *grad_lr_opt;
  PadGeo g = pad_geometry(geometry, Nh, Nl);
  TORCH_CHECK(ref.dim() == 4, "segblocks: grad must be 4-D, got ", ref.sizes());
  const int64_t C = ref.size(1);
  // Channels-last contiguous [Nb, hp, wp, C] (free for channels-last gradients).
  auto as_rows = [&](const std::optional<Tensor>& opt, int64_t nb, int64_t hp, int64_t wp,
                     const char* name) {
    const Tensor& x = *opt;
    TORCH_CHECK(x.dim() == 4 && x.size(0) == nb && x.size(1) == C && x.size(2) == hp &&
                    x.size(3) == wp,
                "segblocks: ", name, " must be [", nb, ", ", C, ", ", hp, ", ", wp, "], got ",
                x.sizes());
    TORCH_CHECK(x.device().is_cpu(), "segblocks: ", name, " must be on the CPU");
    TORCH_CHECK(x.scalar_type() == ref.scalar_type(), "segblocks: ", name, " is ",
                x.scalar_type(), " but the other gradient is ", ref.scalar_type());
    return x.permute({0, 2, 3, 1}).contiguous();
  };
  const Tensor Gh = has_h ? as_rows(grad_hr_opt, Nh, g.hp, g.wp, "grad_hr") : Tensor();
  const Tensor Gl = has_l ? as_rows(grad_lr_opt, Nl, g.tp, g.tw, "grad_lr") : Tensor();
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, g.R + 1);
  TORCH_CHECK(g.R < (int64_t(1) << 50) && Nh + Nl < INT32_MAX,
              "segblocks: store too large for pad_blocks_backward");
  auto opts = ref.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor gh = at::empty({Nh, g.s, g.s, C}, opts);
  Tensor gl = at::empty({Nl, g.t, g.t, C}, opts);
  if (C == 0 || Nh + Nl == 0) return {gh.permute({0, 3, 1, 2}), gl.permute({0, 3, 1, 2})};

  const int64_t R = g.R, rows_hr = g.rows_hr, nblocks = Nh + Nl;
  const LevelMap H(0, Nh, g.s, g.pt, g.pb, g.pl, g.pr, 0);
  const LevelMap L(rows_hr, Nl, g.t, g.pt, g.pb, g.pl, g.pr, Nh);
  // Rows whose incoming gradient a later phase discards: 1 = avg dst, 2 = const dst.
  std::vector<uint8_t> over;
  if (p.ka || p.kz) {
    over.assign(R, 0);
    for (int64_t i = 0; i < p.ka; ++i) {
      if (p.ad[i] < R) over[p.ad[i]] |= 1;
    }
    for (int64_t i = 0; i < p.kz; ++i) {
      if (p.kd[i] < R) over[p.kd[i]] |= 2;
    }
  }
  auto live = [&](int64_t d, uint8_t killers) {
    if (d >= R || (d < rows_hr ? !has_h : !has_l)) return false;
    return over.empty() || (over[d] & killers) == 0;
  };
  // 2x2-mean contributions: one item per entry whose sources are a 2x2 group of one block.
  auto decode_avg = [&](int64_t i0, int64_t i1, std::vector<int32_t>& key,
                        std::vector<Contrib>& list) {
    key.reserve(i1 - i0);
    list.reserve(i1 - i0);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t d = p.ad[i];
      if (!live(d, 2)) continue;
      const int64_t* s4 = p.as + 4 * i;
      int32_t px[4];
      int64_t k[4];
      for (int j = 0; j < 4; ++j) {
        k[j] = s4[j] < R ? decode_row(s4[j], H, L, &px[j]) : -1;
        TORCH_CHECK(k[j] >= 0, "segblocks: avg_src[", 4 * i + j, "] = ", s4[j],
                    " is not a block interior row");
      }
      const int32_t side = static_cast<int32_t>(k[0] < Nh ? g.s : g.t);
      if (k[1] == k[0] && k[2] == k[0] && k[3] == k[0] && px[1] == px[0] + 1 &&
          px[2] == px[0] + side && px[3] == px[0] + side + 1) {
        key.push_back(static_cast<int32_t>(k[0]));
        list.push_back({d, px[0], -1});
      } else {
        for (int j = 0; j < 4; ++j) {
          key.push_back(static_cast<int32_t>(k[j]));
          list.push_back({d, px[j], j});
        }
      }
    }
  };
  // Copy contributions: one item per run (destinations and sources both advancing by one,
  // the sources within one row of pixels, every destination live and in the same buffer).
  auto decode_copy = [&](int64_t i0, int64_t i1, std::vector<int32_t>& key,
                         std::vector<Contrib>& list) {
    key.reserve((i1 - i0) / 2);
    list.reserve((i1 - i0) / 2);
    for (int64_t i = i0; i < i1;) {
      const int64_t d = p.cd[i], s = p.cs[i];
      int32_t px;
      int64_t k;
      if (s >= R || !live(d, 3) || (k = decode_row(s, H, L, &px)) < 0) {
        ++i;
        continue;
      }
      const int64_t side = k < Nh ? g.s : g.t;
      const int64_t lim = std::min({i1 - i, side - px % side, (d < rows_hr ? rows_hr : R) - d});
      int64_t n = 1;
      while (n < lim && p.cd[i + n] == d + n && p.cs[i + n] == s + n && live(d + n, 3)) ++n;
      key.push_back(static_cast<int32_t>(k));
      list.push_back({d, px, static_cast<int32_t>(n)});
      i += n;
    }
  };
  // Chunks of both lists decoded and bucketed in one parallel region; a block's contributions
  // are then its bucket in chunk 0, chunk 1, ... (plan order).
  const int64_t na = num_chunks(p.ka), nc = num_chunks(p.kc);
  std::vector<Buckets> ab(na), cb(nc);
  at::parallel_for(0, na + nc, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> key;
    std::vector<Contrib> list;
    for (int64_t t = t0; t < t1; ++t) {
      key.clear();
      list.clear();
      if (t < na) {
        decode_avg(p.ka * t / na, p.ka * (t + 1) / na, key, list);
        ab[t].build(key, list, nblocks);
      } else {
        decode_copy(p.kc * (t - na) / nc, p.kc * (t - na + 1) / nc, key, list);
        cb[t - na].build(key, list, nblocks);
      }
    }
  });

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, ref.scalar_type(), "pad_blocks_backward", [&] {
        using T = scalar_t;
        using acc_t = at::opmath_type<T>;
        const T* gph = has_h ? Gh.const_data_ptr<T>() : nullptr;
        const T* gpl = has_l ? Gl.const_data_ptr<T>() : nullptr;
        T* oh = gh.mutable_data_ptr<T>();
        T* ol = gl.mutable_data_ptr<T>();
        auto grow = [&](int64_t r) { return r < rows_hr ? gph + r * C : gpl + (r - rows_hr) * C; };
        constexpr int64_t kAhead = 8;  // prefetch distance (items)
        const int64_t block_bytes = 2 * g.hp * g.wp * C * static_cast<int64_t>(sizeof(T));
        at::parallel_for(0, nblocks, grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
          for (int64_t k = b0; k < e0; ++k) {
            const bool is_h = k < Nh;
            const LevelMap& lm = is_h ? H : L;
            const int64_t side = lm.side, wp = side + g.pl + g.pr;
            const int64_t b = k - lm.first, n = side * C;
            T* out = (is_h ? oh : ol) + b * side * n;
            const T* G = is_h ? gph : gpl;
            // Start fetching this block's halo gradients while the interior is copied.
            for (const auto* bk : {&ab, &cb}) {
              for (const Buckets& bu : *bk) {
                for (int64_t q = bu.start[k], e = std::min(bu.start[k + 1], q + kAhead); q < e;
                     ++q) {
                  __builtin_prefetch(grow(bu.items[q].grow));
                }
              }
            }
            if (G != nullptr) {
              const T* src = G + (b * lm.blk + g.pt * wp + g.pl) * C;
              for (int64_t y = 0; y < side; ++y) {
                std::memcpy(out + y * n, src + y * wp * C, n * sizeof(T));
              }
            } else {
              std::fill(out, out + side * n, static_cast<T>(0));
            }
            const acc_t quarter = static_cast<acc_t>(0.25);
            for (const Buckets& bu : ab) {
              for (int64_t q = bu.start[k], e = bu.start[k + 1]; q < e; ++q) {
                if (q + kAhead < e) __builtin_prefetch(grow(bu.items[q + kAhead].grow));
                const Contrib& it = bu.items[q];
                const T* gd = grow(it.grow);
                T* o = out + static_cast<int64_t>(it.pix) * C;
                if (it.n < 0) {  // 2x2 group at pix, in source order
                  T* rows[4] = {o, o + C, o + side * C, o + (side + 1) * C};
                  for (T* r : rows) {
                    for (int64_t c = 0; c < C; ++c) {
                      r[c] = static_cast<T>(static_cast<acc_t>(r[c]) +
                                            quarter * static_cast<acc_t>(gd[c]));
                    }
                  }
                } else {
                  for (int64_t c = 0; c < C; ++c) {
                    o[c] = static_cast<T>(static_cast<acc_t>(o[c]) +
                                          quarter * static_cast<acc_t>(gd[c]));
                  }
                }
              }
            }
            for (const Buckets& bu : cb) {
              for (int64_t q = bu.start[k], e = bu.start[k + 1]; q < e; ++q) {
                if (q + kAhead < e) __builtin_prefetch(grow(bu.items[q + kAhead].grow));
                const Contrib& it = bu.items[q];
                const T* gd = grow(it.grow);  // the run's rows are consecutive in one buffer
                T* o = out + static_cast<int64_t>(it.pix) * C;
                const int64_t m = static_cast<int64_t>(it.n) * C;
                for (int64_t c = 0; c < m; ++c) {
                  o[c] = static_cast<T>(static_cast<acc_t>(o[c]) + static_cast<acc_t>(gd[c]));
                }
              }
            }
          }
        });
      });
  return {gh.permute({0, 3, 1, 2}), gl.permute({0, 3, 1, 2})};
}

// ----------------------------------------------------------------------------- cells

struct Cells {
  Tensor hr, lr;
  const int64_t* h = nullptr;
  const int64_t* l = nullptr;
  int64_t nh = 0, nl = 0;
  bool partition = false;  // every cell is HR or LR (so outputs need no zero fill)
};

Cells make_cells(const Tensor& hr_cells, const Tensor& lr_cells, int64_t ncells) {
  Cells c;
  c.hr = index_arg(hr_cells, "hr_cells");
  c.lr = index_arg(lr_cells, "lr_cells");
  check_range(c.hr, ncells, "hr_cells");
  check_range(c.lr, ncells, "lr_cells");
  c.nh = c.hr.numel();
  c.nl = c.lr.numel();
  c.h = c.hr.const_data_ptr<int64_t>();
  c.l = c.lr.const_data_ptr<int64_t>();
  c.partition = c.nh + c.nl == ncells;
  return c;
}

// ----------------------------------------------------------------------------- sample_blocks
//
// sample / combine and their backwards run one task item per block (HR blocks, then LR
// blocks): the cell is decoded once per block, and each row of pixels is one memcpy (or one
// vectorised loop for the 2x2 pooling / nearest upsampling of LR blocks).

// Top-left pixel offset of a cell in a dense map with strides (sN, sH, sW).
inline int64_t cell_offset(int64_t cell, int64_t per, int64_t GW, int64_t s, int64_t sN,
                           int64_t sH, int64_t sW) {
  const int64_t n = cell / per, r = cell - n * per, gy = r / GW, gx = r - gy * GW;
  return n * sN + gy * s * sH + gx * s * sW;
}

// d[2x] = d[2x + 1] = src[x] for x < t (pixels of C channels; d channels-last).
template <typename T>
inline void upsample_row(T* d, const T* src, int64_t t, int64_t C, int64_t sx, int64_t sc) {
  if (sc == 1) {
    for (int64_t x = 0; x < t; ++x) {
      const T* __restrict p = src + x * sx;
      T* __restrict o = d + 2 * x * C;
      for (int64_t c = 0; c < C; ++c) o[c] = p[c];
      for (int64_t c = 0; c < C; ++c) o[C + c] = p[c];
    }
  } else {
    copy_pixels(d, 2 * C, src, t, C, sx, sc);
    for (int64_t x = 0; x < t; ++x) std::memcpy(d + (2 * x + 1) * C, d + 2 * x * C, C * sizeof(T));
  }
}

Tensor sample_blocks(const Tensor& x, const Tensor& hr_cells, const Tensor& lr_cells,
                     IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 7,
              "segblocks: sample geometry must be [GH, GW, s, pt, pb, pl, pr], got ", geometry);
  const int64_t GH = geometry[0], GW = geometry[1], s = geometry[2];
  TORCH_CHECK(x.dim() == 4, "segblocks: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "segblocks: x must be on the CPU");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(x.size(2) == GH * s && x.size(3) == GW * s, "segblocks: x is ", x.sizes(),
              " but the geometry needs H = ", GH * s, ", W = ", GW * s);
  Cells cl = make_cells(hr_cells, lr_cells, N * GH * GW);
  PadGeo g = pad_geometry(geometry.slice(2), cl.nh, cl.nl);
  Tensor flat = at::empty({g.R + 1, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (C == 0) return flat;
  const int64_t sN = x.stride(0), sC = x.stride(1), sH = x.stride(2), sW = x.stride(3);
  const int64_t per = GH * GW;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sample_blocks", [&] {
    using T = scalar_t;
    T* f = flat.mutable_data_ptr<T>();
    const T* xp = x.const_data_ptr<T>();
    const T zero = static_cast<T>(0);
    fill_row(f + g.R * C, C, zero);
    const int64_t block_bytes = 2 * g.hp * g.wp * C * static_cast<int64_t>(sizeof(T));
    at::parallel_for(0, cl.nh + cl.nl, grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
      std::vector<T> scratch;
      for (int64_t k = b0; k < e0; ++k) {
        const bool is_hr = k < cl.nh;
        const int64_t b = is_hr ? k : k - cl.nh;
        const int64_t hp = is_hr ? g.hp : g.tp, wp = is_hr ? g.wp : g.tw;
        const int64_t side = is_hr ? g.s : g.t;
        T* blk = f + ((is_hr ? 0 : g.rows_hr) + b * hp * wp) * C;
        // The halo (filled later by a halo fill) is zero.
        fill_row(blk, g.pt * wp * C, zero);
        fill_row(blk + (g.pt + side) * wp * C, g.pb * wp * C, zero);
        const T* src = xp + cell_offset(is_hr ? cl.h[b] : cl.l[b], per, GW, s, sN, sH, sW);
        for (int64_t i = 0; i < side; ++i) {
          T* row = blk + (g.pt + i) * wp * C;
          fill_row(row, g.pl * C, zero);
          fill_row(row + (g.pl + side) * C, g.pr * C, zero);
          T* d = row + g.pl * C;
          if (is_hr) {
            copy_pixels(d, C, src + i * sH, s, C, sW, sC);
          } else {
            const T* r0 = src + 2 * i * sH;
            const T* r1 = r0 + sH;
            if (sC == 1) {
              pool2x2_row(d, r0, r1, sW, g.t, C, 0.25f);
            } else {
              scratch.resize(2 * s * C);
              copy_pixels(scratch.data(), C, r0, s, C, sW, sC);
              copy_pixels(scratch.data() + s * C, C, r1, s, C, sW, sC);
              pool2x2_row(d, scratch.data(), scratch.data() + s * C, C, g.t, C, 0.25f);
            }
          }
        }
      }
    });
  });
  return flat;
}

Tensor sample_blocks_backward(const Tensor& grad_in, const Tensor& hr_cells,
                              const Tensor& lr_cells, IntArrayRef geometry, int64_t N) {
  TORCH_CHECK(geometry.size() == 7,
              "segblocks: sample geometry must be [GH, GW, s, pt, pb, pl, pr], got ", geometry);
  const int64_t GH = geometry[0], GW = geometry[1], s = geometry[2];
  const int64_t H = GH * s, W = GW * s;
  check_store(grad_in, "grad");
  Cells cl = make_cells(hr_cells, lr_cells, N * GH * GW);
  PadGeo g = pad_geometry(geometry.slice(2), cl.nh, cl.nl);
  TORCH_CHECK(grad_in.size(0) == g.R + 1, "segblocks: grad has ", grad_in.size(0),
              " rows; the geometry needs ", g.R + 1);
  const Tensor grad = grad_in.contiguous();
  const int64_t C = grad.size(1);
  auto opts = grad.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor out = cl.partition ? at::empty({N, H, W, C}, opts) : at::zeros({N, H, W, C}, opts);
  if (C > 0) {
    const int64_t per = GH * GW;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, grad.scalar_type(), "sample_blocks_backward", [&] {
          using T = scalar_t;
          using acc_t = at::opmath_type<T>;
          const T* gp = grad.const_data_ptr<T>();
          T* o = out.mutable_data_ptr<T>();
          const int64_t block_bytes = 2 * s * s * C * static_cast<int64_t>(sizeof(T));
          at::parallel_for(0, cl.nh + cl.nl, grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
            for (int64_t k = b0; k < e0; ++k) {
              const bool is_hr = k < cl.nh;
              const int64_t b = is_hr ? k : k - cl.nh;
              T* dst = o + cell_offset(is_hr ? cl.h[b] : cl.l[b], per, GW, s, H * W * C, W * C, C);
              if (is_hr) {
                const T* src = gp + (b * g.hp * g.wp + g.pt * g.wp + g.pl) * C;
                for (int64_t i = 0; i < s; ++i) {
                  std::memcpy(dst + i * W * C, src + i * g.wp * C, sizeof(T) * s * C);
                }
                continue;
              }
              // Each LR pixel's gradient / 4 goes to its 2x2 group: build the first output row
              // of the pair, then copy it to the second.
              const T* src = gp + (g.rows_hr + b * g.tp * g.tw + g.pt * g.tw + g.pl) * C;
              for (int64_t i = 0; i < g.t; ++i) {
                const T* __restrict sp = src + i * g.tw * C;
                T* __restrict d = dst + 2 * i * W * C;
                for (int64_t x = 0; x < g.t; ++x) {
                  for (int64_t c = 0; c < C; ++c) {
                    const T v = static_cast<T>(static_cast<acc_t>(sp[x * C + c]) *
                                               static_cast<acc_t>(0.25));
                    d[2 * x * C + c] = v;
                    d[(2 * x + 1) * C + c] = v;
                  }
                }
                std::memcpy(d + W * C, d, sizeof(T) * s * C);
              }
            }
          });
        });
  }
  return out.permute({0, 3, 1, 2});
}

// ----------------------------------------------------------------------------- combine_blocks

Tensor combine_blocks(const Tensor& hr, const Tensor& lr, const Tensor& hr_cells,
                      const Tensor& lr_cells, IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 4, "segblocks: combine geometry must be [N, GH, GW, s], got ",
              geometry);
  const int64_t N = geometry[0], GH = geometry[1], GW = geometry[2], s = geometry[3];
  TORCH_CHECK(s >= 2 && s % 2 == 0, "segblocks: block side ", s, " must be even");
  const int64_t t = s / 2, H = GH * s, W = GW * s;
  TORCH_CHECK(hr.dim() == 4, "segblocks: hr must be [Nh, C, s, s], got ", hr.sizes());
  const int64_t C = hr.size(1);
  check_blocks(hr, C, s, "hr");
  check_blocks(lr, C, t, "lr");
  TORCH_CHECK(hr.scalar_type() == lr.scalar_type(), "segblocks: hr is ", hr.scalar_type(),
              " but lr is ", lr.scalar_type());
  Cells cl = make_cells(hr_cells, lr_cells, N * GH * GW);
  TORCH_CHECK(cl.nh == hr.size(0) && cl.nl == lr.size(0), "segblocks: ", cl.nh, " HR and ",
              cl.nl, " LR cells but ", hr.size(0), " HR and ", lr.size(0), " LR blocks");
  auto opts = hr.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor out = cl.partition ? at::empty({N, H, W, C}, opts) : at::zeros({N, H, W, C}, opts);
  if (C > 0) {
    const int64_t per = GH * GW;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hr.scalar_type(), "combine_blocks",
                                    [&] {
      using T = scalar_t;
      T* o = out.mutable_data_ptr<T>();
      const T* hp = hr.const_data_ptr<T>();
      const T* lp = lr.const_data_ptr<T>();
      const int64_t block_bytes = 2 * s * s * C * static_cast<int64_t>(sizeof(T));
      at::parallel_for(0, cl.nh + cl.nl, grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
        for (int64_t k = b0; k < e0; ++k) {
          const bool is_hr = k < cl.nh;
          const int64_t b = is_hr ? k : k - cl.nh;
          T* d = o + cell_offset(is_hr ? cl.h[b] : cl.l[b], per, GW, s, H * W * C, W * C, C);
          if (is_hr) {
            for (int64_t i = 0; i < s; ++i) {
              copy_pixels(d + i * W * C, C, hp + b * hr.stride(0) + i * hr.stride(2), s, C,
                          hr.stride(3), hr.stride(1));
            }
            continue;
          }
          for (int64_t i = 0; i < t; ++i) {  // one LR row -> two identical output rows
            T* r = d + 2 * i * W * C;
            upsample_row(r, lp + b * lr.stride(0) + i * lr.stride(2), t, C, lr.stride(3),
                         lr.stride(1));
            std::memcpy(r + W * C, r, sizeof(T) * s * C);
          }
        }
      });
    });
  }
  return out.permute({0, 3, 1, 2});
}

std::tuple<Tensor, Tensor> combine_blocks_backward(const Tensor& grad, const Tensor& hr_cells,
                                                   const Tensor& lr_cells, IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 4, "segblocks: combine geometry must be [N, GH, GW, s], got ",
              geometry);
  const int64_t N = geometry[0], GH = geometry[1], GW = geometry[2], s = geometry[3];
  const int64_t t = s / 2;
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == N && grad.size(2) == GH * s &&
                  grad.size(3) == GW * s,
              "segblocks: grad is ", grad.sizes(), " but the geometry needs [", N, ", C, ",
              GH * s, ", ", GW * s, "]");
  TORCH_CHECK(grad.device().is_cpu(), "segblocks: grad must be on the CPU");
  const int64_t C = grad.size(1);
  Cells cl = make_cells(hr_cells, lr_cells, N * GH * GW);
  auto opts = grad.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor gh = at::empty({cl.nh, s, s, C}, opts);
  Tensor gl = at::empty({cl.nl, t, t, C}, opts);
  if (C > 0) {
    const int64_t per = GH * GW;
    const int64_t sN = grad.stride(0), sC = grad.stride(1), sH = grad.stride(2),
                  sW = grad.stride(3);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(),
                                    "combine_blocks_backward", [&] {
      using T = scalar_t;
      const T* gp = grad.const_data_ptr<T>();
      T* ho = gh.mutable_data_ptr<T>();
      T* lo = gl.mutable_data_ptr<T>();
      const int64_t block_bytes = 2 * s * s * C * static_cast<int64_t>(sizeof(T));
      at::parallel_for(0, cl.nh + cl.nl, grain_for(block_bytes), [&](int64_t b0, int64_t e0) {
        std::vector<T> scratch;
        for (int64_t k = b0; k < e0; ++k) {
          const bool is_hr = k < cl.nh;
          const int64_t b = is_hr ? k : k - cl.nh;
          const T* src = gp + cell_offset(is_hr ? cl.h[b] : cl.l[b], per, GW, s, sN, sH, sW);
          if (is_hr) {
            for (int64_t i = 0; i < s; ++i) {
              copy_pixels(ho + (b * s + i) * s * C, C, src + i * sH, s, C, sW, sC);
            }
            continue;
          }
          for (int64_t i = 0; i < t; ++i) {
            const T* r0 = src + 2 * i * sH;
            const T* r1 = r0 + sH;
            T* d = lo + (b * t + i) * t * C;
            if (sC == 1) {
              pool2x2_row(d, r0, r1, sW, t, C, 1.0f);
            } else {
              scratch.resize(2 * s * C);
              copy_pixels(scratch.data(), C, r0, s, C, sW, sC);
              copy_pixels(scratch.data() + s * C, C, r1, s, C, sW, sC);
              pool2x2_row(d, scratch.data(), scratch.data() + s * C, C, t, C, 1.0f);
            }
          }
        }
      });
    });
  }
  return {gh.permute({0, 3, 1, 2}), gl.permute({0, 3, 1, 2})};
}


// Halo plan of a zero-bordered store (pad modes "avg" / "strided"), one entry per halo pixel:
// the definition of segblocks.blocks.pad._halo_sources, evaluated per pixel in one pass
// instead of ~20 tensor ops per plan (the Python builders pay ~1 ms of op overhead per plan
// and a forward needs one plan per distinct (scale, padding)). Halo pixels beyond the image copy
// row R (the pad value), or with a replicate border the nearest image pixel.
// geometry = [N, GH, GW, s, pt, pb, pl, pr, avg(, replicate)].
std::tuple<Tensor, Tensor, Tensor, Tensor> pad_plan(const Tensor& mask_flat, const Tensor& slot,
                                                    at::IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 9 || geometry.size() == 10,
              "segblocks: pad_plan geometry has 9 or 10 entries");
  // 10th entry: replicate border (halo pixels beyond the image read the nearest image pixel)
  const bool replicate = geometry.size() == 10 && geometry[9] != 0;
  const int64_t N = geometry[0], GH = geometry[1], GW = geometry[2], s = geometry[3];
  const int64_t pt = geometry[4], pb = geometry[5], pl = geometry[6], pr = geometry[7];
  const bool avg = geometry[8] != 0;
  TORCH_CHECK(mask_flat.device().is_cpu() && slot.device().is_cpu(),
              "segblocks: pad_plan takes CPU tensors");
  TORCH_CHECK(mask_flat.numel() == N * GH * GW && slot.numel() == N * GH * GW,
              "segblocks: pad_plan mask / slot do not match the grid");
  const Tensor m = mask_flat.to(at::kBool).contiguous();
  const Tensor sl = slot.to(at::kLong).contiguous();
  const bool* mp = m.const_data_ptr<bool>();
  const int64_t* sp = sl.const_data_ptr<int64_t>();
  const int64_t t = s / 2;
  int64_t num_hr = 0;
  for (int64_t i = 0; i < N * GH * GW; ++i) num_hr += mp[i] ? 1 : 0;
  const int64_t num_lr = N * GH * GW - num_hr;
  const int64_t hr_wp = s + pl + pr, lr_wp = t + pl + pr;
  const int64_t hr_blk = (s + pt + pb) * hr_wp, lr_blk = (t + pt + pb) * lr_wp;
  const int64_t rows_hr = num_hr * hr_blk, R = rows_hr + num_lr * lr_blk;
  const int64_t halo_hr = hr_blk - s * s, halo_lr = lr_blk - t * t;
  std::vector<int64_t> cd, cs, ad, as;
  cd.reserve(num_hr * halo_hr + num_lr * halo_lr);
  cs.reserve(cd.capacity());
  for (int level = 0; level < 2; ++level) {
    const bool req_hr = level == 0;
    const int64_t side = req_hr ? s : t, wp = side + pl + pr, blk = req_hr ? hr_blk : lr_blk;
    const int64_t H = GH * side, W = GW * side;
    for (int64_t cell = 0; cell < N * GH * GW; ++cell) {
      if (mp[cell] != req_hr) continue;
      const int64_t n = cell / (GH * GW), gy = (cell / GW) % GH, gx = cell % GW;
      const int64_t base = (req_hr ? 0 : rows_hr) + sp[cell] * blk;
      for (int64_t y = -pt; y < side + pb; ++y) {
        for (int64_t x = -pl; x < side + pr; ++x) {
          if (y >= 0 && y < side && x >= 0 && x < side) continue;  // interior
          const int64_t dst = base + (y + pt) * wp + (x + pl);
          int64_t Y = gy * side + y, X = gx * side + x;
          if (replicate) {
            Y = std::min(std::max<int64_t>(Y, 0), H - 1);
            X = std::min(std::max<int64_t>(X, 0), W - 1);
          } else if (Y < 0 || Y >= H || X < 0 || X >= W) {
            cd.push_back(dst);
            cs.push_back(R);
            continue;
          }
          const int64_t ny = Y / side, nx = X / side, qy = Y - ny * side, qx = X - nx * side;
          const int64_t nc = n * GH * GW + ny * GW + nx;
          const int64_t ns = sp[nc];
          if (req_hr) {  // HR neighbour: same pixel; LR neighbour: nearest-upsampled
            cd.push_back(dst);
            cs.push_back(mp[nc] ? ns * hr_blk + (qy + pt) * hr_wp + (qx + pl)
                                : rows_hr + ns * lr_blk + (qy / 2 + pt) * lr_wp + (qx / 2 + pl));
          } else if (!mp[nc]) {  // LR neighbour: same pixel
            cd.push_back(dst);
            cs.push_back(rows_hr + ns * lr_blk + (qy + pt) * lr_wp + (qx + pl));
          } else {  // HR neighbour: its 2x2 group (avg) or the group's top-left (strided)
            const int64_t tl = ns * hr_blk + (2 * qy + pt) * hr_wp + (2 * qx + pl);
            if (avg) {
              ad.push_back(dst);
              as.insert(as.end(), {tl, tl + 1, tl + hr_wp, tl + hr_wp + 1});
            } else {
              cd.push_back(dst);
              cs.push_back(tl);
            }
          }
        }
      }
    }
  }
  auto to_tensor = [](const std::vector<int64_t>& v) {
    Tensor out = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
    if (!v.empty()) std::memcpy(out.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
    return out;
  };
  return {to_tensor(cd), to_tensor(cs), to_tensor(ad), to_tensor(as)};
}

// ----------------------------------------------------------------------------- depthwise conv
// Depthwise convolution straight from the unpadded block tensors (inference): no BlockPad copy.
// Every (output pixel, tap) names its input pixel through an indirection table (XNNPACK's
// dwconv idea, google/XNNPACK doc/dwconv.md) built once per (mask, scale, padding, kernel) by
// segblocks/blocks/indirection.py. Source ids: [0, Ph) HR pixels (hr [Nh, s, s, C] row-major),
// [Ph, Ph + Pl) LR pixels, Ph + Pl the pad value, Ph + Pl + 1 + j the j-th 2x2 mean of HR pixels
// (an LR halo pixel next to an HR block, avg mode; avg_ids [Ka, 4]). Accumulation is float32
// for every dtype, taps in table order; bias then clamp(lo, hi) (a fused ReLU / ReLU6) applied
// before the one rounding to T. Output [P_hr + P_lr, C], P = blocks * o * o per level.

// Why target_clones: the extension builds without -march flags (its build is shared by every
// CPU of a kind), so the channel loops would be SSE2 only; GCC emits AVX-512 / AVX2 versions
// and picks one at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SEGBLOCKS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEGBLOCKS_CLONES
#endif

// Channel vectors as GCC / Clang generic vectors: in each target clone they compile to that
// target's registers (one zmm, two ymm or four xmm per 16 floats). aligned(4): unaligned access.
typedef float vf16 __attribute__((vector_size(64), aligned(4)));
typedef uint16_t vh16 __attribute__((vector_size(32), aligned(2)));
typedef uint32_t vu16 __attribute__((vector_size(64)));

#define SEGBLOCKS_INLINE __attribute__((always_inline)) inline

SEGBLOCKS_INLINE vf16 load16(const float* p) { return *reinterpret_cast<const vf16*>(p); }
SEGBLOCKS_INLINE void store16(float* p, vf16 v) { *reinterpret_cast<vf16*>(p) = v; }
SEGBLOCKS_INLINE void store16(c10::BFloat16* p, vf16 v) {
  // float32 -> bfloat16 rounding to nearest even, as c10::BFloat16 does (NaN -> quiet NaN)
  vu16 u;
  std::memcpy(&u, &v, sizeof(u));
  const vu16 r = (u + (0x7FFFu + ((u >> 16) & 1u))) >> 16;
  const vu16 h = v != v ? (vu16{} + 0x7FC0u) : r;
  *reinterpret_cast<vh16*>(p) = __builtin_convertvector(h, vh16);
}

// NP output pixels x channels [c0, c0 + 16 * NV): NP * NV accumulators in registers over every
// tap; each weight vector is loaded once per tap for the NP pixels (XNNPACK's dwconv tiles
// output pixels the same way). src[i * K + k]: the input row of pixel i's tap k.
template <int NP, int NV, typename T, typename O>
SEGBLOCKS_INLINE void dw_tile(const T* const* src, const float* w, const float* bias, int64_t K,
                              int64_t C, int64_t c0, vf16 lo, vf16 hi, O* const* out) {
  vf16 a[NP][NV];
  for (int j = 0; j < NV; ++j) {
    const vf16 b = bias ? load16(bias + c0 + 16 * j) : vf16{};
    for (int i = 0; i < NP; ++i) a[i][j] = b;
  }
  for (int64_t k = 0; k < K; ++k) {
    vf16 wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = load16(w + k * C + c0 + 16 * j);
    for (int i = 0; i < NP; ++i) {
      const T* sp = src[i * K + k] + c0;
      for (int j = 0; j < NV; ++j) a[i][j] += wv[j] * load16(sp + 16 * j);
    }
  }
  for (int i = 0; i < NP; ++i) {
    for (int j = 0; j < NV; ++j) {
      vf16 v = a[i][j] < lo ? lo : a[i][j];
      v = v > hi ? hi : v;
      store16(out[i] + c0 + 16 * j, v);
    }
  }
}

template <int NP, typename T, typename O>
SEGBLOCKS_INLINE void dw_group(const T* const* src, const float* w, const float* bias, int64_t K,
                               int64_t C, float lo, float hi, O* const* out) {
  const vf16 vlo = vf16{} + lo, vhi = vf16{} + hi;
  int64_t c0 = 0;
  for (; c0 + 32 <= C; c0 += 32) dw_tile<NP, 2>(src, w, bias, K, C, c0, vlo, vhi, out);
  for (; c0 + 16 <= C; c0 += 16) dw_tile<NP, 1>(src, w, bias, K, C, c0, vlo, vhi, out);
  for (; c0 < C; ++c0) {  // channel tail
    for (int i = 0; i < NP; ++i) {
      float a = bias ? bias[c0] : 0.f;
      for (int64_t k = 0; k < K; ++k) a += w[k * C + c0] * static_cast<float>(src[i * K + k][c0]);
      out[i][c0] = static_cast<O>(std::min(std::max(a, lo), hi));
    }
  }
}

// Source id -> input row: HR pixel, LR pixel, or a row of `extra` (pad value, 2x2 means).
template <typename T>
SEGBLOCKS_INLINE const T* dw_row(int64_t id, const T* hr, const T* lr, const T* extra, int64_t C,
                                 int64_t Ph, int64_t Pl) {
  return id < Ph ? hr + id * C : id < Ph + Pl ? lr + (id - Ph) * C : extra + (id - Ph - Pl) * C;
}

// float32 accumulation over float32 inputs (a bfloat16 layer's input is widened once, so that
// the tap loop has no conversions), output T: groups of 4 output pixels, then single pixels.
template <typename O>
SEGBLOCKS_INLINE void dw_pixels_vec(const float* hr, const float* lr, const float* extra,
                                    const float* w, const float* bias, const int32_t* table,
                                    int64_t p0, int64_t p1, int64_t K, int64_t C, int64_t Ph,
                                    int64_t Pl, float lo, float hi, O* out) {
  constexpr int NP = 4;
  std::vector<const float*> src(NP * K);
  O* o[NP];
  int64_t p = p0;
  for (; p + NP <= p1; p += NP) {
    for (int i = 0; i < NP; ++i) {
      for (int64_t k = 0; k < K; ++k)
        src[i * K + k] = dw_row(table[(p + i) * K + k], hr, lr, extra, C, Ph, Pl);
      o[i] = out + (p + i) * C;
    }
    dw_group<NP>(src.data(), w, bias, K, C, lo, hi, o);
  }
  for (; p < p1; ++p) {
    for (int64_t k = 0; k < K; ++k) src[k] = dw_row(table[p * K + k], hr, lr, extra, C, Ph, Pl);
    o[0] = out + p * C;
    dw_group<1>(src.data(), w, bias, K, C, lo, hi, o);
  }
}

#define SEGBLOCKS_DW_VEC(NAME, O)                                                              \
  SEGBLOCKS_CLONES void NAME(const float* hr, const float* lr, const float* extra,             \
                             const float* w, const float* bias, const int32_t* table,          \
                             int64_t p0, int64_t p1, int64_t K, int64_t C, int64_t Ph,         \
                             int64_t Pl, float lo, float hi, O* out) {                         \
    dw_pixels_vec<O>(hr, lr, extra, w, bias, table, p0, p1, K, C, Ph, Pl, lo, hi, out);        \
  }
SEGBLOCKS_DW_VEC(dw_pixels_f32, float)
SEGBLOCKS_DW_VEC(dw_pixels_f32_to_bf16, c10::BFloat16)
#undef SEGBLOCKS_DW_VEC

// Other dtypes (float16, float64): plain loops, accumulation in at::opmath_type<T>.
template <typename T, typename A>
void dw_pixels(const T* hr, const T* lr, const T* extra, const A* w, const A* bias,
               const int32_t* table, int64_t p0, int64_t p1, int64_t K, int64_t C, int64_t Ph,
               int64_t Pl, A lo, A hi, T* out) {
  std::vector<A> acc(C);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t c = 0; c < C; ++c) acc[c] = bias ? bias[c] : A(0);
    for (int64_t k = 0; k < K; ++k) {
      const T* src = dw_row(table[p * K + k], hr, lr, extra, C, Ph, Pl);
      const A* wk = w + k * C;
      for (int64_t c = 0; c < C; ++c) acc[c] += wk[c] * static_cast<A>(src[c]);
    }
    T* o = out + p * C;
    for (int64_t c = 0; c < C; ++c) o[c] = static_cast<T>(std::min(std::max(acc[c], lo), hi));
  }
}

// Overloads picked by (input, output) types: the vectorised clones for float32 -> float32 and
// (widened bfloat16) float32 -> bfloat16; the generic template for the rest.
inline void dw_pixels(const float* hr, const float* lr, const float* extra, const float* w,
                      const float* bias, const int32_t* table, int64_t p0, int64_t p1, int64_t K,
                      int64_t C, int64_t Ph, int64_t Pl, float lo, float hi, float* out) {
  dw_pixels_f32(hr, lr, extra, w, bias, table, p0, p1, K, C, Ph, Pl, lo, hi, out);
}

inline void dw_pixels(const float* hr, const float* lr, const float* extra, const float* w,
                      const float* bias, const int32_t* table, int64_t p0, int64_t p1, int64_t K,
                      int64_t C, int64_t Ph, int64_t Pl, float lo, float hi,
                      c10::BFloat16* out) {
  dw_pixels_f32_to_bf16(hr, lr, extra, w, bias, table, p0, p1, K, C, Ph, Pl, lo, hi, out);
}

// Widened inputs with other output types: not used (only bfloat16 layers are widened).
template <typename O, typename A>
void dw_pixels(const float*, const float*, const float*, const A*, const A*, const int32_t*,
               int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, A, A, O*) {
  TORCH_CHECK(false, "segblocks: internal error, only bfloat16 inputs are widened");
}

Tensor depthwise_conv_blocks(const Tensor& hr, const Tensor& lr, const Tensor& weight,
                             const std::optional<Tensor>& bias, const Tensor& table_hr,
                             const Tensor& table_lr, const Tensor& avg_ids, double value,
                             double lo, double hi) {
  TORCH_CHECK(hr.dim() >= 2 && lr.dim() >= 2,
              "segblocks: hr / lr must be [B, h, w, C] or [pixels, C]");
  TORCH_CHECK(hr.device().is_cpu() && lr.device().is_cpu(), "segblocks: CPU tensors only");
  TORCH_CHECK(hr.is_contiguous() && lr.is_contiguous(),
              "segblocks: hr / lr must be contiguous [B, h, w, C] (channels-last blocks)");
  TORCH_CHECK(hr.scalar_type() == lr.scalar_type(), "segblocks: hr / lr dtypes differ");
  const int64_t C = hr.size(-1);
  TORCH_CHECK(lr.size(-1) == C, "segblocks: hr / lr channel counts differ");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == C,
              "segblocks: weight must be [taps, C], got ", weight.sizes());
  const int64_t K = weight.size(0);
  for (const Tensor* t : {&table_hr, &table_lr, &avg_ids}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->dim() == 2,
                "segblocks: indirection tables must be contiguous 2-D int32");
  }
  TORCH_CHECK(table_hr.size(1) == K && table_lr.size(1) == K && avg_ids.size(1) == 4,
              "segblocks: table widths do not match the taps");
  const int64_t Ph = C ? hr.numel() / C : 0, Pl = C ? lr.numel() / C : 0;
  const int64_t Ka = avg_ids.size(0);
  const int64_t limit = Ph + Pl + 1 + Ka;
  // Validated by plain loops (a few microseconds; tensor min / max calls would cost more
  // than the small layers' convolution).
  auto in_range = [](const Tensor& t, int64_t hi) {
    const int32_t* p = t.const_data_ptr<int32_t>();
    int32_t mn = 0, mx = 0;
    for (int64_t i = 0, n = t.numel(); i < n; ++i) {
      mn = std::min(mn, p[i]);
      mx = std::max(mx, p[i]);
    }
    return mn >= 0 && (t.numel() == 0 || mx < hi);
  };
  TORCH_CHECK(in_range(table_hr, limit) && in_range(table_lr, limit),
              "segblocks: indirection table entries out of range [0, ", limit, ")");
  TORCH_CHECK(in_range(avg_ids, Ph), "segblocks: avg_ids must name HR pixels [0, ", Ph, ")");
  // Weights, bias and accumulation in float32 (float64 for float64 inputs).
  const auto acc_type = hr.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor wf = weight.to(acc_type).contiguous();
  Tensor bf;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == C, "segblocks: bias must have C entries");
    bf = bias->to(acc_type).contiguous();
  }
  // One output for both levels (HR pixels first): point-wise ops after it run once.
  Tensor out = at::empty({table_hr.size(0) + table_lr.size(0), C}, hr.options());
  // Row 0: the pad value; row 1 + j: the mean of the j-th 2x2 group, both in T, as a BlockPad
  // store holds them, so that results match the padded path.
  Tensor extra = at::empty({1 + Ka, C}, hr.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hr.scalar_type(), "dw_blocks", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    const T* h = hr.const_data_ptr<T>();
    const T* l = lr.const_data_ptr<T>();
    const A* bp = bf.defined() ? bf.const_data_ptr<A>() : nullptr;
    T* ex = extra.mutable_data_ptr<T>();
    fill_row(ex, C, static_cast<T>(value));
    const int32_t* ai = avg_ids.const_data_ptr<int32_t>();
    at::parallel_for(0, Ka, grain_for(4 * C * sizeof(T)), [&](int64_t a0, int64_t a1) {
      for (int64_t j = a0; j < a1; ++j) {
        const T* r0 = h + int64_t(ai[4 * j]) * C;
        const T* r1 = h + int64_t(ai[4 * j + 1]) * C;
        const T* r2 = h + int64_t(ai[4 * j + 2]) * C;
        const T* r3 = h + int64_t(ai[4 * j + 3]) * C;
        T* d = ex + (1 + j) * C;
        for (int64_t c = 0; c < C; ++c) {
          A a = static_cast<A>(r0[c]) + static_cast<A>(r1[c]);
          a += static_cast<A>(r2[c]);
          a += static_cast<A>(r3[c]);
          d[c] = static_cast<T>(a * A(0.25));
        }
      }
    });
    const A* w = wf.const_data_ptr<A>();
    const A alo = static_cast<A>(lo), ahi = static_cast<A>(hi);
    // bfloat16: the float32 loop on widened copies of the inputs (each input pixel is read by
    // up to kh * kw taps; widening it once is cheaper than converting at every tap).
    Tensor hw, lw, ew;
    if (hr.scalar_type() == at::kBFloat16) {
      hw = hr.to(at::kFloat);
      lw = lr.to(at::kFloat);
      ew = extra.to(at::kFloat);
    }
    for (int level = 0; level < 2; ++level) {
      const Tensor& table = level == 0 ? table_hr : table_lr;
      T* o = out.mutable_data_ptr<T>() + (level == 0 ? 0 : table_hr.size(0) * C);
      const int32_t* tb = table.const_data_ptr<int32_t>();
      // Whole groups of 4 pixels per task, at least ~64 KB of input each.
      const int64_t grain = (grain_for(K * C * sizeof(T)) + 3) / 4 * 4;
      at::parallel_for(0, table.size(0), grain, [&](int64_t p0, int64_t p1) {
        if (hw.defined()) {
          dw_pixels(hw.const_data_ptr<float>(), lw.const_data_ptr<float>(),
                    ew.const_data_ptr<float>(), w, bp, tb, p0, p1, K, C, Ph, Pl, alo, ahi, o);
        } else {
          dw_pixels(h, l, ex, w, bp, tb, p0, p1, K, C, Ph, Pl, alo, ahi, o);
        }
      });
    }
  });
  return out;
}


// Indirection tables of a padded op (segblocks/blocks/indirection.py has the semantics and a
// tensor-op builder): for every output pixel of every block and every tap, the source id of the
// input pixel that BlockPad would have put there. One pass over (block, output pixel, tap) from
// global coordinates, then a sequential pass numbering the distinct 2x2 groups (avg mode).
// geometry = [N, GH, GW, s, pt, pl, kh, kw, stride, dh, dw, mode] (mode 0 avg, 1 strided,
// 2 zero). Returns (table_hr [Nh*o*o, kh*kw], table_lr [Nl*(o/2)^2, kh*kw], avg_ids [Ka, 4]).
std::tuple<Tensor, Tensor, Tensor> conv_taps(const Tensor& mask_flat, const Tensor& slot,
                                             at::IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 12, "segblocks: conv_taps geometry has 12 entries");
  const int64_t N = geometry[0], GH = geometry[1], GW = geometry[2], s = geometry[3];
  const int64_t pt = geometry[4], pl = geometry[5], kh = geometry[6], kw = geometry[7];
  const int64_t st = geometry[8], dh = geometry[9], dw = geometry[10], mode = geometry[11];
  TORCH_CHECK(mask_flat.device().is_cpu() && slot.device().is_cpu(),
              "segblocks: conv_taps takes CPU tensors");
  TORCH_CHECK(mask_flat.numel() == N * GH * GW && slot.numel() == N * GH * GW,
              "segblocks: conv_taps mask / slot do not match the grid");
  TORCH_CHECK(s % 2 == 0 && st >= 1 && (s / 2) % st == 0 && mode >= 0 && mode <= 2,
              "segblocks: conv_taps geometry ", geometry, " is invalid");
  const Tensor m = mask_flat.to(at::kBool).contiguous();
  const Tensor sl = slot.to(at::kLong).contiguous();
  const bool* mp = m.const_data_ptr<bool>();
  const int64_t* sp = sl.const_data_ptr<int64_t>();
  const int64_t cells = N * GH * GW, t = s / 2, K = kh * kw;
  std::vector<int64_t> hr_cells, lr_cells;
  for (int64_t c = 0; c < cells; ++c) (mp[c] ? hr_cells : lr_cells).push_back(c);
  const int64_t nh = hr_cells.size(), nl = lr_cells.size();
  const int64_t Ph = nh * s * s, Pl = nl * t * t, pad_id = Ph + Pl;
  TORCH_CHECK(pad_id + 1 + Ph / 4 < (int64_t(1) << 31), "segblocks: grid too large for int32 ids");
  Tensor tables[2];
  for (int level = 0; level < 2; ++level) {
    const bool req_hr = level == 0;
    const std::vector<int64_t>& own = req_hr ? hr_cells : lr_cells;
    const int64_t side = req_hr ? s : t, o = side / st, H = GH * side, W = GW * side;
    tables[level] = at::empty({static_cast<int64_t>(own.size()) * o * o, K}, at::kInt);
    int32_t* tb = tables[level].data_ptr<int32_t>();
    // Tap offsets inside a block: output pixels whose whole window lies in their own block
    // (most of them in large tiles) take base + offset, without per-tap tests.
    std::vector<int64_t> off(K);
    for (int64_t ky = 0; ky < kh; ++ky)
      for (int64_t kx = 0; kx < kw; ++kx) off[ky * kw + kx] = ky * dh * side + kx * dw;
    const int64_t span_y = (kh - 1) * dh, span_x = (kw - 1) * dw;
    at::parallel_for(0, static_cast<int64_t>(own.size()), 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t cell = own[b], n = cell / (GH * GW), gy = (cell / GW) % GH, gx = cell % GW;
        const int64_t own_base = (req_hr ? 0 : Ph) + sp[cell] * side * side;
        int32_t* e = tb + b * o * o * K;
        for (int64_t oy = 0; oy < o; ++oy) {
          for (int64_t ox = 0; ox < o; ++ox) {
            const int64_t y0 = oy * st - pt, x0 = ox * st - pl;
            if (y0 >= 0 && y0 + span_y < side && x0 >= 0 && x0 + span_x < side) {
              const int64_t base = own_base + y0 * side + x0;
              for (int64_t k = 0; k < K; ++k) *e++ = static_cast<int32_t>(base + off[k]);
              continue;
            }
            for (int64_t ky = 0; ky < kh; ++ky) {
              for (int64_t kx = 0; kx < kw; ++kx, ++e) {
                const int64_t y = oy * st + ky * dh - pt, x = ox * st + kx * dw - pl;
                if (y >= 0 && y < side && x >= 0 && x < side) {  // the block's own pixel
                  *e = own_base + y * side + x;
                  continue;
                }
                const int64_t Y = gy * side + y, X = gx * side + x;
                if (mode == 2 || Y < 0 || Y >= H || X < 0 || X >= W) {
                  *e = pad_id;
                  continue;
                }
                const int64_t ny = Y / side, nx = X / side, qy = Y - ny * side, qx = X - nx * side;
                const int64_t nc = n * GH * GW + ny * GW + nx, ns = sp[nc];
                if (req_hr) {  // HR neighbour: its pixel; LR neighbour: nearest-upsampled
                  *e = mp[nc] ? ns * s * s + qy * s + qx : Ph + ns * t * t + (qy / 2) * t + qx / 2;
                } else if (!mp[nc]) {  // LR neighbour: its pixel
                  *e = Ph + ns * t * t + qy * t + qx;
                } else {  // HR neighbour: its 2x2 group's top-left pixel (avg: -1 - that id)
                  const int64_t tl = ns * s * s + 2 * qy * s + 2 * qx;
                  *e = mode == 0 ? -1 - tl : tl;
                }
              }
            }
          }
        }
      }
    });
  }
  // Number the distinct 2x2 groups in order of first use.
  std::vector<int32_t> group(mode == 0 ? Ph : 0, -1);
  std::vector<int32_t> avg;
  int32_t* e = tables[1].data_ptr<int32_t>();
  for (int64_t i = 0, n = tables[1].numel(); i < n; ++i) {
    if (e[i] >= 0) continue;
    const int32_t tl = -1 - e[i];
    if (group[tl] < 0) {
      group[tl] = static_cast<int32_t>(avg.size() / 4);
      avg.insert(avg.end(), {tl, static_cast<int32_t>(tl + 1), static_cast<int32_t>(tl + s),
                             static_cast<int32_t>(tl + s + 1)});
    }
    e[i] = static_cast<int32_t>(pad_id + 1 + group[tl]);
  }
  Tensor avg_ids = at::empty({static_cast<int64_t>(avg.size() / 4), 4}, at::kInt);
  if (!avg.empty()) std::memcpy(avg_ids.data_ptr<int32_t>(), avg.data(), avg.size() * 4);
  return {tables[0], tables[1], avg_ids};
}

}  // namespace
}  // namespace segblocks_kernels

TORCH_LIBRARY(segblocks_C, m) {
  m.def(
      "halo_fill_(Tensor(a!) flat, Tensor copy_dst, Tensor copy_src, Tensor avg_dst, "
      "Tensor avg_src, Tensor const_dst, float value) -> ()");
  m.def(
      "halo_fill_backward_(Tensor(a!) grad, Tensor copy_dst, Tensor copy_src, Tensor avg_dst, "
      "Tensor avg_src, Tensor const_dst) -> ()");
  m.def(
      "pad_blocks(Tensor hr, Tensor lr, Tensor copy_dst, Tensor copy_src, Tensor avg_dst, "
      "Tensor avg_src, Tensor const_dst, int[] geometry, float value) -> (Tensor, Tensor)");
  m.def(
      "pad_blocks_backward(Tensor? grad_hr, Tensor? grad_lr, Tensor copy_dst, Tensor copy_src, "
      "Tensor avg_dst, Tensor avg_src, Tensor const_dst, int[] geometry, int num_hr, "
      "int num_lr) -> (Tensor, Tensor)");
  m.def("sample_blocks(Tensor x, Tensor hr_cells, Tensor lr_cells, int[] geometry) -> Tensor");
  m.def(
      "sample_blocks_backward(Tensor grad, Tensor hr_cells, Tensor lr_cells, int[] geometry, "
      "int N) -> Tensor");
  m.def(
      "combine_blocks(Tensor hr, Tensor lr, Tensor hr_cells, Tensor lr_cells, int[] geometry) "
      "-> Tensor");
  m.def(
      "combine_blocks_backward(Tensor grad, Tensor hr_cells, Tensor lr_cells, int[] geometry) "
      "-> (Tensor, Tensor)");
  m.def("pad_plan(Tensor mask_flat, Tensor slot, int[] geometry) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("conv_taps(Tensor mask_flat, Tensor slot, int[] geometry) -> (Tensor, Tensor, Tensor)");
  m.def(
      "depthwise_conv_blocks(Tensor hr, Tensor lr, Tensor weight, Tensor? bias, Tensor table_hr, "
      "Tensor table_lr, Tensor avg_ids, float value, float lo, float hi) -> Tensor");
}

TORCH_LIBRARY_IMPL(segblocks_C, CPU, m) {
  m.impl("halo_fill_", &segblocks_kernels::halo_fill_);
  m.impl("halo_fill_backward_", &segblocks_kernels::halo_fill_backward_);
  m.impl("pad_blocks", &segblocks_kernels::pad_blocks);
  m.impl("pad_blocks_backward", &segblocks_kernels::pad_blocks_backward);
  m.impl("sample_blocks", &segblocks_kernels::sample_blocks);
  m.impl("sample_blocks_backward", &segblocks_kernels::sample_blocks_backward);
  m.impl("combine_blocks", &segblocks_kernels::combine_blocks);
  m.impl("combine_blocks_backward", &segblocks_kernels::combine_blocks_backward);
  m.impl("pad_plan", &segblocks_kernels::pad_plan);
  m.impl("depthwise_conv_blocks", &segblocks_kernels::depthwise_conv_blocks);
  m.impl("conv_taps", &segblocks_kernels::conv_taps);
}
