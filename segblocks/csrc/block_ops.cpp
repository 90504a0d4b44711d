// CPU kernels of the SegBlocks block ops (see segblocks/blocks/kernels.py for the semantics).
//
// Registered as torch.ops.segblocks_C.*; the Python-defined segblocks:: custom ops call them for
// CPU tensors. Every kernel is written with at::parallel_for so that no two threads write the
// same element: forwards split over destination rows, the halo adjoint (a scatter-add) splits
// over channel ranges, each thread running every entry for its channels in plan order, so the
// results are deterministic and do not depend on the number of threads.
//
// Layout ("flat store"): a contiguous [R + 1, C] tensor holding the padded HR blocks
// [Nh, s+pt+pb, s+pl+pr], then the padded LR blocks [Nl, t+pt+pb, t+pl+pr] (t = s/2), channels
// last, then one row R (the pad-value row).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
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
  if (n == 0) return;
  int64_t lo = p[0], up = p[0];
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, p[i]);
    up = std::max(up, p[i]);
  }
  TORCH_CHECK(lo >= 0 && up < hi, "segblocks: ", name, " holds indices in [", lo, ", ", up,
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

// ----------------------------------------------------------------------------- halo fill

template <typename T>
void halo_fill_kernel(T* flat, int64_t rows, int64_t C, const Plan& p, T value) {
  const int64_t R = rows - 1;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T));
  fill_row(flat + R * C, C, value);  // phase 0
  if (p.kc) {                        // phase 1: one memcpy per halo row, straight from its source
    at::parallel_for(0, p.kc, grain_for(2 * row_bytes), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        std::memcpy(flat + p.cd[i] * C, flat + p.cs[i] * C, row_bytes);
      }
    });
  }
  if (p.ka) {  // phase 2: 2x2 means; filler entries aimed at row R are skipped (R keeps value)
    at::parallel_for(0, p.ka, grain_for(5 * row_bytes), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t d = p.ad[i];
        if (d == R) continue;
        const int64_t* s = p.as + 4 * i;
        using acc_t = at::opmath_type<T>;
        const T* s0 = flat + s[0] * C;
        const T* s1 = flat + s[1] * C;
        const T* s2 = flat + s[2] * C;
        const T* s3 = flat + s[3] * C;
        T* o = flat + d * C;
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
  if (p.kz) {  // phase 3
    at::parallel_for(0, p.kz, grain_for(row_bytes), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) fill_row(flat + p.kd[i] * C, C, value);
    });
  }
}

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
      halo_fill_kernel<scalar_t>(f.mutable_data_ptr<scalar_t>(), rows, C, p,
                                 static_cast<scalar_t>(value));
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

// Interiors of padded blocks from blocks [Nb, C, side, side] (any strides).
template <typename T>
void write_interiors(T* flat, int64_t C, const Tensor& blocks, int64_t base, int64_t blk,
                     int64_t wp, int64_t pt, int64_t pl, int64_t side) {
  const int64_t Nb = blocks.size(0);
  if (Nb == 0) return;
  const T* src = blocks.const_data_ptr<T>();
  const int64_t sb = blocks.stride(0), sc = blocks.stride(1), sy = blocks.stride(2),
                sx = blocks.stride(3);
  const int64_t row_bytes = side * C * static_cast<int64_t>(sizeof(T));
  at::parallel_for(0, Nb * side, grain_for(row_bytes), [&](int64_t b0, int64_t e0) {
    for (int64_t it = b0; it < e0; ++it) {
      const int64_t b = it / side, y = it % side;
      T* d = flat + (base + b * blk + (y + pt) * wp + pl) * C;
      copy_pixels(d, C, src + b * sb + y * sy, side, C, sx, sc);
    }
  });
}

// Interiors of padded blocks -> blocks [Nb, side, side, C] contiguous.
template <typename T>
void read_interiors(T* out, const T* flat, int64_t C, int64_t Nb, int64_t base, int64_t blk,
                    int64_t wp, int64_t pt, int64_t pl, int64_t side) {
  if (Nb == 0) return;
  const int64_t n = side * C;
  at::parallel_for(0, Nb * side, grain_for(n * static_cast<int64_t>(sizeof(T))),
                   [&](int64_t b0, int64_t e0) {
                     for (int64_t it = b0; it < e0; ++it) {
                       const int64_t b = it / side, y = it % side;
                       std::memcpy(out + it * n, flat + (base + b * blk + (y + pt) * wp + pl) * C,
                                   sizeof(T) * n);
                     }
                   });
}

