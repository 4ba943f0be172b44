// Shared by keras_cmt's CPU training kernels: a [rows, channels] tensor (channels last) is processed in blocks of
// whole rows small enough to stay in cache while a block is read, transformed and reduced, on TensorFlow's intra-op
// thread pool. Per-channel sums are kept per block and added in double afterwards, so the result does not depend
// on how the pool schedules the blocks.
#ifndef KERAS_CMT_KERNELS_ROW_BLOCKS_H_
#define KERAS_CMT_KERNELS_ROW_BLOCKS_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/SpecialFunctions"

namespace keras_cmt {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

struct RowBlocks {
  int64_t rows, channels, block_rows, blocks;
  RowBlocks(int64_t rows, int64_t channels, int64_t block_elems = 8192)
      : rows(rows), channels(channels),
        block_rows(std::max<int64_t>(16, block_elems / std::max<int64_t>(channels, 1))),  // >= 16: per-block sums stay small
        blocks((rows + block_rows - 1) / block_rows) {}

  // fn(block, first_row, row_count) for every block, in parallel.
  template <typename F>
  void ForEach(tensorflow::OpKernelContext* ctx, int64_t cost_per_element, F fn) const {
    const auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, blocks, block_rows * channels * cost_per_element,
                      [&](int64_t begin, int64_t end) {
                        for (int64_t b = begin; b < end; ++b) {
                          const int64_t first = b * block_rows;
                          fn(b, first, std::min(block_rows, rows - first));
                        }
                      });
  }
};

// Every op here returns a tensor shaped as x and two smaller ones of one shape (statistics, or dgamma and dbeta):
// allocates them and gives their data.
inline absl::Status AllocateOutputs(OpKernelContext* ctx, const TensorShape& x_shape, const TensorShape& small_shape,
                                    float** full, float** small_a, float** small_b) {
  Tensor *full_t, *a_t, *b_t;
  TF_RETURN_IF_ERROR(ctx->allocate_output(0, x_shape, &full_t));
  TF_RETURN_IF_ERROR(ctx->allocate_output(1, small_shape, &a_t));
  TF_RETURN_IF_ERROR(ctx->allocate_output(2, small_shape, &b_t));
  *full = full_t->flat<float>().data();
  *small_a = a_t->flat<float>().data();
  *small_b = b_t->flat<float>().data();
  return absl::OkStatus();
}

// Shape function of the gradient ops, whose inputs start (dy, x, gamma): dx shaped as x, dgamma and dbeta as gamma.
inline absl::Status GradientShapes(tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->input(1));
  c->set_output(1, c->input(2));
  c->set_output(2, c->input(2));
  return absl::OkStatus();
}

// Adds per-block partial sums ([blocks, channels], row-major) in double, in block order: the total does not depend
// on how the pool scheduled the blocks.
inline std::vector<double> SumOverBlocks(const std::vector<float>& parts, int64_t channels) {
  std::vector<double> total(channels, 0.0);
  for (size_t start = 0; start < parts.size(); start += channels)
    for (int64_t c = 0; c < channels; ++c) total[c] += parts[start + c];
  return total;
}

// Phi(x) = 0.5 + 0.5 erf(x / sqrt(2)), vectorised by Eigen. Eigen's erf is about 20% cheaper than the erfc of
// TensorFlow's form; the absolute error it adds to Phi for negative x (< 6e-8) is below float32 rounding of GELU.
template <typename T>
inline auto NormalCdf(const T& x) { return 0.5f + 0.5f * (x * kSqrtHalf).erf(); }

// Exact GELU, x Phi(x).
inline void Gelu(const float* x, float* out, int64_t n) {
  ConstArrayMap xs(x, n);
  ArrayMap(out, n) = xs * NormalCdf(xs);
}

}  // namespace keras_cmt

#endif  // KERAS_CMT_KERNELS_ROW_BLOCKS_H_
