// Training-mode BatchNorm over all axes but the last, optionally preceded by an exact GELU, as one forward and one
// backward kernel. CMT applies GELU then BatchNorm 35 times (CMT-Ti) on its widest activations; TensorFlow runs that
// pair as about ten element-wise passes forward and fourteen backward. Here: forward 2 passes over memory (GELU and
// statistics, then the affine), backward 2 (sums, then dx), with GELU and its slope recomputed from x instead of stored.
#include <cmath>
#include <vector>

#include "row_blocks.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_cmt {
namespace {

REGISTER_OP("KerasCmtBatchNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("epsilon: float")
    .Attr("gelu: bool")
    .Output("y: float")
    .Output("mean: float")
    .Output("variance: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle channels;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &channels));
      c->set_output(0, c->input(0));
      c->set_output(1, channels);
      c->set_output(2, channels);
      return absl::OkStatus();
    })
    .Doc("y = BatchNorm(GELU(x) if gelu else x) with batch statistics; mean and (biased) variance of its input.");

REGISTER_OP("KerasCmtBatchNormGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("mean: float")
    .Input("variance: float")
    .Attr("epsilon: float")
    .Attr("gelu: bool")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn(GradientShapes);

// x must be [..., C] and every per-channel input [C].
absl::Status CheckShapes(OpKernelContext* ctx, const Tensor& x, int64_t channels, std::initializer_list<int> vectors) {
  for (int i : vectors) {
    const Tensor& v = ctx->input(i);
    if (v.dims() != 1 || v.dim_size(0) != channels)
      return errors::InvalidArgument("per-channel input ", i, " has shape ", v.shape().DebugString(), ", expected [",
                                     channels, "]");
  }
  if (x.dims() < 1 || x.dim_size(x.dims() - 1) != channels)
    return errors::InvalidArgument("x has shape ", x.shape().DebugString(), ": its last axis must be the ", channels,
                                   " channels");
  return absl::OkStatus();
}

class BatchNormOp : public OpKernel {
 public:
  explicit BatchNormOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, c->GetAttr("gelu", &gelu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t C = ctx->input(1).NumElements();
    OP_REQUIRES_OK(ctx, CheckShapes(ctx, x, C, {1, 2}));
    const int64_t M = C == 0 ? 0 : x.NumElements() / C;
    float *y, *mean, *var;
    OP_REQUIRES_OK(ctx, AllocateOutputs(ctx, x.shape(), TensorShape({C}), &y, &mean, &var));
    if (M == 0) {  // statistics of nothing, as reduce_mean gives
      std::fill(mean, mean + C, NAN);
      std::fill(var, var + C, NAN);
      return;
    }
    const float* x_p = x.flat<float>().data();
    const float* gamma = ctx->input(1).flat<float>().data();
    const float* beta = ctx->input(2).flat<float>().data();

    // The statistics are of u = GELU(x) (or x). Each block, while in cache, gives its mean and sum of squared
    // deviations from that mean; the blocks are merged in double (Chan et al.), so the variance does not suffer
    // from cancellation when |mean| >> std.
    const RowBlocks blocks(M, C);
    std::vector<float> block_mean(blocks.blocks * C, 0.f), block_m2(blocks.blocks * C, 0.f);
    blocks.ForEach(ctx, gelu_ ? 30 : 6, [&](int64_t b, int64_t first, int64_t count) {
      const float* u = x_p + first * C;
      if (gelu_) {  // y holds GELU(x) until the second pass
        Gelu(u, y + first * C, count * C);
        u = y + first * C;
      }
      float* bm = &block_mean[b * C];
      float* m2 = &block_m2[b * C];
      for (int64_t r = 1; r < count; ++r)  // the sum of deviations from the block's first row: small terms
        for (int64_t c = 0; c < C; ++c) bm[c] += u[r * C + c] - u[c];
      for (int64_t c = 0; c < C; ++c) bm[c] = u[c] + bm[c] / count;
      for (int64_t r = 0; r < count; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const float d = u[r * C + c] - bm[c];
          m2[c] += d * d;
        }
    });
    std::vector<double> total(C, 0.0), m2_total(C, 0.0);
    for (int64_t b = 0; b < blocks.blocks; ++b) {
      const double n = std::min(blocks.block_rows, M - b * blocks.block_rows);
      for (int64_t c = 0; c < C; ++c) total[c] += n * block_mean[b * C + c];
    }
    for (int64_t c = 0; c < C; ++c) total[c] /= M;
    for (int64_t b = 0; b < blocks.blocks; ++b) {
      const double n = std::min(blocks.block_rows, M - b * blocks.block_rows);
      for (int64_t c = 0; c < C; ++c) {
        const double d = block_mean[b * C + c] - total[c];
        m2_total[c] += block_m2[b * C + c] + n * d * d;
      }
    }
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = static_cast<float>(total[c]);
      var[c] = static_cast<float>(m2_total[c] / M);  // NaN/Inf in the data stay NaN, as in TensorFlow
      scale[c] = gamma[c] / std::sqrt(var[c] + epsilon_);
    }
    const float* u_all = gelu_ ? y : x_p;
    blocks.ForEach(ctx, 2, [&](int64_t, int64_t first, int64_t count) {
      for (int64_t r = first; r < first + count; ++r) {
        const float* in = u_all + r * C;
        float* out = y + r * C;
        for (int64_t c = 0; c < C; ++c) out[c] = (in[c] - mean[c]) * scale[c] + beta[c];
      }
    });
  }

 private:
  float epsilon_;
  bool gelu_;
};

class BatchNormGradOp : public OpKernel {
 public:
  explicit BatchNormGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, c->GetAttr("gelu", &gelu_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy_t = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const int64_t C = ctx->input(2).NumElements();
    OP_REQUIRES_OK(ctx, CheckShapes(ctx, x, C, {2, 3, 4}));
    const int64_t M = C == 0 ? 0 : x.NumElements() / C;
    OP_REQUIRES(ctx, dy_t.shape() == x.shape(),
                errors::InvalidArgument("dy has shape ", dy_t.shape().DebugString(), ", x ", x.shape().DebugString()));
    float *dx, *dgamma, *dbeta;
    OP_REQUIRES_OK(ctx, AllocateOutputs(ctx, x.shape(), TensorShape({C}), &dx, &dgamma, &dbeta));
    std::fill(dgamma, dgamma + C, 0.f);
    std::fill(dbeta, dbeta + C, 0.f);
    if (M == 0) return;
    const float* dy = dy_t.flat<float>().data();
    const float* x_p = x.flat<float>().data();
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* mean = ctx->input(3).flat<float>().data();
    const float* var = ctx->input(4).flat<float>().data();

    // Pass 1: sum(dy) and sum(dy (u - mean)) per channel; u = GELU(x) recomputed into dx's memory.
    const RowBlocks blocks(M, C);
    std::vector<float> s1(blocks.blocks * C, 0.f), s2(blocks.blocks * C, 0.f);
    blocks.ForEach(ctx, gelu_ ? 30 : 4, [&](int64_t b, int64_t first, int64_t count) {
      const float* u = x_p + first * C;
      if (gelu_) {
        Gelu(u, dx + first * C, count * C);
        u = dx + first * C;
      }
      float* a1 = &s1[b * C];
      float* a2 = &s2[b * C];
      for (int64_t r = 0; r < count; ++r) {
        const float* ur = u + r * C;
        const float* dr = dy + (first + r) * C;
        for (int64_t c = 0; c < C; ++c) {
          a1[c] += dr[c];
          a2[c] += dr[c] * (ur[c] - mean[c]);
        }
      }
    });
    // du = a dy + k1 (u - mean) + k0, the closed form of batch-statistics BatchNorm's input gradient (centred, so
    // no cancellation when |mean| >> std).
    const std::vector<double> t1 = SumOverBlocks(s1, C), t2 = SumOverBlocks(s2, C);
    std::vector<float> a(C), k1(C), k0(C);
    for (int64_t c = 0; c < C; ++c) {
      const float inv = 1.0f / std::sqrt(var[c] + epsilon_);
      a[c] = gamma[c] * inv;
      dbeta[c] = static_cast<float>(t1[c]);
      dgamma[c] = static_cast<float>(inv * t2[c]);
      k1[c] = -a[c] * inv * dgamma[c] / M;
      k0[c] = -a[c] * dbeta[c] / M;
    }
    // Pass 2: dx = du * GELU'(x), GELU'(x) = Phi(x) + x phi(x).
    blocks.ForEach(ctx, gelu_ ? 40 : 4, [&](int64_t, int64_t first, int64_t count) {
      const int64_t n = count * C;
      const float* xb = x_p + first * C;
      const float* db = dy + first * C;
      float* out = dx + first * C;
      if (!gelu_) {
        for (int64_t r = 0; r < count; ++r)
          for (int64_t c = 0; c < C; ++c)
            out[r * C + c] = a[c] * db[r * C + c] + k1[c] * (xb[r * C + c] - mean[c]) + k0[c];
        return;
      }
      ConstArrayMap xs(xb, n);
      const Eigen::ArrayXf cdf = NormalCdf(xs);
      const Eigen::ArrayXf slope = cdf + xs * ((-0.5f * xs.square()).exp() * kInvSqrt2Pi);
      for (int64_t r = 0; r < count; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = r * C + c;
          out[i] = (a[c] * db[i] + k1[c] * (xb[i] * cdf[i] - mean[c]) + k0[c]) * slope[i];
        }
    });
  }

 private:
  float epsilon_;
  bool gelu_;
};

REGISTER_KERNEL_BUILDER(Name("KerasCmtBatchNorm").Device(tensorflow::DEVICE_CPU), BatchNormOp);
REGISTER_KERNEL_BUILDER(Name("KerasCmtBatchNormGrad").Device(tensorflow::DEVICE_CPU), BatchNormGradOp);

}  // namespace
}  // namespace keras_cmt
