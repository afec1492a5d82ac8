// The content digest of a bundle's tensors: SHA-256 (OpenSSL's libcrypto) over each tensor in name
// order as `name|torch.float32|(d0, d1, ...)|` followed by its bytes, which is what
// pathrt.artifacts.tensor_fingerprint computes in Python; the writer records it as
// `tensors_fingerprint` and the reader refuses a bundle whose tensors no longer match it.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <string>

namespace pathrt {

// Python's repr of a shape tuple: "()", "(5,)", "(2, 3)" (the digest and the error messages use it).
std::string shape_repr(at::IntArrayRef shape);

// Lowercase hex SHA-256 of float32 CPU tensors, keyed (and so ordered) by name.
std::string tensors_fingerprint(const std::map<std::string, at::Tensor>& tensors);

}  // namespace pathrt
