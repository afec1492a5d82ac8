// Row loops of the fused generator ops (csrc/cpu/generator_ops.cpp), with per-ISA clones: the CPU
// ops and the session's SmallGenerator compute every element with these.
#pragma once

#include <cstdint>

namespace pathrt {

// x[i] = x[i] + bias[i], then GELU when apply_gelu, over d values.
void bias_act_row(float* x, const float* bias, int64_t d, bool apply_gelu);

// One GRUCell step (gates r, z, n as torch): out = GRU(gi = W_ih x + b_ih, gh = W_hh h + b_hh, h), d values.
void gru_row(const float* gi, const float* gh, const float* h, int64_t d, float* out);

// One head of self-attention over t tokens: base points at the head's q in a (t, 3d) q|k|v block;
// out gets t rows of dh values, d floats apart; scores holds t floats.
void attention_rows(const float* base, int64_t t, int64_t d, int64_t dh, float scale, float* scores, float* out);

// y[r] = LayerNorm(x[r]) for `rows` rows of d values (weight w, bias b); add_bias, when given, is added
// to each x row in place before normalizing.
void layer_norm_rows(float* x, const float* add_bias, const float* w, const float* b, float eps, int64_t rows,
                     int64_t d, float* y);

}  // namespace pathrt
