// CPU kernels for the layers MindSpore's CPU backend computes slowly, forward and gradients,
// on float32 NCHW tensors, one file a kind (cpu_kernels.py builds them into one library and
// loads each entry as a MindSpore ops.Custom "aot" op, built on first use with the machine's
// C++ compiler):
//   depthwise.cc    the k x k depthwise conv (padding k / 2, stride 1 or 2) and its gradients
//   gemm_convs.cc   the GEMM convs: the 1x1 conv with g >= 1 groups, the dense k x k stem
//                   conv, the classifier; and sgemm, oneDNN's or portable loops
//   batch_norm.cc   training-mode BatchNorm and its gradient
//   pools.cc        the 3x3 stride-2 max and average pools, the global mean (inference)
//   whole_units.cc  a ShuffleNetV2 unit, a ShuffleNetV1 unit, a MobileNetV1 separable block
//                   as one kernel each (inference)
// For inference each conv applies the eval-mode BatchNorm after it and its ReLU / ReLU6 as the
// output is written (one pass instead of three ops).
//
// Entry points follow MindSpore's aot CPU signature (AOT_ARGS): params holds the inputs, then
// the outputs; shapes[i] the shape of params[i]. They return nonzero on a dtype or shape they
// do not take. Threads: OpenMP, over independent planes (depthwise), GEMMs (1x1), rows
// (dense) or channels (BatchNorm).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace zoo {

// Threads per kernel: $ZOO_KERNEL_THREADS, else every core this process may run on. Not
// OpenMP's default: importing MindSpore sets OMP_NUM_THREADS=1 in the C environment, which
// every process it starts inherits (measured: ShuffleNetV2 training 876 vs 593 ms a step).
inline int threads() {
  static const int count = [] {
    const char *value = std::getenv("ZOO_KERNEL_THREADS");
    const int asked = value ? std::atoi(value) : 0;
    return asked > 0 ? asked : omp_get_num_procs();
  }();
  return count;
}

// Threads for a parallel region of ``work`` multiply-adds: one below $ZOO_SERIAL_WORK (default
// kSerialWork, about 0.3 ms on one core), where waking a second thread cost more than it saved
// (ShuffleNetV2 1.0x at batch 1, whose convs are 0.4-2.6 M each: 5.1-6.7 ms a call against
// 7.2-8.3 with two threads on every region, alternating). A float copied or summed counts as
// kCopyWork multiply-adds (memory-bound).
constexpr int64_t kSerialWork = 16 << 20, kCopyWork = 16;
inline int threads_for(int64_t work) {
  static const int64_t serial = [] {
    const char *value = std::getenv("ZOO_SERIAL_WORK");
    return value ? std::atoll(value) : kSerialWork;
  }();
  return work < serial ? 1 : threads();
}

inline float *tensor(void **params, int i) { return static_cast<float *>(params[i]); }

inline bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

// ---------------------------------------------------------------- the output's epilogue

// What a forward does to each output channel as it is written: nothing (training), or the
// inference epilogue y = act(y * scale[c] + shift[c]), the eval-mode BatchNorm folded in
// (scale = gamma / sqrt(var + eps), shift = beta - mean * scale) and the activation fused.
enum class Activation { kNone, kReLU, kReLU6 };

struct NoEpilogue {
  void operator()(int64_t, float *, int64_t) const {}
};

struct BatchNormActivation {
  std::vector<float> scale, shift;
  Activation act;

  BatchNormActivation(int64_t channels, const float *gamma, const float *beta, const float *mean,
                      const float *var, float eps, Activation a)
      : scale(channels), shift(channels), act(a) {
    for (int64_t c = 0; c < channels; ++c) {
      scale[c] = gamma[c] / std::sqrt(var[c] + eps);
      shift[c] = beta[c] - mean[c] * scale[c];
    }
  }

  // The BatchNorm whose gamma, beta, moving mean and moving variance are params[at] .. at + 3
  // (an aot kernel's inputs).
  BatchNormActivation(void **params, int64_t **shapes, int at, float eps, Activation a)
      : BatchNormActivation(shapes[at][0], tensor(params, at), tensor(params, at + 1),
                            tensor(params, at + 2), tensor(params, at + 3), eps, a) {}

  // The ``count`` outputs at y, all of output channel c.
  void operator()(int64_t c, float *__restrict y, int64_t count) const {
    const float a = scale[c], b = shift[c];
    const float low = act == Activation::kNone ? -INFINITY : 0.0f;
    const float high = act == Activation::kReLU6 ? 6.0f : INFINITY;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) y[i] = std::min(std::max(y[i] * a + b, low), high);
  }
};

// A ShuffleNetV1 stride-1 unit's epilogue: the BatchNorm, the shortcut x added, the ReLU; the
// shortcut's element sits at the output's offset (same shape).
struct BatchNormAddReLU {
  BatchNormActivation bn;
  const float *x, *y;
  void operator()(int64_t c, float *__restrict out, int64_t count) const {
    bn(c, out, count);
    const float *__restrict shortcut = x + (out - y);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) out[i] = std::max(out[i] + shortcut[i], 0.0f);
  }
};

