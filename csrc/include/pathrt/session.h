// pathrt::ExplainSession: the whole explain path (SPEC §8) in native code, from a bundle written by
// `pathrt bundle`: plain pass with capture, generator (RFE convs, rfe_tail, PDN encoder layers,
// rpd_decode with the DAQ threshold) and the channel-sparse pathway pass, with no Python between
// layers. `explain` is const and keeps all per-call state on the stack, so one session may be
// called from several threads at once.
//
//   pathrt::ExplainSession session("model.bundle", /*num_threads=*/0);
//   pathrt::ExplainResult r = session.explain(images);  // float (N, C, H, W) on the CPU
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "pathrt/errors.h"
#include "pathrt/json.h"

namespace pathrt {

struct ExplainResult {
  at::Tensor logits;          // float32 (N, classes): the plain pass
  at::Tensor scores;          // float32 (N, ΣC_l): sigmoid of the RPD head logits
  at::Tensor masks;           // bool (N, ΣC_l): scores >= 0.5
  at::Tensor packed;          // uint8 (N, ceil(ΣC_l / 8)): masks bit-packed (pathrt::pack_masks layout)
  at::Tensor counts;          // int64 (N,): kept neurons per image
  at::Tensor pathway_logits;  // float32 (N, classes): the pathway pass H(x; m)
  at::Tensor classes;         // int64 (N,): the predicted class argmax(logits)
  at::Tensor y;               // float32 (N,): softmax(logits)[class]
  at::Tensor o;               // float32 (N,): softmax(pathway_logits)[class]
  // wall time of the three phases of this call; the steps after the last pathway layer that both passes
  // run alike (a classifier) run once for both, in the pathway phase (ExplainSession's joint tail)
  double plain_ms = 0.0;
  double generator_ms = 0.0;
  double pathway_ms = 0.0;
  // the generator's own phases, in microseconds: RFE convs (1x1 stems, shared 3x3/2 block), RFE tail
  // (pooling, token projection, LayerNorm), PDN encoder layers, RPD decoder (GRU, heads, DAQ threshold)
  double rfe_convs_us = 0.0, rfe_tail_us = 0.0, encoder_us = 0.0, decoder_us = 0.0;
  int threads = 0;  // the threads this call ran on (1 while the call pool reports a contended host)
};

struct SessionInfo {
  std::string arch;
  std::vector<std::string> classes;
  std::vector<int64_t> input_shape;  // C, H, W
  std::vector<int64_t> channels;     // C_l of every pathway layer
  std::vector<double> mean, std;     // the target's input normalization
  std::string target_fingerprint;
  int num_threads = 0;               // 0: the process default
  double load_ms = 0.0;              // wall time of loading and checking the bundle (dry run included)
  double digest_ms = 0.0;            // of which: the SHA-256 of its tensors
  int64_t joint_tail_steps = 0;      // the plan's last steps, run once for both passes (0: none)
};

// The plan contract this reader implements (pathrt/bundle.schema.json): its format version, the plan
// ops, the conv strategies and the measures of the strategy policy; tests compare it with the file.
struct BundleFormat {
  int64_t version = 0;
  std::vector<std::string> ops, strategies, measures;
};
BundleFormat bundle_format();

class ExplainSession {
 public:
  // A bundle's bytes and a name for messages (the path, or what produced them).
  struct Buffer {
    std::string data;
    std::string name;
  };

  // Loads and validates the bundle (throws BundleError, also when its tensors no longer match the
  // digest the writer recorded); num_threads > 0 caps the threads of each call.
  explicit ExplainSession(const std::string& bundle_path, int num_threads = 0);
  explicit ExplainSession(Buffer bundle, int num_threads = 0);
  ~ExplainSession();
  ExplainSession(const ExplainSession&) = delete;
  ExplainSession& operator=(const ExplainSession&) = delete;

  // Explains a floating-point (N, C, H, W) CPU batch of preprocessed images (any memory layout;
  // float64/float16 are cast to float32). Throws InputError, with the Python API's messages, for a
  // wrong shape, an empty batch, integer images, another device or NaN/Inf values.
  ExplainResult explain(const at::Tensor& images) const;
  const SessionInfo& info() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pathrt