Tensor pad_blocks(const Tensor& hr, const Tensor& lr, const Tensor& copy_dst,
                  const Tensor& copy_src, const Tensor& avg_dst, const Tensor& avg_src,
                  const Tensor& const_dst, IntArrayRef geometry, double value) {
  TORCH_CHECK(hr.dim() == 4, "segblocks: hr must be [Nh, C, s, s], got ", hr.sizes());
  const int64_t Nh = hr.size(0), Nl = lr.size(0), C = hr.size(1);
  PadGeo g = pad_geometry(geometry, Nh, Nl);
  check_blocks(hr, C, g.s, "hr");
  check_blocks(lr, C, g.t, "lr");
  TORCH_CHECK(hr.scalar_type() == lr.scalar_type(), "segblocks: hr is ", hr.scalar_type(),
              " but lr is ", lr.scalar_type());
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, g.R + 1);
  Tensor flat = at::empty({g.R + 1, C}, hr.options().memory_format(at::MemoryFormat::Contiguous));
  if (C == 0) return flat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, hr.scalar_type(), "pad_blocks", [&] {
    scalar_t* f = flat.mutable_data_ptr<scalar_t>();
    write_interiors<scalar_t>(f, C, hr, 0, g.hp * g.wp, g.wp, g.pt, g.pl, g.s);
    write_interiors<scalar_t>(f, C, lr, g.rows_hr, g.tp * g.tw, g.tw, g.pt, g.pl, g.t);
    halo_fill_kernel<scalar_t>(f, g.R + 1, C, p, static_cast<scalar_t>(value));
  });
  return flat;
}