// ---------------------------------------------------------------- what the kinds share
// Each is defined in the file named, for the template arguments instantiated there.

constexpr int64_t kMaxTaps = 64;  // k <= 7 (depthwise_grad_weight sums taps on the stack)

struct DepthwiseShape {
  int64_t n, channels, h, w, ho, wo, k, pad;
  bool valid() const { return k % 2 == 1 && k * k <= kMaxTaps; }
};

// depthwise.cc: output rows [first, last) of one plane of the 3x3 depthwise conv (padding 1)
// into ``out``, ``zeros`` standing for a padded input row (d.w floats). S = 1, 2.
template <int S>
void depthwise3x3_rows(const DepthwiseShape &d, const float *xp, const float *wp, int64_t first,
                       int64_t last, const float *zeros, float *out);

// depthwise.cc: the whole conv, epilogue on each output plane; ``source``: channel c reads input
// channel source[c] (a channel shuffle on the way in), nullptr reads channel c. S = 1, 2 with
// NoEpilogue and BatchNormActivation.
template <int S, typename Epilogue>
void depthwise_forward(const DepthwiseShape &d, const float *x, const float *wt, float *y,
                       const Epilogue &epilogue, const int64_t *source = nullptr);

// gemm_convs.cc: row-major C = op(A) op(B) + beta C, op = transpose where the flag is 'T'.
void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
           const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

struct GroupedShape {
  int64_t n, cin, cout, hw, cin_per_group, cout_per_group, groups;
  bool valid() const { return groups > 0 && cin_per_group * groups == cin; }
};

// Where a 1x1 conv's channels lie in a larger tensor (the ShuffleNetV2 units read every other
// channel of their input and write after the channels they pass): channel c is channel
// first + c * step of a tensor of ``channels`` channels; channels 0 means the conv's own tensor.
struct ChannelView {
  int64_t channels = 0, first = 0, step = 1;
};

// gemm_convs.cc: the 1x1 conv with s.groups groups, epilogue on each output row's slice; with
// NoEpilogue, BatchNormActivation and BatchNormAddReLU.
template <typename Epilogue>
void conv1x1_forward(const GroupedShape &s, const float *x, const float *wt, float *y,
                     const Epilogue &epilogue, ChannelView from = {}, ChannelView to = {});

// pools.cc: x (n, c, h, w) -> channels [0, c) of y (n, out_channels, ho, wo), the 3x3 stride-2
// max (Max) or average pool with one row and column of zeros on each side, each output at
// least ``low``.
template <bool Max>
void pool3x3s2(int64_t n, int64_t c, int64_t h, int64_t w, int64_t ho, int64_t wo,
               const float *x, float *y, int64_t out_channels, float low);

// ---------------------------------------------------------------- the conv kernels' entries
// Each conv kernel (depthwise.cc's Depthwise<S>, gemm_convs.cc's Conv1x1 and Dense<S>): its
// shape from the (x, w, y) shapes, the forward with an epilogue, and the two gradients.

// x, w -> y
template <typename Kernel>
int forward_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 3 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[0], shapes[1], shapes[2]);
  if (!shape.valid()) return 2;
  Kernel::forward(shape, tensor(params, 0), tensor(params, 1), tensor(params, 2), NoEpilogue());
  return 0;
}

// dy, w, x (for its shape) -> dx
template <typename Kernel>
int grad_input_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[2], shapes[1], shapes[0]);
  if (!shape.valid()) return 2;
  Kernel::grad_input(shape, tensor(params, 0), tensor(params, 1), tensor(params, 3));
  return 0;
}

// dy, x, w (for its shape) -> dw
template <typename Kernel>
int grad_weight_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 4 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[1], shapes[2], shapes[0]);
  if (!shape.valid()) return 2;
  Kernel::grad_weight(shape, tensor(params, 0), tensor(params, 1), tensor(params, 3));
  return 0;
}

// x, w, gamma, beta, moving mean, moving variance, eps (1,) -> y: the conv, then the eval-mode
// BatchNorm and the activation as each output channel is written.
template <typename Kernel, Activation A>
int inference_entry(int nparam, void **params, int64_t **shapes, const char **dtypes) {
  if (nparam != 8 || !all_float32(nparam, dtypes)) return 1;
  const auto shape = Kernel::shape(shapes[0], shapes[1], shapes[7]);
  if (!shape.valid() || shapes[2][0] != shapes[7][1]) return 2;
  const BatchNormActivation epilogue(params, shapes, 2, *tensor(params, 6), A);
  Kernel::forward(shape, tensor(params, 0), tensor(params, 1), tensor(params, 7), epilogue);
  return 0;
}

}  // namespace zoo

// MindSpore's aot signature: inputs then outputs in params, their shapes and dtypes.
#define AOT_ARGS int nparam, void **params, int *, int64_t **shapes, const char **dtypes, void *, \
                 void *
#define PASS nparam, params, shapes, dtypes
