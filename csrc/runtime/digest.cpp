// tensors_fingerprint (pathrt/digest.h) with OpenSSL's EVP SHA-256.
#include "pathrt/digest.h"

#include <openssl/evp.h>

#include <memory>
#include <stdexcept>

namespace pathrt {

std::string shape_repr(at::IntArrayRef shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

std::string tensors_fingerprint(const std::map<std::string, at::Tensor>& tensors) {
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("OpenSSL cannot start a SHA-256 digest");
  }
  for (const auto& [name, tensor] : tensors) {
    if (tensor.scalar_type() != at::kFloat) throw std::invalid_argument("tensors_fingerprint: " + name + " is not float32");
    const auto t = tensor.contiguous();
    const std::string head = name + "|torch.float32|" + shape_repr(t.sizes()) + "|";
    EVP_DigestUpdate(ctx.get(), head.data(), head.size());
    if (t.numel() > 0) EVP_DigestUpdate(ctx.get(), t.data_ptr<float>(), static_cast<size_t>(t.numel()) * sizeof(float));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1) throw std::runtime_error("OpenSSL SHA-256 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

}  // namespace pathrt