std::tuple<Tensor, Tensor> pad_blocks_backward(const Tensor& grad, const Tensor& copy_dst,
                                               const Tensor& copy_src, const Tensor& avg_dst,
                                               const Tensor& avg_src, const Tensor& const_dst,
                                               IntArrayRef geometry, int64_t Nh, int64_t Nl) {
  PadGeo g = pad_geometry(geometry, Nh, Nl);
  check_store(grad, "grad");
  TORCH_CHECK(grad.size(0) == g.R + 1, "segblocks: grad has ", grad.size(0),
              " rows; the geometry needs ", g.R + 1);
  const int64_t C = grad.size(1);
  Plan p = make_plan(copy_dst, copy_src, avg_dst, avg_src, const_dst, g.R + 1);
  Tensor work = grad.clone(at::MemoryFormat::Contiguous);
  auto opts = grad.options().memory_format(at::MemoryFormat::Contiguous);
  Tensor gh = at::empty({Nh, g.s, g.s, C}, opts);
  Tensor gl = at::empty({Nl, g.t, g.t, C}, opts);
  if (C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(),
                                    "pad_blocks_backward", [&] {
                                      scalar_t* w = work.mutable_data_ptr<scalar_t>();
                                      halo_adjoint_kernel<scalar_t>(w, g.R + 1, C, p);
                                      read_interiors<scalar_t>(gh.mutable_data_ptr<scalar_t>(), w,
                                                               C, Nh, 0, g.hp * g.wp, g.wp, g.pt,
                                                               g.pl, g.s);
                                      read_interiors<scalar_t>(gl.mutable_data_ptr<scalar_t>(), w,
                                                               C, Nl, g.rows_hr, g.tp * g.tw,
                                                               g.tw, g.pt, g.pl, g.t);
                                    });
  }
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
    const int64_t n_hr = cl.nh * g.hp, n_all = n_hr + cl.nl * g.tp;
    const int64_t row_bytes = g.wp * C * static_cast<int64_t>(sizeof(T));
    // One task item = one padded row of one block (halo columns zeroed, interior written).
    at::parallel_for(0, n_all, grain_for(row_bytes), [&](int64_t b0, int64_t e0) {
      std::vector<T> scratch;
      for (int64_t it = b0; it < e0; ++it) {
        const bool is_hr = it < n_hr;
        const int64_t hp = is_hr ? g.hp : g.tp, wp = is_hr ? g.wp : g.tw;
        const int64_t side = is_hr ? g.s : g.t;
        const int64_t j = is_hr ? it : it - n_hr;
        const int64_t b = j / hp, y = j % hp;
        T* row = f + ((is_hr ? 0 : g.rows_hr) + b * hp * wp + y * wp) * C;
        if (y < g.pt || y >= g.pt + side) {
          fill_row(row, wp * C, zero);
          continue;
        }
        fill_row(row, g.pl * C, zero);
        fill_row(row + (g.pl + side) * C, g.pr * C, zero);
        const int64_t cell = is_hr ? cl.h[b] : cl.l[b];
        const int64_t n = cell / per, gy = (cell % per) / GW, gx = cell % GW;
        T* d = row + g.pl * C;
        const int64_t i = y - g.pt;  // interior row at the block's resolution
        if (is_hr) {
          copy_pixels(d, C, xp + n * sN + (gy * s + i) * sH + gx * s * sW, s, C, sW, sC);
        } else {
          const T* r0 = xp + n * sN + (gy * s + 2 * i) * sH + gx * s * sW;
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
          const int64_t n_hr = cl.nh * s, n_all = n_hr + cl.nl * s;
          at::parallel_for(0, n_all, grain_for(s * C * static_cast<int64_t>(sizeof(T))),
                           [&](int64_t b0, int64_t e0) {
                             for (int64_t it = b0; it < e0; ++it) {
                               const bool is_hr = it < n_hr;
                               const int64_t j = is_hr ? it : it - n_hr;
                               const int64_t b = j / s, i = j % s;
                               const int64_t cell = is_hr ? cl.h[b] : cl.l[b];
                               const int64_t n = cell / per, gy = (cell % per) / GW,
                                             gx = cell % GW;
                               T* d = o + ((n * H + gy * s + i) * W + gx * s) * C;
                               if (is_hr) {
                                 const T* src =
                                     gp + (b * g.hp * g.wp + (i + g.pt) * g.wp + g.pl) * C;
                                 std::memcpy(d, src, sizeof(T) * s * C);
                               } else {
                                 const T* src = gp + (g.rows_hr + b * g.tp * g.tw +
                                                      (i / 2 + g.pt) * g.tw + g.pl) *
                                                         C;
                                 for (int64_t x = 0; x < s; ++x) {
                                   const T* sp = src + (x / 2) * C;
                                   T* dp = d + x * C;
                                   for (int64_t c = 0; c < C; ++c) {
                                     dp[c] = static_cast<T>(static_cast<acc_t>(sp[c]) *
                                                            static_cast<acc_t>(0.25));
                                   }
                                 }
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
      // HR items: one output row each; LR items: one LR row -> two identical output rows.
      const int64_t n_hr = cl.nh * s, n_all = n_hr + cl.nl * t;
      at::parallel_for(0, n_all, grain_for(s * C * static_cast<int64_t>(sizeof(T))),
                       [&](int64_t b0, int64_t e0) {
        for (int64_t it = b0; it < e0; ++it) {
          const bool is_hr = it < n_hr;
          const int64_t side = is_hr ? s : t;
          const int64_t j = is_hr ? it : it - n_hr;
          const int64_t b = j / side, i = j % side;
          const int64_t cell = is_hr ? cl.h[b] : cl.l[b];
          const int64_t n = cell / per, gy = (cell % per) / GW, gx = cell % GW;
          if (is_hr) {
            T* d = o + ((n * H + gy * s + i) * W + gx * s) * C;
            copy_pixels(d, C, hp + b * hr.stride(0) + i * hr.stride(2), s, C, hr.stride(3),
                        hr.stride(1));
          } else {
            T* d = o + ((n * H + gy * s + 2 * i) * W + gx * s) * C;
            copy_pixels(d, 2 * C, lp + b * lr.stride(0) + i * lr.stride(2), t, C, lr.stride(3),
                        lr.stride(1));
            for (int64_t x = 0; x < t; ++x) {
              std::memcpy(d + (2 * x + 1) * C, d + 2 * x * C, sizeof(T) * C);
            }
            std::memcpy(d + W * C, d, sizeof(T) * s * C);
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
      const int64_t n_hr = cl.nh * s, n_all = n_hr + cl.nl * t;
      at::parallel_for(0, n_all, grain_for(s * C * static_cast<int64_t>(sizeof(T))),
                       [&](int64_t b0, int64_t e0) {
        std::vector<T> scratch;
        for (int64_t it = b0; it < e0; ++it) {
          const bool is_hr = it < n_hr;
          const int64_t side = is_hr ? s : t;
          const int64_t j = is_hr ? it : it - n_hr;
          const int64_t b = j / side, i = j % side;
          const int64_t cell = is_hr ? cl.h[b] : cl.l[b];
          const int64_t n = cell / per, gy = (cell % per) / GW, gx = cell % GW;
          if (is_hr) {
            copy_pixels(ho + j * s * C, C, gp + n * sN + (gy * s + i) * sH + gx * s * sW, s, C, sW,
                        sC);
          } else {
            const T* r0 = gp + n * sN + (gy * s + 2 * i) * sH + gx * s * sW;
            const T* r1 = r0 + sH;
            T* d = lo + j * t * C;
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
      "Tensor avg_src, Tensor const_dst, int[] geometry, float value) -> Tensor");
  m.def(
      "pad_blocks_backward(Tensor grad, Tensor copy_dst, Tensor copy_src, Tensor avg_dst, "
      "Tensor avg_src, Tensor const_dst, int[] geometry, int num_hr, int num_lr) "
      "-> (Tensor, Tensor)");
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
}
